"""task=track in the footage's own pixels and frame numbers: FrameFit's mapping, track_video with a fit, the task
and its command line (scalor/datamodules/video.py, scalor/inference.py, scalor/tasks.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import ROOT
from scalor.datamodules.video import FrameFit, footage_frames, iter_frames
from scalor.errors import ConfigError, DataError
from scalor.inference import track_video
from scalor.tasks import run
from test_inference import TINY, parse_mot, tiny_model

W, H, N_FRAMES = 120, 90, 10  # a non-square clip; the model runs at 64 x 64


def footage(k: int) -> np.ndarray:
    """Frame k of the clip, RGB uint8 (H, W, 3): a horizontal gradient with two squares moving over it."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 2] = np.linspace(0, 120, W, dtype=np.uint8)[None]
    img[20 + k:40 + k, 10 + 3 * k:30 + 3 * k] = (230, 60, 60)
    img[55:75, 90 - 2 * k:110 - 2 * k] = (60, 230, 60)
    return img


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("footage") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
    assert writer.isOpened()
    for k in range(N_FRAMES):
        writer.write(footage(k)[..., ::-1])
    writer.release()
    return path


def checkpoint(folder: Path) -> Path:
    """A checkpoint of the untrained tiny model of test_inference (64 px), as task=fit would save it."""
    model = tiny_model()
    path = folder / "tiny.ckpt"
    torch.save({"hyper_parameters": {"model": {"_target_": "scalor.model.SCALOR", **TINY}},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


# ------------------------------------------------------------------------------------------------- the mapping
def test_frame_fit_maps_known_boxes_and_frames():
    boxes = np.array([[0.25, 0.5, 0.5, 1.0], [-0.1, 0.9, 1.2, 1.1]])
    # resize: x scales by W, y by H (64 model px -> 120 x 90 footage px), clipped to the footage
    resize = FrameFit(64, "resize", frame_skip=3)
    assert resize.region(H, W) == (0, 0, W, H)
    np.testing.assert_array_equal(resize.to_footage(boxes, H, W), [[30, 45, 60, 90], [0, 81, 120, 90]])
    assert [resize.frame_number(k) for k in range(4)] == [1, 4, 7, 10]
    # crop: the centred 80 px square at (20, 5), scaled by 80/64 in model px, plus the offset
    crop = FrameFit(64, "crop", crop_size=80)
    assert crop.region(H, W) == (20, 5, 80, 80)
    np.testing.assert_array_equal(crop.to_footage(boxes, H, W), [[40, 45, 60, 85], [12, 77, 116, 90]])
    assert [crop.frame_number(k) for k in range(3)] == [1, 2, 3]
    # crop without crop_size: the model's own size in native pixels
    assert FrameFit(64, "crop").region(H, W) == (28, 13, 64, 64)
    np.testing.assert_array_equal(FrameFit(64, "crop").to_footage(boxes[:1], H, W), [[44, 45, 60, 77]])
    with pytest.raises(ConfigError, match="data.frame_skip=0"):
        FrameFit(64, frame_skip=0)


@pytest.mark.parametrize("resize,crop_size", [("resize", None), ("crop", 80)])
def test_frame_fit_maps_back_what_the_model_sees(resize, crop_size):
    """A rectangle found in the model's input, mapped back, is where it was drawn in the footage."""
    img = np.zeros((H, W, 3), np.uint8)
    img[30:54, 45:75] = 255  # footage box (45, 30, 75, 54)
    fit = FrameFit(64, resize, crop_size)
    seen = fit.model_input(img)
    assert seen.shape == (3, 64, 64) and seen.dtype == np.float32
    rows, cols = np.nonzero(seen[0] > 0.5)
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]) / 64
    np.testing.assert_allclose(fit.to_footage(box, H, W), [45, 30, 75, 54], atol=1.5)


# ------------------------------------------------------------------------------------------------- track_video
@pytest.mark.parametrize("resize,crop_size", [("resize", None), ("crop", 80)])
def test_track_video_writes_footage_pixels_and_frames(clip, tmp_path, resize, crop_size):
    """The same tracks as in model pixels, mapped to the footage by hand; tracks.mp4 is the footage's size and
    shows its own frames."""
    model = tiny_model()
    fit = FrameFit(64, resize, crop_size, frame_skip=2)
    stats = track_video(model, footage_frames(clip, 2), tmp_path / "footage", window=2, fit=fit)
    track_video(model, iter_frames(clip, 64, 2, resize, crop_size), tmp_path / "model", window=2)
    rows = parse_mot(tmp_path / "footage" / "tracks.txt")
    model_rows = parse_mot(tmp_path / "model" / "tracks.txt")
    assert rows and stats["frames"] == 5 and stats["footage_hw"] == (H, W) and stats["detections"] == len(rows)

    # frame k of the stream is footage frame 2k + 1; IDs and presences are the model's
    assert [r[:2] for r in rows] == [(2 * (f - 1) + 1, oid) for f, oid, *_ in model_rows]
    np.testing.assert_allclose([r[6] for r in rows], [r[6] for r in model_rows], atol=1e-3)
    xyxy = np.array([(x, y, x + w, y + h) for _, _, x, y, w, h, _ in model_rows])  # model pixels (64)
    left, top, side_w, side_h = (0, 0, W, H) if resize == "resize" else (20, 5, 80, 80)
    scale, offset = np.array([side_w, side_h] * 2) / 64, np.array([left, top] * 2)
    expected = np.clip(xyxy * scale + offset, 0, [W, H, W, H])
    written = np.array([(x, y, x + w, y + h) for _, _, x, y, w, h, _ in rows])
    np.testing.assert_allclose(written, expected, atol=0.03)  # both files round to 0.01 px
    assert (written >= 0).all() and (written[:, 0::2] <= W).all() and (written[:, 1::2] <= H).all()

    cap = cv2.VideoCapture(stats["tracks_mp4"])
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (W, H)
    ok, first = cap.read()
    frames = 1 + sum(1 for _ in iter(lambda: cap.read()[0], False))
    cap.release()
    assert ok and frames == 5
    # the footage itself (drawings aside), not the model's square input
    assert np.median(np.abs(first[..., ::-1].astype(int) - footage(0))) <= 6


def test_track_video_outlines_the_crop(clip, tmp_path):
    stats = track_video(tiny_model(pres_bias=-20.0), footage_frames(clip), tmp_path, window=5,
                        fit=FrameFit(64, "crop", 80))
    assert stats["detections"] == 0  # nothing drawn but the crop's outline
    cap = cv2.VideoCapture(stats["tracks_mp4"])
    ok, frame = cap.read()
    cap.release()
    assert ok and np.median(frame[5, 20:100]) > 220 and np.median(frame[5:85, 99]) > 220  # white edges
    assert np.median(frame[45, :15]) < 100 and np.median(frame[45, 101:]) < 150  # outside: the footage


def test_track_video_rejects_bad_footage(tmp_path):
    model = tiny_model()
    fit = FrameFit(64)
    mixed = [np.zeros((H, W, 3), np.uint8), np.zeros((W, H, 3), np.uint8)]
    with pytest.raises(DataError, match="footage frame 2 is 90x120 px but the footage began at 120x90") as err:
        track_video(model, mixed, tmp_path, fit=fit)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="RGB uint8"):
        track_video(model, [np.zeros((3, 64, 64), np.float32)], tmp_path, fit=fit)
    with pytest.raises(ConfigError, match="fit.img_size=32 but the model takes 64 px"):
        track_video(model, [np.zeros((H, W, 3), np.uint8)], tmp_path, fit=FrameFit(32))
    with pytest.raises(DataError, match="too small for a 128 px crop"):
        track_video(model, [np.zeros((H, W, 3), np.uint8)], tmp_path, fit=FrameFit(64, "crop", 128))


# ------------------------------------------------------------------------------------------------- task=track
def test_task_track_writes_footage_pixels(compose_cfg, clip, tmp_path, capsys):
    ckpt = checkpoint(tmp_path)
    cfg = compose_cfg("task=track", f"ckpt_path={ckpt}", "data=video", f"data.path={clip}", "data.frame_skip=3",
                      "data.resize=crop", "data.crop_size=80", run="track")
    stats = run(cfg)
    rows = parse_mot(Path(cfg.paths.output_dir) / "tracks.txt")
    assert stats["frames"] == 4 and rows and {f for f, *_ in rows} <= {1, 4, 7, 10}
    assert all(0 <= x and 0 <= y and x + w <= W and y + h <= H for _, _, x, y, w, h, _ in rows)
    out = capsys.readouterr().out
    assert "120x90 px" in out and "64x64 px (the 80 px square at (20, 5) resized)" in out


def test_task_track_refuses_another_img_size(compose_cfg, clip, tmp_path):
    cfg = compose_cfg("task=track", f"ckpt_path={checkpoint(tmp_path)}", "data=video", f"data.path={clip}",
                      "data.img_size=128", run="track")
    with pytest.raises(ConfigError, match=r"data.img_size=128 is set on the command line .* own 64 px input") as err:
        run(cfg)
    assert "\n" not in str(err.value)
    assert not (Path(cfg.paths.output_dir) / "tracks.txt").exists()  # stopped before reading a frame


def test_cli_track_with_another_img_size_exits_2(clip, tmp_path):
    cmd = [sys.executable, "run.py", "task=track", f"ckpt_path={checkpoint(tmp_path)}", "data=video",
           f"data.path={clip}", "data.img_size=128", f"paths.output_root={tmp_path / 'outputs'}", "logger=none"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.img_size=128" in errors[0] and "Traceback" not in proc.stderr
    assert not list((tmp_path / "outputs").rglob("tracks.txt"))
