"""experiment=pedestrians on an excerpt of OpenCV's vtest.avi, end to end from the command line: a few training
steps on windows, then task=track of the whole frame scored against groundtruth/vtest/gt.txt. Skips where the
video is not installed (`apt-get install opencv-doc`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import ROOT
from scalor.datamodules.video import footage_frames

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
GT = ROOT / "groundtruth" / "vtest" / "gt.txt"
FRAMES = 41  # annotated frames 1, 11, 21, 31, 41

pytestmark = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} is missing: apt-get install opencv-doc")


@pytest.fixture(scope="module")
def excerpt(tmp_path_factory) -> tuple[Path, Path]:
    """The first FRAMES frames as a folder of PNGs, and the ground truth of those frames."""
    folder = tmp_path_factory.mktemp("vtest") / "frames"
    folder.mkdir()
    for k, img in enumerate(footage_frames(VTEST)):
        if k == FRAMES:
            break
        cv2.imwrite(str(folder / f"{k:04d}.png"), img[..., ::-1])
    rows = [line for line in GT.read_text().splitlines() if int(line.split(",")[0]) <= FRAMES]
    gt = folder.parent / "gt.txt"
    gt.write_text("\n".join(rows) + "\n")
    return folder, gt


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "run.py", *args, f"paths.output_root={tmp_path / 'outputs'}",
           f"paths.data_dir={tmp_path / 'data'}", "logger=csv"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_pedestrians_trains_on_windows_and_tracks_the_whole_frame(excerpt, tmp_path):
    frames, gt = excerpt
    fit = run(tmp_path, "experiment=pedestrians", f"data.path={frames}", "trainer.max_time=null",
              "trainer.max_steps=3", "trainer.val_check_interval=3", "data.eval_clips=4", "data.val_fraction=0.15",
              "data.test_fraction=0.15", "test_after_fit=false",
              "callbacks.visualization.every_n_steps=0")
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = next((tmp_path / "outputs" / "pedestrians").glob("*/checkpoints/last.ckpt"))
    track = run(tmp_path, "task=track", f"ckpt_path={ckpt}", "data=video", f"data.path={frames}",
                f"groundtruth={gt}")
    assert track.returncode == 0, track.stderr[-3000:]
    summary = json.loads(next(p for p in (tmp_path / "outputs" / "pedestrians").glob("*/summary.json")
                              if json.loads(p.read_text())["task"] == "track").read_text())
    m = summary["metrics"]
    assert m["frames"] == FRAMES and m["track/annotated_frames"] == 5 and m["track/num_gt"] > 0
    assert np.isfinite(m["track/mota"]) and m["track/count_mae"] >= 0
    tracks = next((tmp_path / "outputs" / "pedestrians").glob("*/tracks.txt"))
    boxes = np.loadtxt(tracks, delimiter=",", ndmin=2)
    if len(boxes):  # in the footage's pixels and frames: the whole 768x576 frame, not one tile
        assert boxes[:, 0].min() >= 1 and boxes[:, 0].max() <= FRAMES
        assert (boxes[:, 2] + boxes[:, 4] <= 768.01).all() and (boxes[:, 3] + boxes[:, 5] <= 576.01).all()
    cap = cv2.VideoCapture(str(tracks.parent / "tracks.mp4"))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (768, 576)
    cap.release()
    assert "63 tiles" in " ".join(track.stdout.split())
