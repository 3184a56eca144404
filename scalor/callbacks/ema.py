"""An exponential moving average of the weights for evaluation (Lightning's EMAWeightAveraging)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from scalor.errors import ConfigError


class EMA(EMAWeightAveraging):
    """Keeps w_ema <- decay * w_ema + (1 - decay) * w after every optimiser step.

    Validation (and so the best-checkpoint choice), the ``state_dict`` of every checkpoint and everything that
    loads a checkpoint to evaluate it (the test after fit, ``task=test|track|generate``) use the average;
    training goes on with the raw weights, which checkpoints keep under ``current_model_state`` for resuming.
    Lightning's callback would also put the raw weights back when ``trainer.test`` loads the best checkpoint
    after fit; here that only happens when fitting resumes.
    """

    def __init__(self, decay: float = 0.99, **kwargs: Any) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not (0 < decay < 1):
            raise ConfigError(f"callbacks.ema.decay={decay!r} must be in (0, 1) (e.g. 0.99: an average over about "
                              "the last 100 steps).")
        super().__init__(decay=decay, **kwargs)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
