"""Trackers (scalor/tracking/trackers.py): objects beside the model that run it; the model keeps its architecture
and objective only."""

from __future__ import annotations

import inspect

import pytest
import torch

from scalor.errors import ConfigError
from scalor.model import SCALOR, SCALORConfig, Schedule
from scalor.model.config import MOVED_OUT_OF_MODEL
from scalor.tracking import BackfillTracker, OnlineTracker, PickTracker, evaluating

torch.set_num_threads(1)

TINY = dict(img_size=64, num_cell_h=4, num_cell_w=4, glimpse_size=16, max_num_obj=8)
TRACKERS = [OnlineTracker(), BackfillTracker(), PickTracker(), PickTracker(views=2, backfill=False)]


def tiny_model(seed: int = 0) -> SCALOR:
    torch.manual_seed(seed)
    model = SCALOR.from_config(**TINY)
    with torch.no_grad():
        model.discovery.proposal.pres_head[-1].bias.fill_(0.5)  # it finds (and keeps) objects
    return model


def pad_cat(a: torch.Tensor, b: torch.Tensor, fill) -> torch.Tensor:
    """(B, Ta, Na, ...) and (B, Tb, Nb, ...) -> (B, Ta + Tb, max N, ...), padded with ``fill``."""
    n = max(a.shape[2], b.shape[2])
    pad = lambda x: torch.cat([x, x.new_full((*x.shape[:2], n - x.shape[2], *x.shape[3:]), fill)], 2)  # noqa: E731
    return torch.cat([pad(a), pad(b)], 1)


def test_the_model_has_no_tracking_options():
    """Tracking, test and generation options are no model options or attributes; deterministic is a call
    argument."""
    assert not set(SCALORConfig.keys()) & set(MOVED_OUT_OF_MODEL)
    m = SCALOR.from_config(**TINY)
    assert not [key for key in MOVED_OUT_OF_MODEL if hasattr(m, key)]
    assert not hasattr(m, "track_picked") and not hasattr(m, "track_backfilled") and not hasattr(m, "_run")
    assert "deterministic" in inspect.signature(SCALOR.forward).parameters
    with pytest.raises(ConfigError, match="model.backfill is no longer a model option.*write tracker=backfill"):
        SCALOR.from_config(**TINY, backfill=True)


def test_deterministic_is_a_call_argument():
    m = tiny_model().eval()
    video = torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(1)
        a = m(video, Schedule(), deterministic=True)
        torch.manual_seed(2)
        b = m(video, Schedule(), deterministic=True)
        torch.manual_seed(1)
        c = m(video, Schedule())
        torch.manual_seed(2)
        d = m(video, Schedule())
    torch.testing.assert_close(a.neg_elbo, b.neg_elbo)  # means: the seed does not matter
    assert not torch.allclose(c.neg_elbo, d.neg_elbo)  # samples (the default): it does


def test_online_tracker_over_two_windows_with_the_carry_equals_one_pass():
    m = tiny_model()
    video = torch.rand(2, 6, 3, 64, 64)
    whole = OnlineTracker()(m, video, Schedule())
    first = OnlineTracker()(m, video[:, :4], Schedule())
    second = OnlineTracker()(m, video[:, 4:], Schedule(), carry=first.carry)
    assert (whole.ids >= 0).any() and whole.recon.shape[1] == 0  # track-only
    assert torch.equal(torch.cat([first.counts, second.counts], 1), whole.counts)
    assert torch.equal(pad_cat(first.ids, second.ids, -1), whole.ids)
    torch.testing.assert_close(pad_cat(first.boxes, second.boxes, 0.0), whole.boxes)
    torch.testing.assert_close(pad_cat(first.presence, second.presence, 0.0), whole.presence)
    assert torch.equal(second.carry.next_id, whole.carry.next_id)
    with torch.no_grad():
        plain = m.eval()(video, Schedule(), track_only=True, deterministic=True)
    assert torch.equal(plain.ids, whole.ids) and torch.equal(plain.boxes, whole.boxes)


@pytest.mark.parametrize("tracker", TRACKERS, ids=repr)
def test_trackers_leave_the_model_as_it_was(tracker):
    """Eval mode and no gradients for the call; afterwards the model is in train mode again, its attributes and
    weights unchanged; two calls give the same tracks (posterior means)."""
    m = tiny_model().train()
    before = {k: v for k, v in vars(m).items() if not k.startswith("_")}
    weights = {k: v.clone() for k, v in m.state_dict().items()}
    video = torch.rand(2, 4, 3, 64, 64)
    seen = []
    hook = m.register_forward_pre_hook(lambda mod, args: seen.append((mod.training, torch.is_grad_enabled())))
    a = tracker(m, video, Schedule())
    b = tracker(m, video, Schedule())
    hook.remove()
    assert seen and set(seen) == {(False, False)}
    assert m.training and {k: v for k, v in vars(m).items() if not k.startswith("_")} == before
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in weights.items())
    assert torch.equal(a.ids, b.ids) and torch.equal(a.boxes, b.boxes) and torch.equal(a.counts, b.counts)
    assert a.boxes.shape[:2] == a.ids.shape[:2] == a.counts.shape == (2, 4)


def test_trackers_are_frozen_and_evaluating_restores_train_mode():
    tracker = PickTracker(views=8)
    with pytest.raises(AttributeError):
        tracker.views = 1
    m = tiny_model().train()
    with pytest.raises(RuntimeError, match="inside"):
        with evaluating(m):
            assert not m.training and not torch.is_grad_enabled()
            raise RuntimeError("inside")
    assert m.training and torch.is_grad_enabled()


@pytest.mark.parametrize("option,label,streams", [
    ("online", "online", "online"), ("backfill", "backfill", "backfill"), ("pick", "pick", "backfill"),
    ("pick8", "pick8", "backfill")])
def test_each_tracker_option_is_labelled_by_its_name_in_results(option, label, streams):
    from hydra import compose, initialize_config_dir

    from conftest import ROOT
    from scalor.tracking.trackers import build_tracker

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"tracker={option}"])
    tracker = build_tracker(cfg)
    assert tracker.label == label and tracker.streaming().label == streams
    assert PickTracker(views=4, backfill=False).label == "pick, 4 views, no backfill"
    assert BackfillTracker(copy_iou=0.5).label == "backfill, copy_iou 0.5"
