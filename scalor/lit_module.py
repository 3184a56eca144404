"""SCALORLitModule: the negative ELBO as the loss, the optimiser, the schedules, metrics and logging."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Optional

import hydra
import lightning as L
import torch
from torch import Tensor

from scalor.errors import ConfigError
from scalor.metrics import CountingMetrics, ErrorBreakdown, MOTMetrics
from scalor.model import PRESENCE_THRESHOLD, SCALOR, SequenceOutput
from scalor.model.config import upgrade_saved_config
from scalor.model.execution import ExecutionOptions
from scalor.resume import step_seed
from scalor.schedules import Curriculum, Schedule
from scalor.tracking import OnlineTracker, Tracker

TERMS = ("log_like", "kl_what", "kl_where", "kl_depth", "kl_pres", "kl_bg")
TRACKING_INFERENCE = ("deterministic", "sampled")


def check_nll_samples(samples: Any) -> int:
    """``nll_samples``, or ConfigError (one line) where it is not a whole number >= 1."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"nll_samples={samples} must be a whole number >= 1 (1: no NLL estimate; e.g. 5).")
    return samples


def _build(spec: Mapping | None, default: Callable[..., Any]) -> Any:
    """Instantiate a config mapping (honouring ``_target_``) or call ``default(**spec)``."""
    spec = dict(spec or {})
    if "_target_" in spec:
        return hydra.utils.instantiate(spec, _convert_="all")
    return default(**spec)


class SCALORLitModule(L.LightningModule):
    """Trains SCALOR on batches ``{"video": (B, T, 3, H, W), ["boxes", "ids"]}``.

    model: the model options as a plain mapping (:class:`scalor.model.SCALORConfig`'s fields, as conf/model
    composes them, ``_target_`` allowed), saved in the checkpoint so that ``load_from_checkpoint`` rebuilds the
    same network (an older checkpoint's options that no longer exist are dropped where they were off:
    :func:`scalor.model.config.upgrade_saved_config`). curriculum:
    the schedule parameters (conf/curriculum). optimizer / scheduler: Hydra ``_partial_`` factories, called with
    the parameters / the optimiser (default: RMSprop, lr 4e-5, no scheduler). seed: with the global step, it
    reseeds torch's generator before every training step (exact resume, see scalor/resume.py). train_seq_len: train
    on random windows of this many frames of each batch (validation and test see whole sequences); None: whole
    ones. tracking_inference: how validation and test infer the tracks that the tracking and counting metrics
    score: ``deterministic`` (the tracks of ``tracker``, on posterior means as ``task=track`` tracks; passes of
    their own) or ``sampled`` (the posterior sample that the ELBO of the same pass uses). tracker: how tracks are
    reported (:mod:`scalor.tracking.trackers`; None: :class:`~scalor.tracking.OnlineTracker`); fit_val_tracker:
    the one of the validations inside ``fit`` (None: ``tracker``). nll_samples: importance samples of the test's
    NLL estimate ``test/nll`` (1: none). experiment: the run's name, kept in the checkpoint so that ``task=track``
    names its run folder after it. data: the training data's config, kept so that ``task=track`` fits footage to
    the model as it was trained (e.g. tiles at a scale). execution: how the model is run (the execution group:
    :class:`scalor.model.execution.ExecutionOptions`, a mapping or an instance; None: the defaults), applied to the
    built model and not saved in the checkpoint (older checkpoints' run options in the model config are dropped);
    nor are the trackers.

    Loss: the batch mean of the negative ELBO per frame (docs/model.md §4.8). Logged per step: ``train/*`` loss
    and KL terms, object counts and ``schedule/*``; per epoch: ``val/*`` and ``test/*`` terms and, where the
    batch has ground truth, the tracking (MOTMetrics) and counting (CountingMetrics) metrics, and at test
    ``test/errors/*``: where the misses, false positives and count errors come from (ErrorBreakdown; batches
    with ``hidden`` also separate the misses of objects hidden behind others; frames with two objects that touch
    are counted apart).
    """

    def __init__(self, model: Mapping, curriculum: Optional[Mapping] = None,
                 optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
                 scheduler: Optional[Callable[..., Any]] = None, scheduler_interval: str = "step",
                 seed: int = 0, train_seq_len: Optional[int] = None,
                 tracking_inference: str = "deterministic", tracker: Optional[Tracker] = None,
                 fit_val_tracker: Optional[Tracker] = None, nll_samples: int = 1,
                 experiment: Optional[str] = None, data: Optional[Mapping] = None,
                 execution: Optional[Mapping | ExecutionOptions] = None) -> None:
        super().__init__()
        model = upgrade_saved_config(model or {})  # an older checkpoint's hparams (load_from_checkpoint): upgraded
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "execution", "tracker", "fit_val_tracker"],
                                  logger=False)
        self.execution = ExecutionOptions.from_config(execution)
        self.model: SCALOR = self.execution.apply(SCALOR.from_config(model))
        self.curriculum: Curriculum = _build(curriculum, Curriculum)
        self.optimizer_factory = optimizer or partial(torch.optim.RMSprop, lr=4e-5)
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.seed = int(seed)
        self.train_seq_len = None if train_seq_len is None else int(train_seq_len)
        if tracking_inference not in TRACKING_INFERENCE:
            raise ValueError(f"tracking_inference={tracking_inference} is unknown; use one of {TRACKING_INFERENCE}.")
        self.tracking_inference = tracking_inference
        for name, value in (("tracker", tracker), ("fit_val_tracker", fit_val_tracker)):
            if value is not None and not isinstance(value, Tracker):
                raise ConfigError(f"{name} must be a tracker (scalor.tracking: OnlineTracker, BackfillTracker, "
                                  f"PickTracker), not a {type(value).__name__}.")
        self.tracker: Tracker = tracker or OnlineTracker()
        self.fit_val_tracker: Optional[Tracker] = fit_val_tracker
        self.nll_samples = check_nll_samples(nll_samples)
        self.mot = torch.nn.ModuleDict({"val": MOTMetrics(), "test": MOTMetrics()})
        self.counting = torch.nn.ModuleDict({"val": CountingMetrics(), "test": CountingMetrics()})
        self.errors = ErrorBreakdown()  # test only
        self._has_gt = {"val": False, "test": False}
        self._ckpt_step = 0  # optimiser steps of the last loaded checkpoint (schedule outside fit)

    @property
    def test_tracker_label(self) -> str:
        """What reports the tracks that the test metrics score: the tracker's label, or the ELBO's pass."""
        return self.tracker.label if self.tracking_inference == "deterministic" else "posterior sample"

    # ------------------------------------------------------------------ forward
    def schedule(self) -> Schedule:
        """The curriculum's values for the coming optimiser step; when testing or generating, those of the
        step the loaded checkpoint was trained to."""
        return self.curriculum.at(self.global_step if self._fitting else max(self.global_step, self._ckpt_step))

    @property
    def _fitting(self) -> bool:
        """Whether the attached trainer is running ``fit`` (its validations included)."""
        return self._trainer is not None and self._trainer.state.fn == "fit"

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._ckpt_step = int(checkpoint.get("global_step", 0))

    def forward(self, video: Tensor, **kwargs) -> SequenceOutput:
        return self.model(video, self.schedule(), **kwargs)

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        torch.manual_seed(step_seed(self.seed, self.global_step, self.global_rank))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        schedule = self.schedule()
        out = self.model(self.training_clip(batch["video"]), schedule)
        loss = out.neg_elbo.mean()
        self._log_terms("train", out, loss, on_step=True, on_epoch=False)
        values = {"tau": schedule.tau, "z_pres_prior": schedule.z_pres_prior, "detach": float(schedule.detach),
                  "bg_alpha_curriculum": float(schedule.bg_alpha_curriculum),
                  "sigma": self.model.pixel_sigma(schedule)}
        self.log_dict({f"schedule/{k}": float(v) for k, v in values.items()}, on_step=True, on_epoch=False,
                      batch_size=out.log_like.shape[0])
        return loss

    def training_clip(self, video: Tensor) -> Tensor:
        """(B, T, ...) -> (B, L, ...): one random window of L = ``train_seq_len`` frames (the same start for the
        batch, drawn from the per-step seeded generator, so resuming stays exact); the whole video if unset."""
        t_len = video.shape[1]
        if self.train_seq_len is None or self.train_seq_len >= t_len:
            return video
        start = int(torch.randint(t_len - self.train_seq_len + 1, ()))
        return video[:, start:start + self.train_seq_len]

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        out = self._evaluate("test", batch)
        if self.nll_samples > 1:  # importance-weighted NLL (docs/model.md §4.10), nats per sequence
            nll = self.model.importance_nll(batch["video"], self.schedule(), samples=self.nll_samples)
            self.log("test/nll", nll.mean(), on_epoch=True, sync_dist=True, batch_size=out.log_like.shape[0])

    def _evaluate(self, stage: str, batch: dict) -> SequenceOutput:
        out = self.model(batch["video"], self.schedule())
        self._log_terms(stage, out, out.neg_elbo.mean(), on_step=False, on_epoch=True)
        if "boxes" in batch and "ids" in batch:
            tracks = self.track(batch["video"]) if self.tracking_inference == "deterministic" else out
            pred_ids = torch.where(tracks.presence > PRESENCE_THRESHOLD, tracks.ids, -1)
            self.mot[stage].update(tracks.boxes, pred_ids, batch["boxes"], batch["ids"])
            self.counting[stage].update((pred_ids >= 0).sum(-1), (batch["ids"] >= 0).sum(-1))
            if stage == "test":
                self.errors.update(tracks.boxes, pred_ids, batch["boxes"], batch["ids"], batch.get("hidden"),
                                   frame_size=tuple(batch["video"].shape[-2:]))
            self._has_gt[stage] = True
        return out

    def track(self, video: Tensor) -> SequenceOutput:
        """Tracks of video (B,T,3,H,W) by the tracker (inside ``fit``: ``fit_val_tracker`` where set), on posterior
        means in eval mode; boxes (B,T,N,4), ids and presence (B,T,N), counts (B,T)."""
        tracker = self.fit_val_tracker if self._fitting and self.fit_val_tracker is not None else self.tracker
        return tracker(self.model, video, self.schedule())

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, stage: str) -> None:
        """Compute (synchronised across processes by torchmetrics), log and reset the tracking metrics."""
        if not self._has_gt[stage]:
            return
        values = {**self.mot[stage].compute(), **self.counting[stage].compute()}
        if stage == "test":
            values.update({f"errors/{k}": v for k, v in self.errors.compute().items()})
            self.errors.reset()
        self.log_dict({f"{stage}/{k}": v.float() for k, v in values.items()}, sync_dist=True)
        self.mot[stage].reset()
        self.counting[stage].reset()
        self._has_gt[stage] = False

    # ------------------------------------------------------------------ logging
    def _log_terms(self, stage: str, out: SequenceOutput, loss: Tensor, on_step: bool, on_epoch: bool) -> None:
        values = {"kl": out.kl.mean()}
        values.update({k: getattr(out, k).mean() for k in TERMS})
        counts = out.counts.float()
        values.update(count=counts.mean(), count_max=counts.max())
        self.log_dict({f"{stage}/{k}": v.detach() for k, v in values.items()}, on_step=on_step,
                      on_epoch=on_epoch, sync_dist=on_epoch, batch_size=out.log_like.shape[0])
        self.log(f"{stage}/neg_elbo", loss.detach(), on_step=on_step, on_epoch=on_epoch, sync_dist=on_epoch,
                 prog_bar=True, batch_size=out.log_like.shape[0])

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        config = {"scheduler": scheduler, "interval": self.scheduler_interval, "frequency": 1}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/neg_elbo"
        return {"optimizer": optimizer, "lr_scheduler": config}
