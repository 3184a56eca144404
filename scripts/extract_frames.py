"""Write a video's frames as images named by their 0-based frame number (0.png, 1.png, ...), the layout that
`data=grand_central` reads.

    python scripts/extract_frames.py /usr/share/doc/opencv-doc/examples/data/vtest.avi data/vtest_frames
    python run.py experiment=grand_central data.root=data/vtest_frames data.frame_skip=3

Any video OpenCV can read. --ext jpg writes JPEG (quality 95) instead of PNG; --skip K keeps every K-th frame
(still numbered by their place in the video). Stops with one error line, exit 2, for an unreadable video or an
output folder that already holds images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scalor.datamodules.base import IMAGE_EXTS  # noqa: E402
from scalor.datamodules.video import footage_frames  # noqa: E402
from scalor.errors import ScalorError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--ext", choices=("png", "jpg"), default="png")
    parser.add_argument("--skip", type=int, default=1)
    args = parser.parse_args()
    if args.skip < 1:
        print(f"error: --skip {args.skip} must be at least 1.", file=sys.stderr)
        return 2
    if args.out.is_dir() and any(p.suffix.lower() in IMAGE_EXTS for p in args.out.iterdir()):
        print(f"error: {args.out} already holds images; pass an empty or new folder.", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if args.ext == "jpg" else []
    n = 0
    try:
        for k, img in enumerate(footage_frames(args.video, args.skip)):
            path = args.out / f"{k * args.skip}.{args.ext}"
            if not cv2.imwrite(str(path), img[..., ::-1], params):
                print(f"error: could not write {path}; check the folder's permissions and free space.",
                      file=sys.stderr)
                return 2
            n += 1
    except ScalorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{n} frames written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
