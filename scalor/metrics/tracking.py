"""Multi-object tracking metrics (CLEAR MOT and identity measures) as a ``torchmetrics.Metric``.

The per-frame matching follows py-motmetrics' ``MOTAccumulator`` with distance ``1 - IoU`` and a
maximum distance of 0.5 (a ground-truth box and a predicted box can match only when IoU >= 0.5):

1. a GT object keeps the prediction it was last matched to (in any earlier frame of the sequence)
   if that prediction is present and still valid (IoU >= 0.5);
2. the remaining GT objects and predictions are assigned by a minimum-cost (Hungarian) assignment
   that first maximises the number of valid pairs, then minimises the summed distance;
3. a match whose GT object was matched earlier to a different prediction is an ID switch (it still
   counts as a detection, as in py-motmetrics);
4. unmatched GT objects are misses, unmatched predictions are false positives.

IDF1 uses a global one-to-one matching of GT and predicted identities per sequence that maximises
the number of frames in which the pair overlaps with IoU >= 0.5 (py-motmetrics' ``id_global_assignment``).

Every statistic is accumulated as a sum over sequences, so the metric reduces exactly under DDP.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric

__all__ = ["MOTMetrics", "as_numpy", "box_iou_np", "match_sequence"]

MAX_DISTANCE = 0.5  # distance = 1 - IoU; pairs farther apart than this cannot match


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (x1, y1, x2, y2) boxes: a (..., M, 4), b (..., N, 4) -> (..., M, N) float64; 0 where union is 0."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ax1, ay1, ax2, ay2 = (a[..., :, None, k] for k in range(4))
    bx1, by1, bx2, by2 = (b[..., None, :, k] for k in range(4))
    iw = np.clip(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0.0, None)
    ih = np.clip(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0.0, None)
    inter = iw * ih
    area_a = np.clip(ax2 - ax1, 0.0, None) * np.clip(ay2 - ay1, 0.0, None)
    area_b = np.clip(bx2 - bx1, 0.0, None) * np.clip(by2 - by1, 0.0, None)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def as_numpy(x, dtype) -> np.ndarray:
    """A tensor (any device) or array-like as a NumPy array of ``dtype`` (np.float64 or np.int64)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.double() if dtype == np.float64 else x.long()
        return x.numpy()
    return np.asarray(x, dtype=dtype)


def _assign(dist: np.ndarray) -> list[tuple[int, int]]:
    """Min-cost assignment on dist (M, N) with NaN = forbidden; returns the valid pairs only.

    Forbidden pairs get a cost so large that the solver first maximises the number of valid pairs.
    """
    valid = np.isfinite(dist)
    if not valid.any():
        return []
    c = np.abs(dist[valid]).max() + 1.0
    large = 2.0 * min(dist.shape) * c + 1.0
    rows, cols = linear_sum_assignment(np.where(valid, dist, large))
    return [(int(i), int(j)) for i, j in zip(rows, cols) if valid[i, j]]


def _check_unique(ids: np.ndarray, what: str, t: int) -> None:
    if ids.size > 1 and np.unique(ids).size != ids.size:
        raise ValueError(
            f"{what} contains a repeated ID in frame {t} ({ids.tolist()}); IDs must be unique within a frame."
        )


def match_sequence(
    pred_boxes: np.ndarray, pred_ids: np.ndarray, gt_boxes: np.ndarray, gt_ids: np.ndarray,
    record: list | None = None,
) -> dict[str, float]:
    """Match one sequence: pred (T, N, 4), (T, N); gt (T, M, 4), (T, M); negative IDs are ignored.

    Returns the sums this sequence contributes: num_gt, num_pred, num_detections (matches including
    switches), id_switches, false_positives, misses, iou_sum (over detections), num_gt_tracks,
    mostly_tracked, partially_tracked, mostly_lost, idtp. A list passed as ``record`` receives, per frame,
    the matched slots as a pair of bool arrays (gt (M,), pred (N,)).
    """
    T = gt_ids.shape[0]
    dist_all = 1.0 - box_iou_np(gt_boxes, pred_boxes)  # (T, M, N)
    last_match: dict[int, int] = {}  # GT id -> prediction id it was last matched to
    gt_frames: dict[int, int] = {}  # GT id -> frames present
    gt_tracked: dict[int, int] = {}  # GT id -> frames matched (incl. switches)
    pred_frames: dict[int, int] = {}
    pair_frames: dict[tuple[int, int], int] = {}  # (gt id, pred id) -> frames with IoU >= 0.5
    n_det = n_sw = n_fp = n_miss = n_gt = n_pred = 0
    iou_sum = 0.0

    for t in range(T):
        gsel = np.flatnonzero(gt_ids[t] >= 0)
        psel = np.flatnonzero(pred_ids[t] >= 0)
        oids = gt_ids[t, gsel]
        hids = pred_ids[t, psel]
        _check_unique(oids, "gt_ids", t)
        _check_unique(hids, "pred_ids", t)
        no, nh = len(oids), len(hids)
        n_gt += no
        n_pred += nh
        for o in oids.tolist():
            gt_frames[o] = gt_frames.get(o, 0) + 1
        for h in hids.tolist():
            pred_frames[h] = pred_frames.get(h, 0) + 1
        if no == 0 or nh == 0:
            n_miss += no
            n_fp += nh
            if record is not None:
                record.append((np.zeros(gt_ids.shape[1], bool), np.zeros(pred_ids.shape[1], bool)))
            continue

        dist = dist_all[t][np.ix_(gsel, psel)].copy()
        dist[~(dist <= MAX_DISTANCE)] = np.nan
        vi, vj = np.nonzero(np.isfinite(dist))
        for i, j in zip(vi.tolist(), vj.tolist()):
            key = (int(oids[i]), int(hids[j]))
            pair_frames[key] = pair_frames.get(key, 0) + 1

        o_done = np.zeros(no, dtype=bool)
        h_done = np.zeros(nh, dtype=bool)
        hid_pos = {int(h): j for j, h in enumerate(hids.tolist())}
        matched: list[tuple[int, int]] = []

        # 1. keep last matches that are still valid
        for i, o in enumerate(oids.tolist()):
            h = last_match.get(o)
            if h is None:
                continue
            j = hid_pos.get(h)
            if j is None or h_done[j] or not np.isfinite(dist[i, j]):
                continue
            o_done[i] = h_done[j] = True
            matched.append((i, j))

        # 2. assign the rest; a changed partner is an ID switch
        dist[o_done, :] = np.nan
        dist[:, h_done] = np.nan
        for i, j in _assign(dist):
            o, h = int(oids[i]), int(hids[j])
            if o in last_match and last_match[o] != h:
                n_sw += 1
            last_match[o] = h
            o_done[i] = h_done[j] = True
            matched.append((i, j))

        for i, j in matched:
            iou_sum += 1.0 - float(dist_all[t, gsel[i], psel[j]])
            o = int(oids[i])
            gt_tracked[o] = gt_tracked.get(o, 0) + 1
        n_det += len(matched)
        n_miss += int((~o_done).sum())
        n_fp += int((~h_done).sum())
        if record is not None:
            gt_hit, pred_hit = np.zeros(gt_ids.shape[1], bool), np.zeros(pred_ids.shape[1], bool)
            gt_hit[gsel[o_done]], pred_hit[psel[h_done]] = True, True
            record.append((gt_hit, pred_hit))

    ratios = [gt_tracked.get(o, 0) / n for o, n in gt_frames.items()]
    mostly_tracked = sum(r >= 0.8 for r in ratios)
    mostly_lost = sum(r < 0.2 for r in ratios)

    # IDF1: one-to-one GT/prediction identities maximising the frames they overlap
    idtp = 0
    if pair_frames:
        go = {o: k for k, o in enumerate(sorted(gt_frames))}
        hp = {h: k for k, h in enumerate(sorted(pred_frames))}
        overlap = np.zeros((len(go), len(hp)))
        for (o, h), n in pair_frames.items():
            overlap[go[o], hp[h]] = n
        r, c = linear_sum_assignment(overlap, maximize=True)
        idtp = int(overlap[r, c].sum())

    return dict(
        num_gt=n_gt,
        num_pred=n_pred,
        num_detections=n_det,
        id_switches=n_sw,
        false_positives=n_fp,
        misses=n_miss,
        iou_sum=iou_sum,
        num_gt_tracks=len(gt_frames),
        mostly_tracked=mostly_tracked,
        partially_tracked=len(ratios) - mostly_tracked - mostly_lost,
        mostly_lost=mostly_lost,
        idtp=idtp,
    )


_COUNT_STATES = (
    "num_gt",
    "num_pred",
    "num_detections",
    "id_switches",
    "false_positives",
    "misses",
    "num_gt_tracks",
    "mostly_tracked",
    "partially_tracked",
    "mostly_lost",
    "idtp",
    "num_sequences",
)


def _div(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


class MOTMetrics(Metric):
    """CLEAR MOT and identity metrics over whole sequences, matching py-motmetrics at IoU >= 0.5.

    ``update(pred_boxes, pred_ids, gt_boxes, gt_ids, pred_presence=None)``:
    pred_boxes (B, T, N, 4) and gt_boxes (B, T, M, 4) normalised (x1, y1, x2, y2); pred_ids (B, T, N) and
    gt_ids (B, T, M) integer, any negative value (-1) marking padding. If ``pred_presence`` (B, T, N) is
    given, a prediction counts only where presence > ``presence_threshold`` (0.5); otherwise every
    prediction with a non-negative ID counts (so a caller may instead set absent IDs to -1). One sequence
    without the batch dimension ((T, N, 4), (T, N), ...) is accepted too. IDs are per sequence (sequences
    never share identities) and must be unique within a frame. Inputs may live on any device; matching
    runs on the CPU in NumPy. Call ``update`` (not ``forward``, which would match every batch twice).

    ``compute()`` returns 0-d float32 tensors: mota, motp (mean IoU of matches, i.e. 1 - py-motmetrics'
    MOTP), idf1, idp, idr, precision, recall, and the counts id_switches, mostly_tracked, partially_tracked,
    mostly_lost, false_positives, misses, num_gt, num_pred, num_detections, num_gt_tracks, num_sequences.
    A ratio whose denominator is zero is NaN: mota, recall with no GT boxes; motp with no matches;
    precision with no predictions; idf1 with neither.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, presence_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.presence_threshold = float(presence_threshold)
        for name in _COUNT_STATES:
            self.add_state(name, default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("iou_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred_boxes, pred_ids, gt_boxes, gt_ids, pred_presence=None) -> None:
        """Add sequences: pred (B, T, N, 4), (B, T, N); gt (B, T, M, 4), (B, T, M); presence (B, T, N) or None."""
        pb = as_numpy(pred_boxes, np.float64)
        pi = as_numpy(pred_ids, np.int64)
        gb = as_numpy(gt_boxes, np.float64)
        gi = as_numpy(gt_ids, np.int64)
        pp = None if pred_presence is None else as_numpy(pred_presence, np.float64)
        if gi.ndim == 2:  # one sequence
            pb, pi, gb, gi = pb[None], pi[None], gb[None], gi[None]
            pp = None if pp is None else pp[None]
        if pb.ndim != 4 or gb.ndim != 4 or pb.shape[-1] != 4 or gb.shape[-1] != 4:
            raise ValueError(
                f"boxes must be (B, T, N, 4); got pred_boxes {pb.shape} and gt_boxes {gb.shape}."
            )
        if pi.shape != pb.shape[:3] or gi.shape != gb.shape[:3] or pb.shape[:2] != gb.shape[:2]:
            raise ValueError(
                f"shapes disagree: pred_boxes {pb.shape}, pred_ids {pi.shape}, gt_boxes {gb.shape}, "
                f"gt_ids {gi.shape}; expected (B, T, N, 4), (B, T, N), (B, T, M, 4), (B, T, M)."
            )
        if pp is not None:
            if pp.shape != pi.shape:
                raise ValueError(f"pred_presence has shape {pp.shape}; expected pred_ids' shape {pi.shape}.")
            pi = np.where(pp > self.presence_threshold, pi, -1)

        totals = dict.fromkeys(_COUNT_STATES, 0)
        iou_sum = 0.0
        for b in range(gi.shape[0]):
            stats = match_sequence(pb[b], pi[b], gb[b], gi[b])
            iou_sum += stats.pop("iou_sum")
            for k, v in stats.items():
                totals[k] += v
            totals["num_sequences"] += 1
        for k, v in totals.items():
            setattr(self, k, getattr(self, k) + v)
        self.iou_sum += iou_sum

    def compute(self) -> dict[str, torch.Tensor]:
        """Return the metrics as a dict of 0-d float32 tensors (see the class docstring)."""
        s = {k: int(getattr(self, k).item()) for k in _COUNT_STATES}
        iou_sum = float(self.iou_sum.item())
        n_gt, n_pred, n_det, idtp = s["num_gt"], s["num_pred"], s["num_detections"], s["idtp"]
        out = dict(
            mota=1.0 - _div(s["misses"] + s["false_positives"] + s["id_switches"], n_gt),
            motp=_div(iou_sum, n_det),
            idf1=_div(2.0 * idtp, n_gt + n_pred),
            idp=_div(idtp, n_pred),
            idr=_div(idtp, n_gt),
            precision=_div(n_det, n_pred),
            recall=_div(n_det, n_gt),
        )
        for k in (
            "id_switches",
            "mostly_tracked",
            "partially_tracked",
            "mostly_lost",
            "false_positives",
            "misses",
            "num_gt",
            "num_pred",
            "num_detections",
            "num_gt_tracks",
            "num_sequences",
        ):
            out[k] = float(s[k])
        return {k: torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in out.items()}
