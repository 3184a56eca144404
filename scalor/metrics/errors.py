"""Where the tracking errors come from, as a ``torchmetrics.Metric`` with sum states (exact under DDP).

Frames, misses and false positives are matched exactly as ``MOTMetrics`` matches them (IoU >= 0.5, the same
per-frame assignment), then classified by geometry:

- a **miss** (ground-truth box without a match) is ``hidden`` when objects in front of it paint over at least
  ``hidden_threshold`` of its pixels (only when ``gt_hidden`` is given), else ``in_matched`` when its centre lies
  inside a predicted box matched to another object (overlapping objects), ``in_unmatched`` when its centre lies
  inside a false positive (typically one object drawing two touching objects), else ``free`` (nothing there);
- a **false positive** is a ``merge`` when two or more ground-truth centres lie inside it, ``one`` with one
  (a misplaced or duplicate box), ``empty`` with none;
- a frame whose predicted count is below the ground truth is ``under`` and, by its likely cause, ``under_hidden``
  (some object at least ``hidden_threshold`` hidden), else ``under_first`` (first frame), else ``under_carried``
  (every earlier frame of the sequence was counted too low as well: a first-frame error carried on), else
  ``under_other``; one above is ``over``. Frames and count errors are also kept per ground-truth count (``by_gt``);
- where the frame size is given, a frame is **touching** when two of its ground-truth boxes overlap or lie less
  than ``touch_gap`` pixels apart: such frames are counted (``touching/frames``, per count ``by_gt/<k>/touching``),
  and so are those of them counted too low or too high, the former also by cause (``touching/under_<cause>``).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from scalor.metrics.tracking import as_numpy, match_sequence

__all__ = ["ErrorBreakdown", "TOUCH_GAP"]

MISS_KINDS = ("hidden", "in_matched", "in_unmatched", "free")
FP_KINDS = ("merge", "one", "empty")
UNDER_CAUSES = ("under_hidden", "under_first", "under_carried", "under_other")
TOUCH_GAP = 2.0  # pixels: two boxes closer than this touch
COUNTS = ("frames", "under", "over")  # per ground-truth count: frames, those counted too low, too high ...
TOUCHING_COUNTS = ("touching", "touching_under", "touching_over")  # ... and the same of the touching frames


def _centres_inside(centres: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """centres (M, 2), boxes (N, 4) as (x1, y1, x2, y2) -> bool (M, N): centre m inside box n."""
    x, y = centres[:, None, 0], centres[:, None, 1]
    return (boxes[None, :, 0] <= x) & (x <= boxes[None, :, 2]) & (boxes[None, :, 1] <= y) & (y <= boxes[None, :, 3])


def _touching(boxes: np.ndarray, gap: float) -> bool:
    """boxes (M, 4) in pixels -> whether two of them overlap or lie less than ``gap`` apart (Euclidean)."""
    lo = np.maximum(boxes[:, None, :2], boxes[None, :, :2])  # (M, M, 2): the larger of the two left/top edges
    hi = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])  # the smaller right/bottom edges
    dist = np.linalg.norm(np.clip(lo - hi, 0.0, None), axis=-1)  # 0 where the boxes overlap
    return bool((dist[np.triu_indices(len(boxes), 1)] < gap).any())


class ErrorBreakdown(Metric):
    """Counts of misses, false positives and count errors by kind (module docstring).

    ``update(pred_boxes, pred_ids, gt_boxes, gt_ids, gt_hidden=None, frame_size=None)``: pred (B, T, N, 4),
    (B, T, N); gt (B, T, M, 4), (B, T, M) as ``MOTMetrics`` takes them (normalised boxes, negative IDs ignored);
    gt_hidden (B, T, M) the hidden fraction of each ground-truth object; frame_size (H, W) in pixels, for the
    touching test. ``compute()`` returns 0-d int64 tensors ``frames``, ``frames/<kind>``, ``misses``,
    ``misses/<kind>``, ``false_positives``, ``false_positives/<kind>`` and, per ground-truth count k present,
    ``by_gt/<k>/frames``, ``by_gt/<k>/under``, ``by_gt/<k>/over``; once a frame size was given, also
    ``touching/frames``, ``touching/under``, ``touching/over``, ``touching/under_<cause>`` and
    ``by_gt/<k>/touching``, ``by_gt/<k>/touching_under``, ``by_gt/<k>/touching_over``.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, hidden_threshold: float = 0.5, max_count: int = 1024, touch_gap: float = TOUCH_GAP,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden_threshold = hidden_threshold
        self.touch_gap = touch_gap
        self.max_count = max_count
        for name, size in (("misses", len(MISS_KINDS)), ("false_positives", len(FP_KINDS)),
                           ("under_causes", len(UNDER_CAUSES)), ("touching_causes", len(UNDER_CAUSES)),
                           ("touch_measured", 1)):
            self.add_state(name, default=torch.zeros(size, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("by_gt", default=torch.zeros(max_count + 1, len(COUNTS + TOUCHING_COUNTS), dtype=torch.int64),
                       dist_reduce_fx="sum")

    def update(self, pred_boxes, pred_ids, gt_boxes, gt_ids, gt_hidden=None, frame_size=None) -> None:
        pb, pi = as_numpy(pred_boxes, np.float64), as_numpy(pred_ids, np.int64)
        gb, gi = as_numpy(gt_boxes, np.float64), as_numpy(gt_ids, np.int64)
        hidden = None if gt_hidden is None else as_numpy(gt_hidden, np.float64)
        scale = None if frame_size is None else np.array([frame_size[1], frame_size[0]] * 2, np.float64)  # W, H
        misses, fps = np.zeros(len(MISS_KINDS), np.int64), np.zeros(len(FP_KINDS), np.int64)
        causes, touching_causes = np.zeros(len(UNDER_CAUSES), np.int64), np.zeros(len(UNDER_CAUSES), np.int64)
        by_gt = np.zeros((self.max_count + 1, len(COUNTS + TOUCHING_COUNTS)), np.int64)
        for b in range(gi.shape[0]):
            record: list = []
            match_sequence(pb[b], pi[b], gb[b], gi[b], record=record)
            under_so_far = True  # every frame so far counted too low
            for t, (gt_hit, pred_hit) in enumerate(record):
                g_on, p_on = gi[b, t] >= 0, pi[b, t] >= 0
                g_box = gb[b, t]
                centres = (g_box[:, :2] + g_box[:, 2:]) / 2
                inside = _centres_inside(centres, pb[b, t]) & g_on[:, None] & p_on[None, :]  # (M, N)
                is_hidden = (np.zeros_like(g_on) if hidden is None
                             else hidden[b, t] >= self.hidden_threshold) & g_on
                for m in np.flatnonzero(g_on & ~gt_hit):
                    kind = ("hidden" if is_hidden[m] else "in_matched" if (inside[m] & pred_hit).any()
                            else "in_unmatched" if inside[m].any() else "free")
                    misses[MISS_KINDS.index(kind)] += 1
                for n in np.flatnonzero(p_on & ~pred_hit):
                    fps[FP_KINDS.index(("empty", "one", "merge")[min(2, int(inside[:, n].sum()))])] += 1
                n_gt, n_pred = int(g_on.sum()), int(p_on.sum())
                touching = scale is not None and _touching(g_box[g_on] * scale, self.touch_gap)
                hits = np.array([1, n_pred < n_gt, n_pred > n_gt], np.int64)  # as COUNTS
                by_gt[min(n_gt, self.max_count)] += np.concatenate([hits, hits * touching])
                if n_pred < n_gt:
                    cause = ("under_hidden" if is_hidden.any() else "under_first" if t == 0
                             else "under_carried" if under_so_far else "under_other")
                    causes[UNDER_CAUSES.index(cause)] += 1
                    touching_causes[UNDER_CAUSES.index(cause)] += touching
                under_so_far &= n_pred < n_gt
        for name, value in (("misses", misses), ("false_positives", fps), ("under_causes", causes),
                            ("touching_causes", touching_causes), ("by_gt", by_gt)):
            state = getattr(self, name)
            state += torch.from_numpy(value).to(state.device)
        self.touch_measured += scale is not None

    def compute(self) -> dict[str, torch.Tensor]:
        frames, under, over = self.by_gt[:, :len(COUNTS)].sum(0)
        out = {"frames": frames, "frames/exact": frames - under - over, "frames/under": under, "frames/over": over,
               "misses": self.misses.sum(), "false_positives": self.false_positives.sum()}
        out.update({f"frames/{cause}": self.under_causes[i] for i, cause in enumerate(UNDER_CAUSES)})
        for name, kinds in (("misses", MISS_KINDS), ("false_positives", FP_KINDS)):
            out.update({f"{name}/{kind}": getattr(self, name)[i] for i, kind in enumerate(kinds)})
        measured = bool(self.touch_measured.item())
        if measured:
            out.update({f"touching/{what}": n for what, n in zip(COUNTS, self.by_gt[:, len(COUNTS):].sum(0))})
            out.update({f"touching/{cause}": self.touching_causes[i] for i, cause in enumerate(UNDER_CAUSES)})
        counts = COUNTS + TOUCHING_COUNTS if measured else COUNTS
        for k in torch.nonzero(self.by_gt[:, 0]).flatten().tolist():
            out.update({f"by_gt/{k}/{what}": self.by_gt[k, i] for i, what in enumerate(counts)})
        return out
