"""Draft person boxes for a static-camera video, as a MOTChallenge file to be corrected by eye.

    python scripts/gt_proposals.py --out /tmp/vtest_draft.txt       # OpenCV's vtest.avi, every 10th frame
    python scripts/gt_proposals.py --video clip.avi --out draft.txt --every 10

Only a starting point for hand annotation (groundtruth/vtest/README.md): the boxes are foreground blobs, not
people, so merged pairs, split bodies, shadows and people hidden behind others are expected and fixed by eye.

Method:
1. Background: the per-pixel median of every `--bg-step`-th frame of the whole video (a static camera; people
   who stand still for most of the clip can fade into it).
2. Foreground of each annotated frame (frames 1, 1 + every, 1 + 2 every, ... in 1-based numbering): the largest
   per-channel absolute difference to the background above `--threshold`, minus pixels that look like shadow
   (darker than the background by a bounded ratio with nearly the same colour).
3. Morphology (open, then a tall close that joins head, body and legs), connected components, boxes of at least
   `--min-height` pixels high and `--min-area` foreground pixels.
4. Tracks: boxes of consecutive annotated frames are matched by the Hungarian method
   (scipy.optimize.linear_sum_assignment) on 1 - IoU plus the centre distance over `--max-dist`, gated at
   `--max-dist` pixels; a track missed in up to `--max-gap` annotated frames can still be continued.
Rows: `frame,id,x,y,w,h,1,-1,-1,-1` with 1-based video frame numbers, sorted by frame then id.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

DEFAULT_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
MISSING_VIDEO = "error: video not found: {} (OpenCV's sample vtest.avi comes with `apt-get install opencv-doc`)"


def read_frames(video: Path, every: int, bg_step: int) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """The annotated frames by 1-based number, and the median background of every bg_step-th frame."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise OSError(f"OpenCV cannot read {video}")
    keep, samples, n = {}, [], 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n += 1
        if (n - 1) % every == 0:
            keep[n] = frame
        if (n - 1) % bg_step == 0:
            samples.append(frame)
    cap.release()
    if not keep:
        raise OSError(f"no frames decoded from {video}")
    stack = np.stack(samples)
    background = np.empty_like(stack[0])
    for r0 in range(0, stack.shape[1], 64):  # row bands keep the median's temporary arrays small
        background[r0:r0 + 64] = np.median(stack[:, r0:r0 + 64], axis=0).astype(np.uint8)
    return keep, background


def foreground(frame: np.ndarray, background: np.ndarray, threshold: int) -> np.ndarray:
    f, b = frame.astype(np.int16), background.astype(np.int16)
    mask = np.abs(f - b).max(axis=2) > threshold
    # shadow: darker than the background by a bounded ratio, with nearly the same chromaticity
    fs, bs = f.sum(axis=2) + 1, b.sum(axis=2) + 1
    ratio = fs / bs
    chroma = np.abs(f / fs[..., None] - b / bs[..., None]).max(axis=2)
    shadow = (ratio > 0.45) & (ratio < 0.9) & (chroma < 0.035)
    return ((mask & ~shadow) * 255).astype(np.uint8)


def boxes_of(mask: np.ndarray, min_height: int, min_area: int) -> list[tuple[int, int, int, int]]:
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 17)))
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    out = []
    for x, y, w, h, area in stats[1:n]:
        if h >= min_height and area >= min_area:
            out.append((int(x), int(y), int(w), int(h)))
    return out


def iou(a, b) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def link(detections: dict[int, list], max_dist: float, max_gap: int) -> list[tuple[int, int, tuple]]:
    """(frame, id, box) rows: per-frame boxes chained into tracks by Hungarian matching."""
    rows, tracks, next_id = [], [], 1  # track: [id, last box, frames missed]
    for step, frame in enumerate(sorted(detections)):
        dets = detections[frame]
        cost = np.full((len(tracks), len(dets)), 1e6)
        for i, (_, last, _) in enumerate(tracks):
            cl = (last[0] + last[2] / 2, last[1] + last[3] / 2)
            for j, d in enumerate(dets):
                dist = np.hypot(cl[0] - d[0] - d[2] / 2, cl[1] - d[1] - d[3] / 2)
                if dist <= max_dist:
                    cost[i, j] = 1.0 - iou(last, d) + dist / max_dist
        matched = set()
        if tracks and dets:
            for i, j in zip(*linear_sum_assignment(cost)):
                if cost[i, j] < 1e6:
                    tracks[i][1], tracks[i][2] = dets[j], -1
                    matched.add(j)
                    rows.append((frame, tracks[i][0], dets[j]))
        for t in tracks:
            t[2] += 1
        tracks = [t for t in tracks if t[2] <= max_gap]
        for j, d in enumerate(dets):
            if j not in matched:
                tracks.append([next_id, d, 0])
                rows.append((frame, next_id, d))
                next_id += 1
    return sorted(rows, key=lambda r: (r[0], r[1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="input video (default: %(default)s)")
    ap.add_argument("--out", type=Path, required=True, help="draft MOT file to write")
    ap.add_argument("--every", type=int, default=10, help="annotate frames 1, 1+every, ... (default: %(default)s)")
    ap.add_argument("--bg-step", type=int, default=5, help="median background of every n-th frame (%(default)s)")
    ap.add_argument("--threshold", type=int, default=30, help="foreground colour difference (%(default)s)")
    ap.add_argument("--min-height", type=int, default=30, help="smallest box height in pixels (%(default)s)")
    ap.add_argument("--min-area", type=int, default=250, help="fewest foreground pixels of a box (%(default)s)")
    ap.add_argument("--max-dist", type=float, default=90.0,
                    help="largest centre move between annotated frames, pixels (%(default)s)")
    ap.add_argument("--max-gap", type=int, default=2, help="annotated frames a track may be missed (%(default)s)")
    args = ap.parse_args(argv)
    if not args.video.is_file():
        print(MISSING_VIDEO.format(args.video), file=sys.stderr)
        return 2
    if args.every < 1 or args.bg_step < 1:
        ap.error("--every and --bg-step must be at least 1")
    frames, background = read_frames(args.video, args.every, args.bg_step)
    detections = {n: boxes_of(foreground(f, background, args.threshold), args.min_height, args.min_area)
                  for n, f in frames.items()}
    rows = link(detections, args.max_dist, args.max_gap)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as f:
        for frame, tid, (x, y, w, h) in rows:
            f.write(f"{frame},{tid},{x},{y},{w},{h},1,-1,-1,-1\n")
    print(f"{args.out}: {len(rows)} boxes, {len({r[1] for r in rows})} ids, {len(frames)} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
