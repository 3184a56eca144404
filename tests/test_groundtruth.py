"""The hand-checked person boxes of OpenCV's vtest.avi (groundtruth/vtest/) and the two scripts that made and
review them, on a generated clip (the video itself is not needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT

GT = ROOT / "groundtruth" / "vtest" / "gt.txt"


def test_vtest_ground_truth_is_well_formed():
    rows = np.loadtxt(GT, delimiter=",", ndmin=2)
    assert rows.shape[1] == 10 and len(rows) > 0
    frames, ids, x, y, w, h = (rows[:, i] for i in range(6))
    assert sorted(set(frames.astype(int))) == list(range(1, 792, 10))  # every 10th frame, 80 of them
    assert (w > 0).all() and (h > 0).all() and (x >= 0).all() and (y >= 0).all()
    assert (x + w <= 768).all() and (y + h <= 576).all()  # inside the 768x576 frame
    keys = list(zip(frames.astype(int), ids.astype(int)))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)  # sorted, one box per person and frame
    assert (rows[:, 6:] == [1, -1, -1, -1]).all()


def _clip(path: Path) -> Path:
    """40 frames of 160x120: two grey 'people' (12x36 px) walking over a static textured background."""
    rng = np.random.default_rng(0)
    background = rng.integers(60, 120, (120, 160, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for t in range(40):
        img = background.copy()
        img[30:66, 10 + 3 * t:22 + 3 * t] = (230, 230, 230)
        img[70:106, 140 - 2 * t:152 - 2 * t] = (10, 10, 200)
        writer.write(img)
    writer.release()
    return path


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_proposals_find_and_link_the_moving_people_and_review_draws_them(tmp_path):
    clip = _clip(tmp_path / "clip.avi")
    draft = tmp_path / "draft.txt"
    proc = _script("gt_proposals.py", "--video", str(clip), "--out", str(draft), "--every", "10",
                   "--bg-step", "1", "--min-height", "20", "--min-area", "100")
    assert proc.returncode == 0, proc.stderr
    rows = np.loadtxt(draft, delimiter=",", ndmin=2)
    assert sorted(set(rows[:, 0].astype(int))) == [1, 11, 21, 31]
    assert len(rows) == 8 and len(set(rows[:, 1].astype(int))) == 2  # two people in four frames, one id each
    first = rows[rows[:, 0] == 1]
    walker = first[np.argmin(first[:, 3])]  # the upper one: truth x 10, y 30, 12 x 36
    assert walker[2:6] == pytest.approx([10, 30, 12, 36], abs=2)
    out = tmp_path / "review"
    proc = _script("gt_review.py", "--mot", str(draft), "--video", str(clip), "--out", str(out), "--every", "10")
    assert proc.returncode == 0, proc.stderr
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4 and cv2.imread(str(pngs[0])).shape[:2] == (120, 160)


@pytest.mark.parametrize("name", ["gt_proposals.py", "gt_review.py"])
def test_missing_video_is_one_error_line_and_exit_2(tmp_path, name):
    extra = ["--mot", str(GT)] if name == "gt_review.py" else []
    proc = _script(name, "--video", str(tmp_path / "none.avi"), "--out", str(tmp_path / "o"), *extra)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "opencv-doc" in lines[0]
