"""MOTMetrics against py-motmetrics (the oracle), CountingMetrics, and the DDP reduction."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from scalor.metrics import CountingMetrics, MOTMetrics

ORACLE_METRICS = [
    "mota",
    "motp",
    "idf1",
    "num_switches",
    "mostly_tracked",
    "mostly_lost",
    "num_false_positives",
    "num_misses",
    "num_objects",
    "precision",
    "recall",
    "num_detections",
]
# ours -> (oracle column, transform of the oracle value)
KEYMAP = {
    "mota": ("mota", lambda v: v),
    "motp": ("motp", lambda v: 1.0 - v),  # motmetrics reports mean distance 1 - IoU
    "idf1": ("idf1", lambda v: v),
    "id_switches": ("num_switches", lambda v: v),
    "mostly_tracked": ("mostly_tracked", lambda v: v),
    "mostly_lost": ("mostly_lost", lambda v: v),
    "false_positives": ("num_false_positives", lambda v: v),
    "misses": ("num_misses", lambda v: v),
    "num_gt": ("num_objects", lambda v: v),
    "precision": ("precision", lambda v: v),
    "recall": ("recall", lambda v: v),
}


def _iou_loop(a, b):
    """Plain-Python IoU of two (x1, y1, x2, y2) boxes, independent of the code under test."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def oracle(pred_boxes, pred_ids, gt_boxes, gt_ids):
    """py-motmetrics on (B, T, N, 4) / (B, T, N) arrays; one accumulator per sequence; OVERALL row."""
    mm = pytest.importorskip("motmetrics")  # imported here: the DDP test's worker processes skip pandas
    pred_boxes, pred_ids = np.asarray(pred_boxes, float), np.asarray(pred_ids)
    gt_boxes, gt_ids = np.asarray(gt_boxes, float), np.asarray(gt_ids)
    accs = []
    for b in range(gt_ids.shape[0]):
        acc = mm.MOTAccumulator(auto_id=True)
        for t in range(gt_ids.shape[1]):
            gs = [k for k in range(gt_ids.shape[2]) if gt_ids[b, t, k] >= 0]
            ps = [k for k in range(pred_ids.shape[2]) if pred_ids[b, t, k] >= 0]
            d = np.full((len(gs), len(ps)), np.nan)
            for i, g in enumerate(gs):
                for j, p in enumerate(ps):
                    dist = 1.0 - _iou_loop(gt_boxes[b, t, g], pred_boxes[b, t, p])
                    if dist <= 0.5:
                        d[i, j] = dist
            acc.update(gt_ids[b, t, gs].tolist(), pred_ids[b, t, ps].tolist(), d)
        accs.append(acc)
    with mm.lap.set_default_solver("scipy"):
        summary = mm.metrics.create().compute_many(
            accs, metrics=ORACLE_METRICS, names=[str(i) for i in range(len(accs))], generate_overall=True
        )
    overall = summary.loc["OVERALL"].copy()
    # motmetrics' OVERALL motp is NaN as soon as one sequence has no detection (NaN * 0); ours skips such
    # sequences, i.e. it is the mean distance over all detections. Recompute the oracle's the same way.
    rows = summary.drop(index="OVERALL")
    rows = rows[rows["num_detections"] > 0]
    if len(rows):
        overall["motp"] = (rows["motp"] * rows["num_detections"]).sum() / rows["num_detections"].sum()
    return overall


def ours(pred_boxes, pred_ids, gt_boxes, gt_ids, **kw):
    m = MOTMetrics()
    m.update(
        torch.as_tensor(np.asarray(pred_boxes), dtype=torch.float32),
        torch.as_tensor(np.asarray(pred_ids)),
        torch.as_tensor(np.asarray(gt_boxes), dtype=torch.float32),
        torch.as_tensor(np.asarray(gt_ids)),
        **kw,
    )
    return {k: float(v) for k, v in m.compute().items()}


def assert_matches_oracle(pb, pi, gb, gi):
    # float32 round trip so both sides see the same box coordinates
    pb = np.asarray(pb, np.float32).astype(np.float64)
    gb = np.asarray(gb, np.float32).astype(np.float64)
    got = ours(pb, pi, gb, gi)
    ref = oracle(pb, pi, gb, gi)
    for key, (col, fn) in KEYMAP.items():
        want = float(fn(float(ref[col])))
        if math.isnan(want):
            assert math.isnan(got[key]), (key, got[key], want)
        else:
            assert got[key] == pytest.approx(want, abs=1e-5), (key, got[key], want)
    return got


# ---------------------------------------------------------------------------------------------------------------
# hand-made cases. Two objects far apart, 5 frames.

A = [0.10, 0.10, 0.30, 0.30]
B = [0.60, 0.60, 0.80, 0.80]
FAR = [0.40, 0.05, 0.50, 0.15]


def shift(box, dx):
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def seq(frames, width):
    """frames: list over t of list of (id, box) -> boxes (1, T, width, 4), ids (1, T, width) padded with -1."""
    T = len(frames)
    boxes = np.zeros((1, T, width, 4))
    ids = np.full((1, T, width), -1, dtype=np.int64)
    for t, objs in enumerate(frames):
        for k, (i, box) in enumerate(objs):
            boxes[0, t, k] = box
            ids[0, t, k] = i
    return boxes, ids


def gt_two(T=5):
    return seq([[(1, A), (2, B)] for _ in range(T)], 3)


def test_perfect_tracks():
    gb, gi = gt_two()
    pb, pi = seq([[(11, B), (10, shift(A, 0.01))] for _ in range(5)], 3)
    got = assert_matches_oracle(pb, pi, gb, gi)
    assert got["mota"] == 1.0 and got["idf1"] == 1.0 and got["id_switches"] == 0
    assert got["mostly_tracked"] == 2 and got["mostly_lost"] == 0
    assert got["num_gt"] == 10 and got["precision"] == 1.0 and got["recall"] == 1.0
    assert 0.85 < got["motp"] < 1.0


def test_id_swap():
    gb, gi = gt_two()
    frames = [[(10, A), (11, B)] if t < 3 else [(11, A), (10, B)] for t in range(5)]
    pb, pi = seq(frames, 3)
    got = assert_matches_oracle(pb, pi, gb, gi)
    assert got["id_switches"] == 2
    assert got["mota"] == pytest.approx(1 - 2 / 10)
    assert got["idf1"] == pytest.approx(6 / 10)


def test_one_miss():
    gb, gi = gt_two()
    frames = [[(10, A), (11, B)] if t != 2 else [(10, A)] for t in range(5)]
    got = assert_matches_oracle(*seq(frames, 3), gb, gi)
    assert got["misses"] == 1 and got["false_positives"] == 0 and got["id_switches"] == 0
    assert got["mota"] == pytest.approx(0.9)


def test_one_false_positive():
    gb, gi = gt_two()
    frames = [[(10, A), (11, B)] + ([(12, FAR)] if t == 1 else []) for t in range(5)]
    got = assert_matches_oracle(*seq(frames, 3), gb, gi)
    assert got["false_positives"] == 1 and got["misses"] == 0
    assert got["precision"] == pytest.approx(10 / 11)


@pytest.mark.parametrize("new_id", [False, True])
def test_disappear_and_reappear(new_id):
    g = [[(1, A), (2, B)] if t not in (2, 3) else [(2, B)] for t in range(6)]
    gb, gi = seq(g, 3)
    p = [[(10, A), (11, B)] if t not in (2, 3) else [(11, B)] for t in range(6)]
    if new_id:  # the tracker re-identifies the object under a new ID: a switch
        p = [[(12 if t > 3 else 10, A), (11, B)] if t not in (2, 3) else [(11, B)] for t in range(6)]
    got = assert_matches_oracle(*seq(p, 3), gb, gi)
    assert got["id_switches"] == (1 if new_id else 0)
    assert got["misses"] == 0


def test_previous_match_kept_over_better_iou():
    # frame 0: GT 1 matched to 10; frame 1: 11 overlaps better but 10 is still valid -> keep 10, 11 is an FP
    gb, gi = seq([[(1, A)], [(1, A)]], 2)
    pb, pi = seq([[(10, A)], [(10, shift(A, 0.05)), (11, A)]], 2)
    got = assert_matches_oracle(pb, pi, gb, gi)
    assert got["id_switches"] == 0 and got["false_positives"] == 1


def test_assignment_maximises_number_of_matches():
    # P1 fits G1 best, but the only partner of P2 is G1: two matches (P1-G2, P2-G1) beat one better match
    def box(x1, x2):
        return [0.3 + 0.4 * x1, 0.1, 0.3 + 0.4 * x2, 0.5]

    gb, gi = seq([[(1, box(0.0, 1.0)), (2, box(0.3, 1.3))]], 2)
    pb, pi = seq([[(10, box(0.05, 1.05)), (11, box(-0.3, 0.7))]], 2)
    got = assert_matches_oracle(pb, pi, gb, gi)
    assert got["misses"] == 0 and got["false_positives"] == 0


def test_sequences_are_independent():
    # the same ID numbers in two sequences must not interact
    g1, gi1 = gt_two()
    p1, pi1 = seq([[(10, A), (11, B)] for _ in range(5)], 3)
    p2, pi2 = seq([[(11, A), (10, B)] for _ in range(5)], 3)
    got = assert_matches_oracle(np.concatenate([p1, p2]), np.concatenate([pi1, pi2]),
                                np.concatenate([g1, g1]), np.concatenate([gi1, gi1]))
    assert got["id_switches"] == 0 and got["idf1"] == 1.0


def test_presence_masks_predictions():
    gb, gi = gt_two()
    pb, pi = seq([[(10, A), (11, B), (12, FAR)] for _ in range(5)], 3)
    presence = torch.ones(pi.shape)
    presence[..., 2] = 0.2  # absent FP: ignored
    got = ours(pb, pi, gb, gi, pred_presence=presence)
    assert got["false_positives"] == 0 and got["mota"] == 1.0
    got = ours(pb, pi, gb, gi)
    assert got["false_positives"] == 5


def test_empty_cases():
    gb = np.zeros((1, 3, 2, 4))
    gi = np.full((1, 3, 2), -1)
    got = ours(gb, gi, gb, gi)  # nothing at all
    assert all(math.isnan(got[k]) for k in ("mota", "motp", "idf1", "precision", "recall"))
    assert got["num_gt"] == 0 and got["false_positives"] == 0 and got["id_switches"] == 0
    pb, pi = seq([[(10, A)]] * 3, 2)
    got = ours(pb, pi, gb, gi)  # predictions but no GT
    assert math.isnan(got["mota"]) and math.isnan(got["recall"])
    assert got["precision"] == 0.0 and got["idf1"] == 0.0 and got["false_positives"] == 3
    got = ours(gb, gi, pb, pi)  # GT but no predictions
    assert got["mota"] == 0.0 and got["misses"] == 3 and got["mostly_lost"] == 1
    assert math.isnan(got["motp"]) and math.isnan(got["precision"])
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert MOTMetrics().compute()["num_gt"] == 0  # never updated


def test_rejects_bad_shapes_and_repeated_ids():
    m = MOTMetrics()
    with pytest.raises(ValueError, match="shapes disagree"):
        m.update(torch.zeros(1, 3, 2, 4), torch.zeros(1, 3, 3), torch.zeros(1, 3, 2, 4), torch.zeros(1, 3, 2))
    with pytest.raises(ValueError, match="repeated ID"):
        m.update(torch.rand(1, 2, 2, 4), torch.ones(1, 2, 2), torch.rand(1, 2, 2, 4), -torch.ones(1, 2, 2))


# ---------------------------------------------------------------------------------------------------------------
# seeded random sequences


def random_sequences(seed, B=3, T=12, K=5, n_fp=2):
    """GT objects moving with constant velocity (with dropouts); predictions = jittered GT with misses,
    ID swaps, re-identifications and false positives, in shuffled slots."""
    rng = np.random.default_rng(seed)
    N = K + n_fp
    gb = np.zeros((B, T, K, 4))
    gi = np.full((B, T, K), -1, dtype=np.int64)
    pb = np.zeros((B, T, N, 4))
    pi = np.full((B, T, N), -1, dtype=np.int64)
    for b in range(B):
        k_obj = rng.integers(1, K + 1)
        size = rng.uniform(0.1, 0.25, size=(k_obj, 2))
        pos = rng.uniform(0.0, 0.6, size=(k_obj, 2))
        vel = rng.normal(0, 0.03, size=(k_obj, 2))
        alive = rng.random((T, k_obj)) > 0.15  # GT dropouts: disappear and reappear
        lost = rng.random(k_obj) < 0.2  # objects the tracker (almost) never finds
        pred_id = np.arange(k_obj) + 100 + rng.integers(0, 5)
        next_id = pred_id.max() + 1
        for t in range(T):
            if rng.random() < 0.15 and k_obj >= 2:  # ID swap between two tracks from now on
                i, j = rng.choice(k_obj, 2, replace=False)
                pred_id[[i, j]] = pred_id[[j, i]]
            if rng.random() < 0.1:  # re-identification under a fresh ID
                pred_id[rng.integers(k_obj)] = next_id
                next_id += 1
            p = pos + vel * t
            boxes = np.concatenate([p, p + size], axis=1)
            gslots = rng.permutation(K)[:k_obj]
            pslots = rng.permutation(N)
            n = 0
            for o in range(k_obj):
                if alive[t, o]:
                    gb[b, t, gslots[o]] = boxes[o]
                    gi[b, t, gslots[o]] = o + 7  # GT IDs need not start at 0
                # misses, and sometimes a "ghost" prediction of an object that is absent in the GT
                if rng.random() < (0.1 if lost[o] else 0.85) and (alive[t, o] or rng.random() < 0.3):
                    jit = rng.normal(0, 0.1, size=4) * np.r_[size[o], size[o]]
                    pb[b, t, pslots[n]] = boxes[o] + jit
                    pi[b, t, pslots[n]] = pred_id[o]
                    n += 1
            for _ in range(rng.integers(0, n_fp + 1)):  # false positives
                xy = rng.uniform(0, 0.8, size=2)
                pb[b, t, pslots[n]] = np.r_[xy, xy + rng.uniform(0.05, 0.2, size=2)]
                pi[b, t, pslots[n]] = next_id
                next_id += 1
                n += 1
    return pb, pi, gb, gi


@pytest.mark.parametrize("seed", range(6))
def test_random_sequences_match_motmetrics(seed):
    pb, pi, gb, gi = random_sequences(seed)
    got = assert_matches_oracle(pb, pi, gb, gi)
    assert got["num_gt"] > 0


def test_random_cases_exercise_everything():
    totals = {"id_switches": 0, "misses": 0, "false_positives": 0, "mostly_lost": 0}
    for seed in range(6):
        got = ours(*random_sequences(seed))
        for k in totals:
            totals[k] += got[k]
    assert all(v > 0 for v in totals.values()), totals


def test_batching_is_additive():
    pb, pi, gb, gi = random_sequences(11, B=4)
    whole = MOTMetrics()
    whole.update(*map(torch.as_tensor, (pb, pi, gb, gi)))
    parts = MOTMetrics()
    for b in range(4):
        parts.update(*(torch.as_tensor(x[b : b + 1]) for x in (pb, pi, gb, gi)))
    single = MOTMetrics()  # one sequence may come without the batch dimension
    for b in range(4):
        single.update(*(torch.as_tensor(x[b]) for x in (pb, pi, gb, gi)))
    a, c, d = whole.compute(), parts.compute(), single.compute()
    for k in a:
        torch.testing.assert_close(a[k], c[k], equal_nan=True)
        torch.testing.assert_close(a[k], d[k], equal_nan=True)


# ---------------------------------------------------------------------------------------------------------------
# counting


def test_counting_metrics():
    m = CountingMetrics()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(m.compute()["count_acc"]))
    m.update(torch.tensor([[1, 2, 3], [0, 0, 5]]), torch.tensor([[1, 2, 4], [0, 1, 5]]))
    m.update(torch.tensor([[2.4]]), torch.tensor([[2]]))
    out = m.compute()
    assert float(out["count_acc"]) == pytest.approx(5 / 7)
    assert float(out["count_mae"]) == pytest.approx(2.4 / 7)
    with pytest.raises(ValueError):
        m.update(torch.zeros(2, 3), torch.zeros(3, 2))


# ---------------------------------------------------------------------------------------------------------------
# DDP: two gloo processes, each with half of the sequences, reduce to the single-process result


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, port, data, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        pb, pi, gb, gi, pc, gc = (x[rank::2] for x in data)
        mot, cnt = MOTMetrics(), CountingMetrics()
        mot.update(pb, pi, gb, gi)
        cnt.update(pc, gc)
        torch.save({**mot.compute(), **cnt.compute()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_reduction_equals_single_process(tmp_path, monkeypatch):
    import torch.multiprocessing as tmp_mp

    # the spawned workers import this module by name (with its parent's sys.path), under any import mode
    here = Path(__file__).resolve().parent
    monkeypatch.syspath_prepend(str(here.parent))
    monkeypatch.syspath_prepend(str(here))

    pb, pi, gb, gi = (torch.as_tensor(x) for x in random_sequences(3, B=6))
    gc = (gi >= 0).sum(-1)
    pc = (pi >= 0).sum(-1)
    data = (pb, pi, gb, gi, pc, gc)
    tmp_mp.spawn(_ddp_worker, args=(_free_port(), data, str(tmp_path)), nprocs=2, join=True)

    mot, cnt = MOTMetrics(), CountingMetrics()
    mot.update(pb, pi, gb, gi)
    cnt.update(pc, gc)
    want = {**mot.compute(), **cnt.compute()}
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], equal_nan=True, msg=k)
    # and each half alone differs from the whole (the reduction really happened)
    half = MOTMetrics()
    half.update(*(x[0::2] for x in data[:4]))
    assert float(half.compute()["num_gt"]) < float(want["num_gt"])


def _boxes(rows: list[list[float]], n: int) -> np.ndarray:
    out = np.zeros((n, 4), np.float32)
    out[: len(rows)] = rows
    return out


def test_error_breakdown_classifies_each_miss_and_false_positive():
    from scalor.metrics import ErrorBreakdown

    # frame 0: A, B touching (one unmatched prediction draws both), C matched, F overlapping C (its centre lies in
    # C's matched box), D hidden behind others, E with nothing near it; frame 1: C alone, matched
    gt0 = [[0, 0, .1, .1], [.1, 0, .2, .1], [.5, .5, .6, .6], [.8, .8, .9, .9], [.3, .3, .4, .4], [.52, .52, .58, .58]]
    pred0 = [[0, 0, .21, .1], [.5, .5, .6, .6], [.7, .1, .8, .2]]
    gt_boxes = torch.from_numpy(np.stack([_boxes(gt0, 6), _boxes([gt0[2]], 6)]))[None]
    gt_ids = torch.tensor([[[0, 1, 2, 3, 4, 5], [2, -1, -1, -1, -1, -1]]])
    pred_boxes = torch.from_numpy(np.stack([_boxes(pred0, 3), _boxes([pred0[1]], 3)]))[None]
    pred_ids = torch.tensor([[[7, 8, 9], [8, -1, -1]]])
    hidden = torch.zeros(1, 2, 6)
    hidden[0, 0, 3] = 0.6

    metric = ErrorBreakdown()
    metric.update(pred_boxes, pred_ids, gt_boxes, gt_ids, hidden)
    got = {k: int(v) for k, v in metric.compute().items()}
    assert got["misses/hidden"] == 1 and got["misses/in_matched"] == 1 and got["misses/in_unmatched"] == 2
    assert got["misses/free"] == 1 and got["misses"] == 5
    assert got["false_positives/merge"] == 1 and got["false_positives/empty"] == 1
    assert got["false_positives/one"] == 0 and got["false_positives"] == 2
    assert got["frames"] == 2 and got["frames/exact"] == 1 and got["frames/under"] == 1
    assert got["frames/under_hidden"] == 1 and got["frames/under_other"] == 0 and got["frames/over"] == 0
    assert got["by_gt/6/frames"] == 1 and got["by_gt/6/under"] == 1 and got["by_gt/1/frames"] == 1
    assert "by_gt/2/frames" not in got

    metric.reset()
    metric.update(pred_boxes, pred_ids, gt_boxes, gt_ids)  # without hidden fractions D has nothing near it
    got = {k: int(v) for k, v in metric.compute().items()}
    assert got["misses/hidden"] == 0 and got["misses/free"] == 2 and got["frames/under_first"] == 1


def test_error_breakdown_separates_first_frame_under_counts_carried_on():
    from scalor.metrics import ErrorBreakdown

    # two objects in four frames; the prediction finds one in frames 0, 1 and 3 and both in frame 2
    gt = _boxes([[0, 0, .1, .1], [.5, .5, .6, .6]], 2)
    gt_boxes = torch.from_numpy(np.stack([gt] * 4))[None]
    gt_ids = torch.tensor([[[0, 1]] * 4])
    pred_ids = torch.tensor([[[3, -1], [3, -1], [3, 4], [3, -1]]])
    metric = ErrorBreakdown()
    metric.update(gt_boxes, pred_ids, gt_boxes, gt_ids)
    got = {k: int(v) for k, v in metric.compute().items()}
    assert got["frames/under"] == 3 and got["frames/under_first"] == 1
    assert got["frames/under_carried"] == 1 and got["frames/under_other"] == 1


def test_error_breakdown_counts_frames_with_touching_objects():
    from scalor.metrics import ErrorBreakdown

    # 64 px frames, two objects: frame 0 overlapping, frame 1 1.5 px apart (touching), frame 2 2.5 px apart,
    # frame 3 apart but diagonally 1.5 px along x and y (about 2.1 px: not touching); one prediction in frames 0-2
    px = lambda rows: _boxes([[v / 64 for v in r] for r in rows], 2)  # noqa: E731
    gt = np.stack([px([[0, 0, 10, 10], [8, 0, 18, 10]]), px([[0, 0, 10, 10], [11.5, 0, 21.5, 10]]),
                   px([[0, 0, 10, 10], [12.5, 0, 22.5, 10]]), px([[0, 0, 10, 10], [11.5, 11.5, 21.5, 21.5]])])
    gt_boxes, gt_ids = torch.from_numpy(gt)[None], torch.tensor([[[0, 1]] * 4])
    pred_ids = torch.tensor([[[3, -1], [3, -1], [3, -1], [3, 4]]])
    metric = ErrorBreakdown()
    metric.update(gt_boxes, pred_ids, gt_boxes, gt_ids, frame_size=(64, 64))
    got = {k: int(v) for k, v in metric.compute().items()}
    assert got["touching/frames"] == 2 and got["touching/under"] == 2 and got["touching/over"] == 0
    assert got["touching/under_first"] == 1 and got["touching/under_carried"] == 1
    assert got["frames/under_carried"] == 2 and got["touching/under_hidden"] == got["touching/under_other"] == 0
    assert got["by_gt/2/touching"] == 2 and got["by_gt/2/touching_under"] == 2
    # the gap is in pixels: on 16 px frames all four pairs lie less than 2 px apart
    metric.reset()
    metric.update(gt_boxes, pred_ids, gt_boxes, gt_ids, frame_size=(16, 16))
    assert int(metric.compute()["touching/frames"]) == 4
    # without a frame size nothing is said about touching objects
    metric.reset()
    metric.update(gt_boxes, pred_ids, gt_boxes, gt_ids)
    got = metric.compute()
    assert not any(k.startswith("touching/") or k.endswith("/touching") for k in got) and int(got["frames"]) == 4


def test_error_breakdown_keeps_large_counts_apart():
    """Dense scenes (80-100 objects): each frame's ground-truth count is its own row, not one capped bucket."""
    from scalor.metrics import ErrorBreakdown

    grid = np.stack(np.meshgrid(np.arange(10), np.arange(10)), -1).reshape(-1, 2) / 10.0
    boxes = np.concatenate([grid, grid + 0.05], -1)  # 100 disjoint boxes
    gt_boxes = torch.from_numpy(np.stack([boxes, boxes]))[None]
    gt_ids = torch.from_numpy(np.stack([np.arange(100), np.where(np.arange(100) < 90, np.arange(100), -1)]))[None]
    metric = ErrorBreakdown()
    metric.update(gt_boxes, gt_ids, gt_boxes, gt_ids)
    got = {k: int(v) for k, v in metric.compute().items()}
    assert got["by_gt/100/frames"] == 1 and got["by_gt/90/frames"] == 1 and got["frames/exact"] == 2


def test_error_breakdown_totals_equal_the_tracking_metrics():
    from scalor.metrics import ErrorBreakdown

    rng = np.random.default_rng(3)
    b, t, m, n = 4, 6, 5, 7
    xy = rng.uniform(0, 0.8, (b, t, m, 2))
    gt_boxes = torch.from_numpy(np.concatenate([xy, xy + rng.uniform(0.05, 0.2, (b, t, m, 2))], -1))
    gt_ids = torch.from_numpy(np.where(rng.random((b, t, m)) < 0.8, np.arange(m), -1))
    pred_boxes = torch.cat([gt_boxes, gt_boxes[:, :, :2]], 2) + torch.from_numpy(rng.normal(0, 0.03, (b, t, n, 4)))
    pred_ids = torch.from_numpy(np.where(rng.random((b, t, n)) < 0.7, np.arange(n) + 10, -1))
    errors, mot = ErrorBreakdown(), MOTMetrics()
    errors.update(pred_boxes, pred_ids, gt_boxes, gt_ids)
    mot.update(pred_boxes, pred_ids, gt_boxes, gt_ids)
    e, ref = errors.compute(), mot.compute()
    assert int(e["misses"]) == int(ref["misses"]) > 0
    assert int(e["false_positives"]) == int(ref["false_positives"]) > 0
    assert int(e["frames"]) == b * t
