"""Scoring a ``tracks.txt`` against a ground-truth ``gt.txt``, both MOTChallenge text files in the same pixels.

Only the frames the ground truth annotates count (a file that annotates every 10th frame is scored on those), so
a frame without ground-truth rows is not annotated, not empty. The metrics are the framework's own
(:class:`~scalor.metrics.tracking.MOTMetrics`, equal to py-motmetrics at IoU >= 0.5, and
:class:`~scalor.metrics.counting.CountingMetrics`), over the annotated frames as one sequence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scalor.errors import DataError
from scalor.metrics.counting import CountingMetrics
from scalor.metrics.tracking import MOTMetrics

__all__ = ["read_mot", "score_tracks"]


def read_mot(path: str | Path, what: str = "tracks") -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """frame -> (ids (n,) int64, boxes (n, 4) float64 xyxy pixels) of a MOTChallenge file
    (``frame,id,x,y,w,h,conf,...``); rows with conf 0 (ignored in MOTChallenge ground truth) are left out."""
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise DataError(f"the {what} file {path} does not exist; pass the path of a MOTChallenge text file.")
    rows: dict[int, list] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(" ", "").split(",")
        try:
            frame, oid, x, y, w, h = int(float(parts[0])), int(float(parts[1])), *map(float, parts[2:6])
            conf = float(parts[6]) if len(parts) > 6 else 1.0
        except (ValueError, IndexError):
            raise DataError(f"line {number} of {path} is not a MOTChallenge row (frame,id,x,y,w,h,conf,...): "
                            f"{line.strip()[:60]!r}; fix or remove it.") from None
        if conf != 0:
            rows.setdefault(frame, []).append((oid, x, y, x + w, y + h))
    out = {}
    for frame, items in rows.items():
        a = np.array(items, np.float64)
        out[frame] = (a[:, 0].astype(np.int64), a[:, 1:])
    return out


def _padded(per_frame: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(T, n_max, 4) boxes and (T, n_max) ids, -1 for padding, of a list of (ids, boxes) per frame."""
    n = max([len(ids) for ids, _ in per_frame] + [1])
    boxes, ids = np.zeros((len(per_frame), n, 4)), -np.ones((len(per_frame), n), np.int64)
    for t, (i, b) in enumerate(per_frame):
        boxes[t, :len(i)], ids[t, :len(i)] = b, i
    return boxes, ids


def score_tracks(tracks: str | Path, groundtruth: str | Path, tracked: set[int] | None = None) -> dict[str, float]:
    """MOT (mota, motp, idf1, id_switches, ...) and counting (count_acc, count_mae) metrics of ``tracks`` on the
    frames ``groundtruth`` annotates (of those, only the ``tracked`` frame numbers where given: footage read with a
    frame skip), plus ``annotated_frames`` (the frames scored)."""
    gt = read_mot(groundtruth, "ground-truth")
    if not gt:
        raise DataError(f"the ground-truth file {groundtruth} has no rows; pass a MOTChallenge gt.txt.")
    pred = read_mot(tracks, "tracks")
    frames = sorted(f for f in gt if tracked is None or f in tracked)
    if not frames:
        raise DataError(f"no frame that {groundtruth} annotates was tracked; track every frame (data.frame_skip=1) "
                        "or one frame skip that meets the annotated frames.")
    empty = (np.zeros(0, np.int64), np.zeros((0, 4)))
    gb, gi = _padded([gt[f] for f in frames])
    pb, pi = _padded([pred.get(f, empty) for f in frames])
    mot, counting = MOTMetrics(), CountingMetrics()
    mot.update(pb, pi, gb, gi)
    counting.update(np.array([len(pred.get(f, empty)[0]) for f in frames]),
                    np.array([len(gt[f][0]) for f in frames]))
    metrics = {k: float(v) for k, v in {**mot.compute(), **counting.compute()}.items()}
    metrics["annotated_frames"] = float(len(frames))
    metrics.pop("num_frames", None)
    return metrics
