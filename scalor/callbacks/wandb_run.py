"""One wandb run per fit, across kills and resumes, and the optional ``wandb.watch``.

* A resumed fit (``task=fit`` with ``ckpt_path``) continues the wandb run of its checkpoint: :class:`WandbRun`
  keeps the run id in every checkpoint (``checkpoint["wandb_run_id"]``) and :func:`wandb_logger_args` passes it
  to Lightning's ``WandbLogger`` as ``id`` with ``resume="allow"``. A fresh run, a multirun job, another task and
  a checkpoint without an id get a new run. The resumed part is written in its own run folder, like its
  checkpoints; ``wandb sync`` of all the parts (same id) uploads one run with the whole history.
* Nothing logged is lost when training is killed (SIGKILL, the OOM killer): wandb's backend process (wandb-core)
  buffers the run's ``.wandb`` file in memory (written when a 32 KiB block fills, every 15 s, and when the run
  finishes), and the backend that ``wandb.init`` starts exits with its parent without writing that buffer, so a
  killed run's file kept only its header. :func:`detach_wandb_service` starts the backend detached instead (what
  ``wandb beta core start`` does): it outlives a killed training process, writes all it was sent, closes the run
  and exits ``SERVICE_IDLE_TIMEOUT`` after its last client is gone.
* ``logger.wandb.watch``: ``WandbLogger.watch`` on the module at the start of fitting (gradients and/or
  parameters histograms every ``log_freq`` steps); ``logger.wandb.tags`` go to ``wandb.init`` as they are.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from scalor.errors import ConfigError
from scalor.launch import read_checkpoint

CHECKPOINT_KEY = "wandb_run_id"
WATCH_LOG = ("gradients", "parameters", "all")
WATCH_KEYS = ("log", "log_freq", "log_graph")
# How long the detached backend waits with no client before it closes its runs and exits.
SERVICE_IDLE_TIMEOUT = "10s"


class WandbRun(Callback):
    """Put the wandb run id into every checkpoint and, given ``watch`` (``WandbLogger.watch`` arguments), watch
    the module's network (``pl_module.model``, else the module) from the start of fitting."""

    def __init__(self, watch: Optional[dict] = None) -> None:
        self.watch = watch

    @staticmethod
    def _logger(trainer: L.Trainer) -> Optional[WandbLogger]:
        return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = self._logger(trainer)
        if logger is not None and self.watch:  # the network itself: wandb logs parameters when its forward runs
            logger.watch(getattr(pl_module, "model", pl_module), **self.watch)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        logger = self._logger(trainer)
        if logger is not None and logger.version:
            checkpoint[CHECKPOINT_KEY] = logger.version


def wandb_logger_args(cfg: DictConfig, node: DictConfig, ckpt_path: Optional[str]) -> dict:
    """``node`` (``logger.wandb``) resolved into ``WandbLogger``'s arguments: ``watch`` checked and taken out,
    ``tags`` checked, and ``id``/``resume="allow"`` of the checkpoint's run when ``cfg`` resumes a fit from
    ``ckpt_path``. Starts the detached wandb backend (:func:`detach_wandb_service`). Raises ConfigError."""
    args = OmegaConf.to_container(node, resolve=True)
    watch_args(args.pop("watch", None))
    if args.get("tags") is not None:
        args["tags"] = _tags(args["tags"])
    run_id = resumed_run_id(cfg, ckpt_path)
    if run_id and not args.get("id"):
        args.update(id=run_id, resume="allow")
    detach_wandb_service(str(args.get("mode") or os.environ.get("WANDB_MODE", "")))
    return args


def watch_args(watch: Any) -> Optional[dict]:
    """``logger.wandb.watch`` checked: the arguments of ``WandbLogger.watch``, or None when ``watch.log`` is
    null/false (off). Raises ConfigError naming the key and the fix."""
    if isinstance(watch, DictConfig):
        watch = OmegaConf.to_container(watch, resolve=True)
    if watch is None:
        return None
    if not isinstance(watch, dict):
        raise ConfigError(f"logger.wandb.watch={watch} must be a group of options; set logger.wandb.watch.log="
                          "gradients (or parameters, all) and logger.wandb.watch.log_freq=100.")
    unknown = sorted(set(watch) - set(WATCH_KEYS))
    if unknown:
        raise ConfigError(f"logger.wandb.watch.{unknown[0]} is not a watch option; use "
                          f"{', '.join('logger.wandb.watch.' + k for k in WATCH_KEYS)}.")
    log, freq, graph = watch.get("log"), watch.get("log_freq", 100), watch.get("log_graph", False)
    if log not in (None, False, *WATCH_LOG):
        raise ConfigError(f"logger.wandb.watch.log={log} is unknown; use gradients, parameters, all or null (off).")
    if isinstance(freq, bool) or not isinstance(freq, int) or freq < 1:
        raise ConfigError(f"logger.wandb.watch.log_freq={freq} must be a whole number of steps >= 1 (e.g. 100).")
    if not isinstance(graph, bool):
        raise ConfigError(f"logger.wandb.watch.log_graph={graph} must be true or false.")
    return {"log": log, "log_freq": freq, "log_graph": graph} if log else None


def _tags(tags: Any) -> list[str]:
    tags = [tags] if isinstance(tags, (str, int, float)) else tags
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, (str, int, float)) for t in tags):
        raise ConfigError(f"logger.wandb.tags={tags} must be a list of words; use e.g. logger.wandb.tags=[a,b].")
    tags = [str(t) for t in tags]
    bad = [t for t in tags if not 1 <= len(t) <= 64]
    if bad:
        raise ConfigError(f"logger.wandb.tags has the tag {bad[0]!r}; wandb tags have 1 to 64 characters.")
    return tags


def resumed_run_id(cfg: DictConfig, ckpt_path: Optional[str]) -> Optional[str]:
    """The wandb run id kept in ``ckpt_path`` when ``cfg`` resumes a fit from it outside a multirun; None for a
    fresh run, another task, a multirun job (each has its own run) or a checkpoint without an id."""
    if not ckpt_path or cfg.get("task") != "fit":
        return None
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return None
    try:
        checkpoint = read_checkpoint(ckpt_path)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is reported by check_config
        return None
    run_id = checkpoint.get(CHECKPOINT_KEY)
    return str(run_id) if run_id else None


@rank_zero_only
def detach_wandb_service(mode: str = "") -> None:
    """Run wandb's backend detached from this process (see the module docstring), connected now so that its
    idle countdown starts only when this process has gone. Nothing to do with ``mode=disabled`` or where
    ``WANDB_SERVICE`` already names a backend (started before in this process, by a parent process or by the
    user with ``wandb beta core start``)."""
    if mode == "disabled" or os.environ.get("WANDB_SERVICE"):
        return
    import wandb
    from wandb.sdk.lib.service import service_process  # what `wandb beta core start` runs

    service_process.start_detached(wandb.Settings(), idle_timeout=SERVICE_IDLE_TIMEOUT).token.save_to_env()
    wandb.setup()
