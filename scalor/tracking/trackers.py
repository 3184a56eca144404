"""Trackers: how a trained SCALOR is run to report tracks (the ``tracker`` config group, conf/tracker).

A tracker is a small frozen dataclass beside the model, called as ``tracker(model, video, schedule, carry=None)``
with video (B, T, 3, H, W) in [0, 1]; it returns a :class:`~scalor.model.SequenceOutput` whose boxes (B, T, N, 4),
ids (B, T, N) (-1: none), presence (B, T, N) and counts (B, T) are the reported tracks. Every pass runs on
posterior means (``deterministic=True``), in eval mode and without gradients; the model's train mode comes back
after (:func:`evaluating`) and nothing else of the model is changed.

- :class:`OnlineTracker`: one track-only pass over the frames in order; continues ``carry`` and returns the
  next one, so it streams window after window.
- :class:`BackfillTracker`: the online pass, and every track that starts after the first frame extended back
  along a track of a second pass over the frames in reverse order (:mod:`.backfill`); streams too (each window
  is backfilled on its own).
- :class:`PickTracker`: of whole sequences, the tracks of the best of the forward and backward full passes over
  ``views`` mirrored and transposed copies of the frames (:mod:`.views`), by the ELBO of each pass.

``tracker.streaming()`` is the tracker that ``task=track`` runs window after window (a PickTracker's is a
BackfillTracker, or the OnlineTracker without backfill).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Optional

import dataclasses
from collections.abc import Mapping

import hydra
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from scalor.errors import ConfigError
from scalor.model import SCALOR, Carry, SequenceOutput
from scalor.schedules import Schedule
from scalor.tracking.backfill import COPY_IOU, TrackTable, backfill
from scalor.tracking.views import VIEW_COUNTS, unview_boxes, view

__all__ = ["BackfillTracker", "OnlineTracker", "PickTracker", "Tracker", "build_tracker", "evaluating"]


@contextmanager
def evaluating(model: SCALOR) -> Iterator[SCALOR]:
    """Eval mode and no gradients for the duration; the model's train mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _check_copy_iou(copy_iou: float) -> None:
    if isinstance(copy_iou, bool) or not isinstance(copy_iou, (int, float)) or not 0 < copy_iou <= 1:
        raise ConfigError(f"tracker.copy_iou={copy_iou!r} must be in (0, 1] (0.7: a backward box with that IoU "
                          "with an earlier forward track is a copy; 1: only identical boxes).")


def _table(out: SequenceOutput) -> TrackTable:
    return TrackTable.from_slots(out.boxes, out.ids, out.presence)


class Tracker:
    """Base of the trackers: ``__call__`` runs :meth:`track` in eval mode without gradients."""

    def __call__(self, model: SCALOR, video: Tensor, schedule: Schedule,
                 carry: Optional[Carry] = None) -> SequenceOutput:
        with evaluating(model):
            return self.track(model, video, schedule, carry)

    def track(self, model: SCALOR, video: Tensor, schedule: Schedule, carry: Optional[Carry]) -> SequenceOutput:
        raise NotImplementedError

    def streaming(self) -> "Tracker":
        """The tracker that runs window after window with the carry: this one."""
        return self

    @property
    def label(self) -> str:
        """What results tables call it: the tracker option's name (conf/tracker) and what differs from it."""
        raise NotImplementedError


@dataclass(frozen=True)
class OnlineTracker(Tracker):
    """One track-only pass over the frames in order (boxes, IDs, counts; recon empty, log_like and kl_bg zero);
    continues ``carry`` and returns the next one in ``.carry``."""

    label = "online"

    def track(self, model: SCALOR, video: Tensor, schedule: Schedule, carry: Optional[Carry]) -> SequenceOutput:
        return model(video, schedule, carry=carry, track_only=True, deterministic=True)


@dataclass(frozen=True)
class BackfillTracker(Tracker):
    """The online pass's tracks, each one that starts after the first frame of ``video`` extended back along a
    track of a track-only pass over the frames in reverse order (from a fresh state), back to where that track
    ends or copies (box IoU >= ``copy_iou``) a forward track there already (:func:`.backfill.backfill`).

    Slots are a track each (IDs as tracked forwards; -1 where a track is not reported: objects of presence
    <= 0.5 are left out); counts add the extended boxes; the carry is the forward pass's, so windows stream
    (each backfilled within itself). About twice the online tracker's time.
    """

    copy_iou: float = COPY_IOU

    def __post_init__(self) -> None:
        _check_copy_iou(self.copy_iou)

    @property
    def label(self) -> str:
        return "backfill" if self.copy_iou == COPY_IOU else f"backfill, copy_iou {self.copy_iou:g}"

    def track(self, model: SCALOR, video: Tensor, schedule: Schedule, carry: Optional[Carry]) -> SequenceOutput:
        out = OnlineTracker().track(model, video, schedule, carry)
        back = OnlineTracker().track(model, video.flip(1), schedule, None)
        table, extended = backfill(_table(out), _table(back).flip(), copy_iou=self.copy_iou)
        boxes, ids, presence = table.to_slots()
        return replace(out, boxes=boxes, ids=ids, presence=presence, counts=out.counts + extended.sum(1))


@dataclass(frozen=True)
class PickTracker(Tracker):
    """Tracks of whole sequences by the best of 2 x ``views`` full passes (offline; no carry).

    The frames are explained by a pass in order and by a pass in reverse order (full passes, so that each has
    its ELBO; with ``backfill`` each pass's tracks are backfilled from the other's as it was tracked, with
    ``copy_iou``). Two objects that touch where a pass starts are often taken as one object until they part; a
    pass from the other end meets them apart and holds them as two, and drawing them as two explains the frames
    better. With ``views`` > 1 (2: and the horizontal flip; 4: all flips; 8: and the transposes) the same is done
    for mirrored and transposed copies of the frames (:mod:`.views`), where the grid cells fall differently on
    the objects, and their boxes are mapped back. Each sequence reports the tracks of the pass with the lowest
    negative ELBO (ties: the earlier pass, the forward pass of the frames as they are first). IDs are the chosen
    pass's own; the loss terms, recon and carry are the forward pass's of the frames as they are. About
    2 x ``views`` full passes' time (three times the online tracker's per view).
    """

    views: int = 1
    backfill: bool = True
    copy_iou: float = COPY_IOU

    def __post_init__(self) -> None:
        if isinstance(self.views, bool) or self.views not in VIEW_COUNTS:
            raise ConfigError(f"tracker.views={self.views!r} must be one of {', '.join(map(str, VIEW_COUNTS))} (1: the "
                              "frames as they are; 8: all eight flips and transposes).")
        if not isinstance(self.backfill, bool):
            raise ConfigError(f"tracker.backfill={self.backfill!r} must be true or false.")
        _check_copy_iou(self.copy_iou)

    def streaming(self) -> Tracker:
        """Window after window there is no whole sequence to pick from: the BackfillTracker (``backfill``) or the
        OnlineTracker."""
        return BackfillTracker(self.copy_iou) if self.backfill else OnlineTracker()

    @property
    def label(self) -> str:
        name = "pick8" if self.views == 8 else "pick" if self.views == 1 else f"pick, {self.views} views"
        return name + (self.streaming().label.removeprefix("backfill") if self.backfill else ", no backfill")

    def track(self, model: SCALOR, video: Tensor, schedule: Schedule, carry: Optional[Carry]) -> SequenceOutput:
        if carry is not None:
            raise ValueError("PickTracker tracks whole sequences and takes no carry; stream with its streaming() "
                             "tracker.")
        first, table, best = None, None, None
        for k in range(self.views):
            frames = view(video, k)
            ahead = model(frames, schedule, deterministic=True)
            behind = model(frames.flip(1), schedule, deterministic=True)
            fwd, bwd = _table(ahead), _table(behind).flip()
            if self.backfill:  # each from the other pass as it was tracked, not as backfilled
                filled_fwd = backfill(fwd, bwd, copy_iou=self.copy_iou)[0]
                filled_bwd = backfill(bwd.flip(), fwd.flip(), copy_iou=self.copy_iou)[0].flip()
                fwd, bwd = filled_fwd, filled_bwd
            for tracks, neg_elbo in ((fwd, ahead.neg_elbo), (bwd, behind.neg_elbo)):
                tracks = TrackTable(tracks.ids, unview_boxes(tracks.boxes, k), tracks.presence)
                if table is None:
                    first, table, best = ahead, tracks, neg_elbo
                    continue
                take = neg_elbo < best
                table, best = TrackTable.choose(table, tracks, take), torch.where(take, neg_elbo, best)
        boxes, ids, presence = table.to_slots()
        return replace(first, boxes=boxes, ids=ids, presence=presence, counts=table.reported.sum(1))


def build_tracker(cfg: DictConfig, key: str = "tracker") -> Optional["Tracker"]:
    """The tracker of ``cfg.<key>`` (``tracker`` or ``fit_val_tracker``; conf/tracker), None where it is null.
    ConfigError (naming ``<key>.<option>``) for options its tracker does not take or cannot run."""
    node = cfg.get(key)
    if node is None:
        return None
    spec = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if isinstance(spec, str):  # fit_val_tracker=pick: a group option given as a value
        raise ConfigError(f"{key}={spec} names a tracker as a value; choose it as a config group: "
                          f"tracker@{key}={spec}.")
    target = spec.get("_target_") if isinstance(spec, Mapping) else None
    try:
        cls = hydra.utils.get_class(str(target))
    except Exception:  # noqa: BLE001 - not a class path: said below
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, Tracker)):
        raise ConfigError(f"{key} must be a tracker: tracker=online, backfill, pick or pick8 (a node with _target_ "
                          f"scalor.tracking.OnlineTracker, BackfillTracker or PickTracker), not {target}.")
    options = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else None
    unknown = sorted(k for k in spec if not k.startswith("_") and options is not None and k not in options)
    if unknown:
        takes = f"it takes {', '.join(sorted(options))}" if options else "it takes no options"
        raise ConfigError(f"{key}.{unknown[0]} is not an option of {cls.__name__} ({takes}); drop it "
                          f"(~{key}.{unknown[0]}).")
    try:
        return hydra.utils.instantiate(spec, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else None
        detail = str(cause) if cause else (str(err.__cause__ or err).splitlines() or [""])[0]
        raise ConfigError(detail.replace("tracker.", f"{key}.", 1) if cause else
                          f"cannot build {key} ({target}): {detail}; fix the {key}.* keys.") from None
