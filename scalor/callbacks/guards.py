"""Stop training at the first non-finite loss or gradient, before any weight is updated."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from scalor.errors import ScalorError


class NonFiniteGuard(Callback):
    """Raise :class:`ScalorError` when the loss (before backward) or the global gradient norm (before the
    optimiser step and before clipping) is NaN or infinite.

    The step is never applied, so the weights stay finite and no checkpoint with NaN weights is ever written;
    the last checkpoint on disk is the last good one. Under DDP every rank takes the same decision (the loss
    check is reduced over ranks; gradients are already identical after the all-reduce).
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            self._stop(trainer, f"loss ({float(loss.detach().float().mean()):g})")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        norm = torch.nn.utils.get_total_norm(grads)
        if not bool(torch.isfinite(norm)):
            self._stop(trainer, f"gradient norm ({float(norm):g})")

    @staticmethod
    def _stop(trainer: L.Trainer, what: str) -> None:
        saved = [cb.last_model_path or cb.best_model_path for cb in trainer.checkpoint_callbacks
                 if isinstance(cb, ModelCheckpoint)]
        saved = [p for p in saved if p]
        keep = f"the last good checkpoint is {saved[0]}" if saved else "no checkpoint had been written yet"
        raise ScalorError(
            f"non-finite {what} at step {trainer.global_step} (epoch {trainer.current_epoch}); training stopped "
            f"before the update and {keep}; lower optimizer.lr or check the data, then resume with ckpt_path=last."
        )
