"""PickTracker (offline tracking): each sequence reports the tracks of the direction (and view) with the better
ELBO."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from scalor.errors import ConfigError
from scalor.inference import track_video
from scalor.model import SCALOR, Schedule
from scalor.tracking import BackfillTracker, OnlineTracker, PickTracker
from scalor.tracking.backfill import TrackTable
from scalor.tracking.views import VIEW_COUNTS, unview_boxes, view

torch.set_num_threads(1)

TINY = dict(img_size=64, num_cell_h=4, num_cell_w=4, glimpse_size=16, max_num_obj=8)


def box(x, y, s=0.1):
    return [x, y, x + s, y + s]


def table(rows, t_len, ids):
    """rows: per sequence of the batch, one dict {frame: box} per track -> TrackTable (presence 0.9 where given);
    every sequence has the same number of rows, ids (U,)."""
    b, u = len(rows), len(rows[0])
    boxes, pres = torch.zeros(b, u, t_len, 4), torch.zeros(b, u, t_len)
    for s, seq in enumerate(rows):
        for r, row in enumerate(seq):
            for t, xyxy in row.items():
                boxes[s, r, t], pres[s, r, t] = torch.tensor(xyxy), 0.9
    return TrackTable(torch.tensor(ids), boxes, pres)


def reported_ids(out, seq):
    """Per frame, the sorted IDs reported in sequence ``seq``."""
    return [sorted(i for i in out.ids[seq, t].tolist() if i >= 0) for t in range(out.ids.shape[1])]


def test_choose_takes_each_sequence_from_one_table_and_keeps_ids_apart():
    first = table([[{0: box(0.1, 0.1), 1: box(0.1, 0.1)}], [{0: box(0.5, 0.5), 1: box(0.5, 0.5)}]], 2, ids=[1])
    second = table([[{0: box(0.2, 0.2), 1: box(0.2, 0.2)}, {1: box(0.6, 0.6)}],
                    [{0: box(0.3, 0.3), 1: box(0.3, 0.3)}, {0: box(0.7, 0.7)}]], 2, ids=[1, 2])
    chosen = TrackTable.choose(first, second, torch.tensor([True, False]))
    assert chosen.ids.tolist() == [1, 1, 2]  # I + J rows; the same ID on two rows is never reported twice
    assert chosen.reported[0].tolist() == [[False, False], [True, True], [False, True]]  # sequence 0: second
    assert chosen.reported[1].tolist() == [[True, True], [False, False], [False, False]]  # sequence 1: first
    _, ids, _ = chosen.to_slots()
    assert [sorted(i for i in ids[0, t].tolist() if i >= 0) for t in range(2)] == [[1], [1, 2]]
    torch.testing.assert_close(chosen.boxes[1, 0], first.boxes[1, 0])


def prescribed(monkeypatch, m, video, fwd, bwd, fwd_nll, bwd_nll):
    """Make the model's passes report the tables fwd / bwd (bwd in forward time) with these negative ELBOs
    (B,): the pass over the reversed frames gets bwd. Every call must be a deterministic full pass."""
    real_run = m.forward

    def run(v, schedule, carry=None, **kwargs):
        assert kwargs == {"deterministic": True} and carry is None
        out = real_run(v, schedule, carry, **kwargs)
        backwards = torch.equal(v, video.flip(1))
        boxes, ids, pres = (bwd.flip() if backwards else fwd).to_slots()
        nll = torch.tensor(bwd_nll if backwards else fwd_nll)
        return replace(out, boxes=boxes, ids=ids, presence=pres, counts=(ids >= 0).sum(-1),
                       log_like=-nll, kl_what=torch.zeros_like(nll), kl_where=torch.zeros_like(nll),
                       kl_depth=torch.zeros_like(nll), kl_pres=torch.zeros_like(nll), kl_bg=torch.zeros_like(nll))

    monkeypatch.setattr(m, "forward", run)


def test_pick_reports_the_direction_with_the_lower_negative_elbo(monkeypatch):
    """Sequence 0: the backward pass holds two sprites the forward pass took as one and has the better ELBO, so
    its tracks (and IDs) are reported; sequence 1: the forward pass is better and is reported as it is."""
    torch.manual_seed(0)
    m = SCALOR.from_config(**TINY).eval()
    video = torch.rand(2, 4, 3, 64, 64)
    one = {t: box(0.1 + 0.02 * t, 0.1) for t in range(4)}
    fwd = table([[one, {}], [one, {t: box(0.5, 0.5) for t in range(4)}]], 4, ids=[1, 2])
    bwd = table([[one, {t: box(0.2 + 0.02 * t, 0.1) for t in range(4)}], [one, {}]], 4, ids=[5, 6])
    prescribed(monkeypatch, m, video, fwd, bwd, fwd_nll=[-100.0, -200.0], bwd_nll=[-150.0, -190.0])
    out = PickTracker(backfill=False)(m, video, Schedule())
    assert reported_ids(out, 0) == [[5, 6]] * 4 and reported_ids(out, 1) == [[1, 2]] * 4
    assert out.counts.tolist() == [[2] * 4, [2] * 4]
    torch.testing.assert_close(out.boxes[0][out.ids[0] == 6], bwd.boxes[0, 1])
    torch.testing.assert_close(out.log_like, torch.tensor([100.0, 200.0]))  # the loss terms are the forward pass's


def test_pick_backfills_each_direction_from_the_other(monkeypatch):
    """With backfill, the forward pass's late track is extended back along the backward track before the
    choice: the forward pass (better ELBO) reports both sprites from frame 0."""
    torch.manual_seed(0)
    m = SCALOR.from_config(**TINY).eval()
    video = torch.rand(1, 5, 3, 64, 64)
    fwd = table([[{t: box(0.1, 0.1) for t in range(5)}, {t: box(0.5, 0.5) for t in (3, 4)}]], 5, ids=[1, 2])
    bwd = table([[{t: box(0.1, 0.1) for t in range(5)}, {t: box(0.5 - 0.02 * (4 - t), 0.5) for t in range(5)}]], 5,
                ids=[1, 2])
    prescribed(monkeypatch, m, video, fwd, bwd, fwd_nll=[-300.0], bwd_nll=[-200.0])
    plain = PickTracker(backfill=False)(m, video, Schedule())
    filled = PickTracker()(m, video, Schedule())  # backfill: the default
    assert plain.counts.tolist() == [[1, 1, 1, 2, 2]]
    assert filled.counts.tolist() == [[2] * 5]
    torch.testing.assert_close(filled.boxes[0][filled.ids[0] == 2][:3], bwd.boxes[0, 1, :3])


def test_pick_matches_the_chosen_track_only_pass():
    """Untrained model, real passes: every sequence reports exactly the tracks of the track-only pass of the
    direction whose full pass has the lower negative ELBO (the reversed pass's in forward time)."""
    torch.manual_seed(0)
    m = SCALOR.from_config(**TINY).eval()
    with torch.no_grad():
        m.discovery.proposal.pres_head[-1].bias.fill_(0.5)
    video = torch.rand(3, 5, 3, 64, 64)
    with torch.no_grad():
        ahead, behind = m(video, Schedule(), deterministic=True), m(video.flip(1), Schedule(), deterministic=True)
        fwd = TrackTable.from_slots(*(lambda o: (o.boxes, o.ids, o.presence))(OnlineTracker()(m, video, Schedule())))
        bwd = TrackTable.from_slots(*(lambda o: (o.boxes, o.ids, o.presence))(
            OnlineTracker()(m, video.flip(1), Schedule()))).flip()
    out = PickTracker(backfill=False)(m, video, Schedule())
    got = TrackTable.from_slots(out.boxes, out.ids, out.presence)
    assert int(fwd.reported.sum()) > 0
    assert {bool(x) for x in behind.neg_elbo < ahead.neg_elbo} == {True, False}  # both directions are chosen
    for s in range(3):
        want = bwd if behind.neg_elbo[s] < ahead.neg_elbo[s] else fwd
        rows = lambda tab: sorted((int(i), t, *[round(v, 5) for v in tab.boxes[s, r, t].tolist()])  # noqa: E731
                                  for r, i in enumerate(tab.ids.tolist()) for t in range(5) if tab.reported[s, r, t])
        assert rows(got) == rows(want)
    torch.testing.assert_close(out.log_like, ahead.log_like)


def test_config_checks():
    for bad in (3, 0, True, "8"):
        with pytest.raises(ConfigError, match="tracker.views"):
            PickTracker(views=bad)
    with pytest.raises(ConfigError, match="tracker.backfill='yes' must be true or false"):
        PickTracker(backfill="yes")
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="tracker.copy_iou"):
            PickTracker(copy_iou=bad)
        with pytest.raises(ConfigError, match="tracker.copy_iou"):
            BackfillTracker(copy_iou=bad)
    assert PickTracker(views=8, copy_iou=1).views == 8


def test_pick_takes_whole_sequences_and_streams_with_backfill_or_online():
    """A carry is refused (window after window there is no whole sequence); its streaming tracker backfills each
    window (with the pick's copy_iou) or tracks online."""
    m = SCALOR.from_config(**TINY)
    video = torch.rand(1, 2, 3, 64, 64)
    first = OnlineTracker()(m, video, Schedule())
    with pytest.raises(ValueError, match="whole sequences"):
        PickTracker()(m, video, Schedule(), carry=first.carry)
    assert PickTracker(views=8, copy_iou=0.6).streaming() == BackfillTracker(copy_iou=0.6)
    assert PickTracker(backfill=False).streaming() == OnlineTracker()
    assert BackfillTracker().streaming() == BackfillTracker() and OnlineTracker().streaming() == OnlineTracker()


def test_streaming_a_pick_tracker_tracks_forwards_window_after_window(tmp_path, monkeypatch):
    """track_video with a PickTracker streams by its streaming tracker: IDs carry from window to window and no
    pick runs."""
    torch.manual_seed(0)
    m = SCALOR.from_config(**TINY)
    seen, carries = [], []
    real_pick, real_fill = PickTracker.track, BackfillTracker.track
    monkeypatch.setattr(PickTracker, "track", lambda *a, **k: seen.append(1) or real_pick(*a, **k))
    monkeypatch.setattr(BackfillTracker, "track", lambda self, m, v, s, carry: carries.append(carry)
                        or real_fill(self, m, v, s, carry))
    frames = (np.random.default_rng(t).random((3, 64, 64), dtype=np.float32) for t in range(6))
    summary = track_video(m, frames, tmp_path, window=3, tracker=PickTracker(views=2))
    assert summary["frames"] == 6 and not seen
    assert len(carries) == 2 and carries[0] is None and carries[1] is not None  # the second window continues


def pixel_box(image):
    """Normalised (x1, y1, x2, y2) of the non-zero pixels of image (H, W)."""
    rows, cols = torch.nonzero(image, as_tuple=True)
    h, w = image.shape
    return torch.tensor([cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h])


@pytest.mark.parametrize("k", range(8))
def test_views_map_boxes_back_to_the_frame(k):
    """A box found in view k, mapped back, is the box of the same pixels in the frames as they are; the eight
    views of an asymmetric image are all different."""
    image = torch.zeros(2, 3, 32, 32)
    image[1, :, 3:9, 20:30] = 1.0  # an off-centre, non-square rectangle
    seen = view(image, k)
    torch.testing.assert_close(unview_boxes(pixel_box(seen[1, 0]), k), pixel_box(image[1, 0]))
    assert seen.shape == image.shape and not torch.equal(seen, view(image, (k + 1) % 8))
    assert view(image, 0) is image and VIEW_COUNTS == (1, 2, 4, 8)


def test_pick_over_views_matches_the_chosen_pass():
    """Untrained model, real passes, views=8: every sequence reports the tracks of the one of the 16 passes
    (8 views x 2 directions) with the lowest negative ELBO, boxes mapped back to the frames as they are."""
    torch.manual_seed(0)
    m = SCALOR.from_config(**TINY).eval()
    with torch.no_grad():
        m.discovery.proposal.pres_head[-1].bias.fill_(0.5)
    video = torch.rand(4, 4, 3, 64, 64)
    passes = []  # (negative ELBO (B,), TrackTable in the frames' time and space)
    with torch.no_grad():
        ahead = m(video, Schedule(), deterministic=True)
        for k in range(8):
            for backwards in (False, True):
                frames = view(video, k).flip(1) if backwards else view(video, k)
                full = m(frames, Schedule(), deterministic=True)
                only = m(frames, Schedule(), track_only=True, deterministic=True)
                tab = TrackTable.from_slots(only.boxes, only.ids, only.presence)
                tab = tab.flip() if backwards else tab
                passes.append((full.neg_elbo, TrackTable(tab.ids, unview_boxes(tab.boxes, k), tab.presence)))
    out = PickTracker(views=8, backfill=False)(m, video, Schedule())
    got = TrackTable.from_slots(out.boxes, out.ids, out.presence)
    chosen = torch.stack([e for e, _ in passes]).argmin(0)  # first of equals, as the model breaks ties
    assert set(chosen.tolist()) - {0, 1}, "some sequence should be taken from a mirrored or transposed view"
    rows = lambda tab, s: sorted((int(i), t, *[round(v, 4) for v in tab.boxes[s, r, t].tolist()])  # noqa: E731
                                 for r, i in enumerate(tab.ids.tolist()) for t in range(4) if tab.reported[s, r, t])
    for s in range(4):
        assert rows(got, s) == rows(passes[int(chosen[s])][1], s)
    torch.testing.assert_close(out.log_like, ahead.log_like)  # the loss terms: the frames as they are, forwards
