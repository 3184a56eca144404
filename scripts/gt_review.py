"""Draw the boxes and IDs of a MOTChallenge file over its video frames, as PNGs for checking by eye.

    python scripts/gt_review.py --mot groundtruth/vtest/gt.txt --out /tmp/vtest_review
    python scripts/gt_review.py --mot groundtruth/vtest/gt.txt --out /tmp/sheets --sheet 6 --cols 3 --scale 0.5
    python scripts/gt_review.py --mot draft.txt --out /tmp/check --frames 301 311 --grid 50

The frames drawn are those 1-based frame numbers 1, 1 + every, 1 + 2 every, ... up to the video's end (so a
frame with no boxes still shows up), or the ones given with --frames. Rows with confidence 0 (ignored in MOTChallenge
ground truth) are not drawn. Each box gets a colour per ID and its ID
above it; each frame gets its number in the top-left corner. With --sheet N, N frames go side by side in one PNG
(contact sheet, `--cols` per row), named after its first and last frame; otherwise one PNG per frame.
`--grid P` draws faint lines every P pixels (in video pixels, labelled) to read box coordinates off the image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scalor.errors import ScalorError  # noqa: E402
from scalor.metrics.mot_files import read_mot  # noqa: E402

DEFAULT_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
MISSING_VIDEO = "error: video not found: {} (OpenCV's sample vtest.avi comes with `apt-get install opencv-doc`)"


def colour(tid: int) -> tuple[int, int, int]:
    hue = (tid * 47) % 180  # spread neighbouring IDs over the hue circle
    bgr = cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(int(c) for c in bgr)


def label(img, text, org, col, scale=0.5, thick=1):
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, col, thick, cv2.LINE_AA)


def draw(frame: np.ndarray, number: int, boxes, scale: float, grid: int) -> np.ndarray:
    img = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale != 1 else frame.copy()
    h, w = img.shape[:2]
    if grid:
        for v in range(grid, max(frame.shape[:2]), grid):
            p = int(round(v * scale))
            if p < w:
                cv2.line(img, (p, 0), (p, h - 1), (200, 200, 200), 1)
                label(img, str(v), (p + 2, h - 4), (255, 255, 255), 0.35)
            if p < h:
                cv2.line(img, (0, p), (w - 1, p), (200, 200, 200), 1)
                label(img, str(v), (2, p - 2), (255, 255, 255), 0.35)
    for tid, (x0, y0, x1, y1) in boxes:
        col = colour(tid)
        p0 = (int(round(x0 * scale)), int(round(y0 * scale)))
        p1 = (int(round(x1 * scale)) - 1, int(round(y1 * scale)) - 1)
        cv2.rectangle(img, p0, p1, col, 1)
        label(img, str(tid), (p0[0], max(12, p0[1] - 3)), col, 0.45)
    label(img, f"frame {number}", (6, 20), (255, 255, 255), 0.6, 2)
    return img


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mot", type=Path, required=True, help="MOT file: frame,id,x,y,w,h,... (1-based frames)")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="video (default: %(default)s)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    ap.add_argument("--every", type=int, default=10, help="draw frames 1, 1+every, ... (default: %(default)s)")
    ap.add_argument("--frames", type=int, nargs="+", help="draw only these 1-based frame numbers")
    ap.add_argument("--scale", type=float, default=1.0, help="resize factor of each frame (default: %(default)s)")
    ap.add_argument("--sheet", type=int, default=1, help="frames per PNG (default: %(default)s)")
    ap.add_argument("--cols", type=int, default=2, help="frames per row of a sheet (default: %(default)s)")
    ap.add_argument("--grid", type=int, default=0, help="coordinate lines every this many pixels (0: none)")
    args = ap.parse_args(argv)
    if not args.video.is_file():
        print(MISSING_VIDEO.format(args.video), file=sys.stderr)
        return 2
    try:
        rows = read_mot(args.mot, "MOT")
        boxes = {frame: sorted(zip(ids.tolist(), xyxy.tolist())) for frame, (ids, xyxy) in rows.items()}
    except ScalorError as err:  # a missing or malformed file
        print(f"error: {err}", file=sys.stderr)
        return 2
    wanted = set(args.frames) if args.frames else None
    args.out.mkdir(parents=True, exist_ok=True)

    tiles, written = [], []

    def flush():
        if not tiles:
            return
        cols = min(args.cols, len(tiles))
        th, tw = tiles[0][1].shape[:2]
        rows = -(-len(tiles) // cols)
        sheet = np.zeros((rows * th, cols * tw, 3), np.uint8)
        for k, (_, t) in enumerate(tiles):
            r, c = divmod(k, cols)
            sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = t
        first, last = tiles[0][0], tiles[-1][0]
        name = f"frame_{first:04d}.png" if first == last else f"frames_{first:04d}-{last:04d}.png"
        cv2.imwrite(str(args.out / name), sheet)
        written.append(name)
        tiles.clear()

    cap = cv2.VideoCapture(str(args.video))
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n += 1
        if (wanted is not None and n not in wanted) or (wanted is None and (n - 1) % args.every):
            continue
        tiles.append((n, draw(frame, n, boxes.get(n, []), args.scale, args.grid)))
        if len(tiles) == args.sheet:
            flush()
    flush()
    cap.release()
    print(f"{args.out}: {len(written)} PNGs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
