"""Things the Trainer calls back: the non-finite guard and atomic checkpoint writing."""

from scalor.callbacks.checkpoint_io import AtomicCheckpointIO
from scalor.callbacks.guards import NonFiniteGuard

__all__ = ["AtomicCheckpointIO", "NonFiniteGuard"]
