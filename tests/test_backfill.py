"""Backfill (offline tracking): track tables, the backward extension of tracks that start late, and the
BackfillTracker that runs it."""

from dataclasses import replace

import torch

from scalor.model import SCALOR, Schedule
from scalor.tracking import BackfillTracker
from scalor.tracking.backfill import TrackTable, backfill, box_iou


def box(x, y, s=0.1):
    return [x, y, x + s, y + s]


def table(rows, t_len, ids=None):
    """rows: one dict {frame: box} per track -> TrackTable of one sequence (presence 0.9 where given)."""
    u = len(rows)
    boxes, pres = torch.zeros(1, u, t_len, 4), torch.zeros(1, u, t_len)
    for r, row in enumerate(rows):
        for t, b in row.items():
            boxes[0, r, t], pres[0, r, t] = torch.tensor(b), 0.9
    return TrackTable(torch.arange(1, u + 1) if ids is None else torch.tensor(ids), boxes, pres)


def test_box_iou():
    a = torch.tensor([0.0, 0.0, 0.2, 0.2])
    assert box_iou(a, a) == 1
    assert abs(float(box_iou(a, torch.tensor([0.1, 0.0, 0.3, 0.2]))) - 1 / 3) < 1e-6
    assert box_iou(a, torch.tensor([0.5, 0.5, 0.6, 0.6])) == 0
    assert box_iou(torch.zeros(4), torch.zeros(4)) == 0  # empty boxes: 0, not NaN


def test_slots_round_trip_and_threshold():
    """from_slots puts each reported object on its ID's row (slots may change between frames); to_slots gives a
    slot per row; objects at presence <= 0.5 and padding are left out."""
    ids = torch.tensor([[[3, 5, -1], [5, 3, 7]]])  # (B=1, T=2, N=3)
    boxes = torch.rand(1, 2, 3, 4)
    pres = torch.tensor([[[0.9, 0.8, 0.9], [0.7, 0.4, 0.95]]])
    tab = TrackTable.from_slots(boxes, ids, pres)
    rows = {int(i): r for r, i in enumerate(tab.ids)}
    assert set(rows) >= {3, 5, 7}
    assert torch.equal(tab.boxes[0, rows[3], 0], boxes[0, 0, 0]) and torch.equal(tab.boxes[0, rows[5], 1], boxes[0, 1, 0])
    assert tab.reported[0, rows[3]].tolist() == [True, False]  # 0.4 at frame 1: not reported
    assert tab.reported[0, rows[7]].tolist() == [False, True]
    b, i, p = tab.to_slots()
    assert b.shape == (1, 2, tab.ids.numel(), 4) and i.shape == p.shape == (1, 2, tab.ids.numel())
    assert sorted(i[0, 0][i[0, 0] >= 0].tolist()) == [3, 5] and sorted(i[0, 1][i[0, 1] >= 0].tolist()) == [5, 7]


def test_late_track_is_extended_back_along_its_backward_track():
    """Track 2 starts at frame 3 (its sprite was merged into track 1 before); the backward pass tracked it down
    to frame 0: frames 0-2 take the backward boxes, ID 2; track 1 and frames >= 3 are unchanged."""
    fwd = table([{t: box(0.1 + 0.02 * t, 0.1) for t in range(5)}, {t: box(0.3 + 0.05 * (t - 3), 0.1) for t in (3, 4)}], 5)
    back_rows = [{t: box(0.1 + 0.02 * t, 0.1) for t in range(5)}, {t: box(0.15 + 0.05 * t, 0.1) for t in range(5)}]
    bwd = table(back_rows, 5, ids=[1, 2])
    out, ext = backfill(fwd, bwd)
    assert ext[0, 1].tolist() == [True, True, True, False, False] and not ext[0, 0].any()
    torch.testing.assert_close(out.boxes[0, 1, :3], bwd.boxes[0, 1, :3])
    torch.testing.assert_close(out.boxes[:, :, 3:], fwd.boxes[:, :, 3:])
    torch.testing.assert_close(out.boxes[0, 0], fwd.boxes[0, 0])
    _, ids, _ = out.to_slots()
    assert [sorted(x for x in ids[0, t].tolist() if x >= 0) for t in range(5)] == [[1, 2]] * 5


def test_extension_stops_at_a_gap_or_a_copy_and_needs_a_match():
    """The extension runs back only while the backward track is reported and is not a copy of a track that was
    there already; a late track with no backward box overlapping it (IoU < 0.5) is left alone."""
    first = {t: box(0.1, 0.1) for t in range(6)}
    late = {t: box(0.5, 0.5) for t in (4, 5)}
    stray = {t: box(0.8, 0.1) for t in (2, 3)}
    fwd = table([first, late, stray], 6)
    # backward: the late sprite tracked at frames 1-5 but absent at 0 ... and a copy of `first` at frame 2
    gap = table([first, {t: box(0.5, 0.5) for t in (1, 3, 4, 5)}], 6)
    _, ext = backfill(fwd, gap)
    assert ext[0, 1].tolist() == [False, False, False, True, False, False]  # frame 2 missing: stops at 3
    onto = {**{t: box(0.5, 0.5) for t in (3, 4, 5)}, 2: box(0.1, 0.1), 1: box(0.1, 0.1), 0: box(0.1, 0.1)}
    _, ext = backfill(fwd, table([first, onto], 6))
    assert ext[0, 1].tolist() == [False, False, False, True, False, False]  # frame 2 copies track 1: stops
    _, ext = backfill(fwd, table([first, onto], 6), copy_iou=1.01)  # copies allowed
    assert ext[0, 1].tolist() == [True, True, True, True, False, False]
    assert not ext[0, 2].any()  # stray: no backward box overlaps it at its first frame


def test_backward_track_serves_one_late_track_only():
    """Two late tracks starting on nearly the same box compete for one backward track: only the better one
    (mutual best) is extended."""
    a = {t: box(0.5, 0.5) for t in (3, 4)}
    b = {t: box(0.51, 0.5) for t in (3, 4)}
    bwd = table([{t: box(0.5, 0.5) for t in range(5)}], 5)
    _, ext = backfill(table([a, b], 5), bwd)
    assert ext[0, 0].tolist() == [True, True, True, False, False] and not ext[0, 1].any()


def test_batched_sequences_are_independent():
    """A batch of two sequences gives each what it gives alone (rows are shared IDs, tracks are not)."""
    f1 = [{t: box(0.1, 0.1) for t in range(4)}, {t: box(0.4, 0.4) for t in (2, 3)}]
    f2 = [{t: box(0.6, 0.2) for t in (1, 2, 3)}, {t: box(0.2, 0.6) for t in range(4)}]
    b1 = [{t: box(0.4, 0.4) for t in range(4)}]
    b2 = [{t: box(0.6, 0.2) for t in range(4)}, {t: box(0.2, 0.6) for t in range(4)}]
    one = [backfill(table(f, 4), table(b, 4, ids=list(range(1, len(b) + 1))))[1] for f, b in ((f1, b1), (f2, b2))]
    both_f, both_b = table(f1 + f2, 4), table(b1 + b2, 4)  # stack as a batch of two: rows split per sequence
    fwd = TrackTable(torch.arange(1, 3), torch.stack([both_f.boxes[0, :2], both_f.boxes[0, 2:]]),
                     torch.stack([both_f.presence[0, :2], both_f.presence[0, 2:]]))
    pad = lambda x: torch.cat([x, torch.zeros_like(x[:1])])  # noqa: E731  (sequence 1 has one backward track)
    bwd = TrackTable(torch.arange(1, 3), torch.stack([pad(both_b.boxes[0, :1]), both_b.boxes[0, 1:]]),
                     torch.stack([pad(both_b.presence[0, :1]), both_b.presence[0, 1:]]))
    _, ext = backfill(fwd, bwd)
    assert torch.equal(ext[0], one[0][0]) and torch.equal(ext[1], one[1][0])
    assert ext[0, 1].tolist() == [True, True, False, False] and ext[1, 0].tolist() == [True, False, False, False]


def test_backfill_tracker_keeps_the_forward_tracks_and_adds_only_earlier_boxes():
    """BackfillTracker: every forward track is reported with the same ID and box from its first frame on; what is
    added lies before a track's first frame, with a box of the backward pass in that frame; the carry is the
    forward pass's; the model is left as it was (train mode, no gradients recorded)."""
    torch.manual_seed(0)
    m = SCALOR.from_config(img_size=64, num_cell_h=4, num_cell_w=4, glimpse_size=16, max_num_obj=8)
    video = torch.rand(2, 6, 3, 64, 64)
    out = BackfillTracker()(m, video, Schedule())
    assert m.training and not out.boxes.requires_grad
    m.eval()
    with torch.no_grad():
        plain = m(video, Schedule(), track_only=True, deterministic=True)
        back = m(video.flip(1), Schedule(), track_only=True, deterministic=True)
    fwd = TrackTable.from_slots(plain.boxes, plain.ids, plain.presence)
    new = TrackTable.from_slots(out.boxes, out.ids, out.presence)
    bwd = TrackTable.from_slots(back.boxes, back.ids, back.presence).flip()
    assert torch.equal(fwd.ids, new.ids)
    kept = fwd.reported
    assert torch.equal(new.reported & kept, kept)
    torch.testing.assert_close(new.boxes[kept], fwd.boxes[kept])
    added = new.reported & ~kept
    t = torch.arange(6)
    start = torch.where(kept, t, 6).amin(-1)
    assert bool((~added | (t < start[..., None])).all())  # only before a track's first frame
    for bi, r, ti in added.nonzero().tolist():  # each added box is a backward box of that frame
        assert bool((box_iou(new.boxes[bi, r, ti], bwd.boxes[bi, :, ti]) > 0.999).any())
    assert torch.equal(out.counts, plain.counts + added.sum(1))
    assert torch.equal(out.carry.next_id, plain.carry.next_id)
    # the old model.backfill result, computed from its parts: the forward tracks backfilled from the reversed pass
    table, extended = backfill(fwd, bwd, copy_iou=0.7)
    boxes, ids, presence = table.to_slots()
    assert torch.equal(out.boxes, boxes) and torch.equal(out.ids, ids) and torch.equal(out.presence, presence)
    assert torch.equal(out.counts, plain.counts + extended.sum(1))


def test_backfill_tracker_extends_a_late_track_with_the_reversed_pass(monkeypatch):
    """With the two passes prescribed (the second one over the reversed frames, its slots in reversed time), the
    tracker reports the late track from frame 0 with the backward boxes, under its forward ID, and counts it;
    copy_iou reaches backfill."""
    torch.manual_seed(0)
    m = SCALOR.from_config(img_size=64, num_cell_h=4, num_cell_w=4, glimpse_size=16, max_num_obj=8)
    video = torch.rand(1, 5, 3, 64, 64)
    fwd = table([{t: box(0.1, 0.1) for t in range(5)}, {t: box(0.5, 0.5) for t in (3, 4)}], 5, ids=[1, 2])
    # the backward track runs onto track 1 at frames 0-1 (box IoU 0.82 with it)
    bwd = table([{**{t: box(0.5 - 0.02 * (4 - t), 0.5) for t in range(2, 5)}, 0: box(0.11, 0.1), 1: box(0.11, 0.1)}],
                5, ids=[7])
    real = m.forward
    calls = []

    def forward(v, schedule, carry=None, **kwargs):
        calls.append(kwargs)
        out = real(v, schedule, carry, **kwargs)
        tab = bwd.flip() if torch.equal(v, video.flip(1)) else fwd
        boxes, ids, pres = tab.to_slots()
        return replace(out, boxes=boxes, ids=ids, presence=pres, counts=(ids >= 0).sum(-1))

    monkeypatch.setattr(m, "forward", forward)
    out = BackfillTracker()(m, video, Schedule())
    assert calls == [dict(track_only=True, deterministic=True)] * 2
    assert out.counts.tolist() == [[1, 1, 2, 2, 2]]  # extended back to frame 2, where the copy starts
    late = out.ids == 2
    assert late.sum(-1).tolist() == [[0, 0, 1, 1, 1]]
    torch.testing.assert_close(out.boxes[late][:1], bwd.boxes[0, 0, 2:3])
    torch.testing.assert_close(out.boxes[late][1:], fwd.boxes[0, 1, 3:])
    loose = BackfillTracker(copy_iou=0.9)(m, video, Schedule())  # IoU 0.82 is no copy then: back to frame 0
    assert loose.counts.tolist() == [[2, 2, 2, 2, 2]]
    torch.testing.assert_close(loose.boxes[loose.ids == 2][:2], bwd.boxes[0, 0, :2])
