"""Training schedules of docs/model.md §2.6 and §5, as pure functions of the optimiser step.

The model holds no step counter: the LightningModule computes a :class:`Schedule` from
``trainer.global_step`` (the number of optimiser steps already taken) and passes it to
``SCALOR.forward``. A resumed run therefore continues exactly.

Step convention (as the reference): the temperature uses the step *before* the update being
computed (``global_step``), every other schedule the step *after* it (``global_step + 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from scalor.errors import ConfigError


@dataclass(frozen=True)
class Schedule:
    """The per-step values the model reads.

    tau: relaxed-Bernoulli temperature; z_pres_prior: discovery presence prior probability;
    detach: detach the carried object state between frames; bg_alpha_curriculum: replace the
    discovery alpha canvases by a constant (docs/model.md §4.5); sigma: the pixel likelihood's std for
    this step (None: the model's ``sigma``); reject_duplicates: whether training rejects duplicates at
    discovery in this step (with ``model.reject_duplicates``; inference always does).
    """

    tau: float = 1.0
    z_pres_prior: float = 0.1
    detach: bool = True
    bg_alpha_curriculum: bool = False
    sigma: Optional[float] = None
    reject_duplicates: bool = True


def tau_at(step: int, start: float = 1.0, end: float = 0.5, decay_steps: float = 20000.0) -> float:
    """Exponential decay from ``start`` towards ``end``, reaching it at ``decay_steps``, floored there."""
    if decay_steps <= 0:
        return end
    return max(start * math.exp(step * math.log(end / start) / decay_steps), end)


def linear_anneal(step: int, start: float, end: float, steps: int) -> float:
    """``start`` at step <= 0, linear to ``end`` at ``steps``, constant after (docs/model.md §2.6)."""
    if step <= 0:
        return start
    if step >= steps:
        return end
    return start + (end - start) * step / steps


@dataclass(frozen=True)
class Curriculum:
    """All schedule parameters; ``at(global_step)`` gives the :class:`Schedule` for that step.

    Defaults are the reference's: tau 1 -> 0.5 over 20k steps, z_pres prior 0.1 -> 1e-3 over 500
    steps, state detached until step 30k, background-alpha curriculum off (200 steps when on), the
    model's constant sigma. A sigma schedule (not in the reference) holds ``sigma_start`` up to step
    ``sigma_anneal_begin``, then goes linearly to ``sigma_end`` over ``sigma_anneal_steps``. With
    ``reject_duplicates_until`` (not in the reference), training rejects duplicates at discovery (where
    ``model.reject_duplicates`` is on) only before that step and lets the objective alone sort them out after.
    """

    tau_start: float = 1.0
    tau_end: float = 0.5
    tau_decay_steps: float = 20000.0
    z_pres_prior_start: float = 0.1
    z_pres_prior_end: float = 1e-3
    z_pres_anneal_steps: int = 500
    remove_detach: bool = True
    remove_detach_step: int = 30000
    bg_alpha_curriculum: bool = False
    bg_alpha_curriculum_steps: int = 200
    sigma_start: Optional[float] = None
    sigma_end: Optional[float] = None
    sigma_anneal_begin: int = 0
    sigma_anneal_steps: int = 0
    reject_duplicates_until: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.sigma_start is None) != (self.sigma_end is None):
            raise ConfigError("curriculum.sigma_start and curriculum.sigma_end go together: set both (a sigma "
                              "schedule) or neither (the model's constant sigma).")
        if self.sigma_start is not None and not (self.sigma_start > 0 and self.sigma_end > 0):
            raise ConfigError(f"curriculum.sigma_start={self.sigma_start} and sigma_end={self.sigma_end} must be > 0 "
                              "(the pixel likelihood's std, e.g. 0.15 -> 0.1).")
        until = self.reject_duplicates_until
        if until is not None and (isinstance(until, bool) or not isinstance(until, int) or until < 0):
            raise ConfigError(f"curriculum.reject_duplicates_until={until!r} must be an optimiser step >= 0 (e.g. 600) "
                              "or null (duplicates rejected throughout training).")

    def at(self, global_step: int) -> Schedule:
        """Schedule for the optimiser update that follows ``global_step`` completed updates."""
        post = global_step + 1
        return Schedule(
            tau=tau_at(global_step, self.tau_start, self.tau_end, self.tau_decay_steps),
            z_pres_prior=linear_anneal(
                post, self.z_pres_prior_start, self.z_pres_prior_end, self.z_pres_anneal_steps
            ),
            detach=(not self.remove_detach) or post < self.remove_detach_step,
            bg_alpha_curriculum=self.bg_alpha_curriculum and post < self.bg_alpha_curriculum_steps,
            sigma=None if self.sigma_start is None else linear_anneal(
                post - self.sigma_anneal_begin, self.sigma_start, self.sigma_end, self.sigma_anneal_steps
            ),
            reject_duplicates=self.reject_duplicates_until is None or post < self.reject_duplicates_until,
        )
