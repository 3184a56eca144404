"""Things the Trainer calls back: the non-finite guard, atomic checkpoint writing and the weights' EMA."""

from scalor.callbacks.checkpoint_io import AtomicCheckpointIO
from scalor.callbacks.ema import EMA
from scalor.callbacks.guards import NonFiniteGuard

__all__ = ["EMA", "AtomicCheckpointIO", "NonFiniteGuard"]
