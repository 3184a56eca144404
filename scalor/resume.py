"""Exact resumption: every random draw of training is a pure function of (seed, position).

A run killed at any step and resumed from its last checkpoint ends with the same parameters as an
uninterrupted run, because nothing random depends on the history of the process:

* model noise: the LightningModule reseeds torch's global generator before every training step with
  ``step_seed(seed, global_step, rank)``;
* the order of the training sequences: :class:`EpochRandomSampler` draws each epoch's permutation from
  ``(seed, epoch)`` (under DDP Lightning's ``DistributedSampler`` does the same from its own seed and epoch);
* the position inside an epoch: :class:`ResumableDataLoader` is stateful in Lightning's sense
  (``state_dict``/``load_state_dict``), so the checkpoint records the epoch and how many batches were served;
  after a restart the loader skips those batches (it loads and drops them, cheap next to a training step).

Lightning alone would restart an interrupted epoch from its first batch.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler


def step_seed(seed: int, *position: int) -> int:
    """A 63-bit seed mixed from ``seed`` and non-negative position integers (step, rank, epoch ...)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, *(int(p) for p in position)])
    return int(state.generate_state(1, np.uint64)[0]) & 0x7FFFFFFFFFFFFFFF


class EpochRandomSampler(RandomSampler):
    """A shuffling sampler whose permutation of epoch e is a pure function of (seed, e); Lightning calls
    ``set_epoch`` before every epoch."""

    def __init__(self, data_source, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(step_seed(self.seed, self.epoch))
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class ResumableDataLoader(DataLoader):
    """A DataLoader whose place in the epoch is saved in Lightning checkpoints.

    ``state_dict()`` -> {"epoch", "served"}: the sampler's epoch and the batches handed out in it.
    ``load_state_dict`` sets the sampler's epoch and makes the next iteration skip the served batches (or
    start the next epoch when the saved one was complete).
    """

    # Class-level defaults: Lightning may re-create the loader (e.g. to add a DistributedSampler).
    _epoch = 0
    _served = 0
    _skip = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._epoch), "served": int(self._served)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, served = int(state["epoch"]), int(state["served"])
        if served >= len(self):
            epoch, served = epoch + 1, 0
        self._epoch, self._skip = epoch, served
        _set_sampler_epoch(self, epoch)

    def __iter__(self):
        self._epoch = int(getattr(self.sampler, "epoch", self._epoch))
        skip, self._skip = self._skip, 0
        iterator = super().__iter__()
        for _ in range(skip):
            next(iterator)
        self._served = skip
        for batch in iterator:
            self._served += 1
            yield batch


def make_resumable(loader: Any, seed: int) -> Any:
    """Rebuild a plain shuffling (or sequential) ``DataLoader`` as a :class:`ResumableDataLoader` with an
    :class:`EpochRandomSampler`; anything else is returned unchanged with a warning (resume then restarts
    an interrupted epoch from its first batch)."""
    sampler = getattr(loader, "sampler", None)
    plain = (type(loader) is DataLoader and type(loader.batch_sampler) is BatchSampler
             and ((type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None)
                  or type(sampler) is SequentialSampler))
    if not plain:
        warnings.warn(f"the training loader ({type(loader).__name__}) is not a plain DataLoader; a run resumed "
                      "mid-epoch restarts that epoch from its first batch.", stacklevel=2)
        return loader
    if isinstance(sampler, RandomSampler):
        sampler = EpochRandomSampler(loader.dataset, seed)
    return ResumableDataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
        prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device, in_order=loader.in_order,
    )


def resumable_train_loader(datamodule: Any, seed: int) -> None:
    """Make ``datamodule.train_dataloader()`` return a resumable loader (wraps the method on the instance)."""
    make: Callable[[], Any] = datamodule.train_dataloader

    def train_dataloader() -> Any:
        return make_resumable(make(), seed)

    datamodule.train_dataloader = train_dataloader
