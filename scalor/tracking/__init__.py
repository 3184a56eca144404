"""How a trained model is run to track: the schedule at the end of training, and the trackers that run the model
(:mod:`.trackers`: online, backfilled, picked among passes and views) in eval mode without gradients.

Kept free of video I/O, so that training code (the Lightning module's validation) can use it.
"""

from __future__ import annotations

from scalor.schedules import Curriculum, Schedule
from scalor.tracking.trackers import BackfillTracker, OnlineTracker, PickTracker, Tracker, evaluating

__all__ = ["BackfillTracker", "OnlineTracker", "PickTracker", "Tracker", "evaluating", "inference_schedule"]


def inference_schedule(curriculum: Curriculum | None = None) -> Schedule:
    """The schedule at the end of training: temperature, presence prior and a scheduled sigma at their final
    values, state detached."""
    c = curriculum or Curriculum()
    return Schedule(tau=c.tau_end, z_pres_prior=c.z_pres_prior_end, detach=True, bg_alpha_curriculum=False,
                    sigma=c.sigma_end)
