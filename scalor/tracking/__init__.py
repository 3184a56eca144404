"""How a trained model is run to track: the schedule at the end of training, and eval mode with the tracking
settings (deterministic inference, views, streaming) switched for the duration of a call.

Kept free of video I/O, so that training code (the Lightning module's validation) can use it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from scalor.model import SCALOR
from scalor.schedules import Curriculum, Schedule

__all__ = ["inference_mode", "inference_schedule", "streaming"]


def inference_schedule(curriculum: Curriculum | None = None) -> Schedule:
    """The schedule at the end of training: temperature, presence prior and a scheduled sigma at their final
    values, state detached."""
    c = curriculum or Curriculum()
    return Schedule(tau=c.tau_end, z_pres_prior=c.z_pres_prior_end, detach=True, bg_alpha_curriculum=False,
                    sigma=c.sigma_end)


@contextmanager
def inference_mode(model: SCALOR, deterministic: bool | None, pick_views: int | None = None):
    """Eval mode, no gradients and (optionally) a deterministic flag and a number of views (``pick_views``); the
    model's settings come back after."""
    was_training, was_det, was_views = model.training, model.deterministic, model.pick_views
    model.eval()
    if deterministic is not None:
        model.deterministic = bool(deterministic)
    if pick_views is not None:
        model.pick_views = int(pick_views)
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
        model.deterministic, model.pick_views = was_det, was_views


@contextmanager
def streaming(model: SCALOR):
    """Window after window with the state carried over: options that need a whole sequence's frames
    (``pick_direction``) are off, so each window's IDs continue the last one's; they come back after."""
    picks = model.pick_direction
    model.pick_direction = False
    try:
        yield model
    finally:
        model.pick_direction = picks
