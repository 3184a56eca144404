"""Drawing, video and MOT-text helpers."""

from __future__ import annotations

import subprocess
import sys
from collections import deque

import cv2
import numpy as np
import pytest
import torch

from conftest import read_video
from scalor import viz


def _read_video(path):
    frames = [f[..., ::-1] for f in read_video(path)]  # BGR -> RGB
    return np.stack(frames) if frames else np.zeros((0,))


def test_float_uint8_round_trip():
    x = torch.rand(2, 3, 3, 8, 10)
    u = viz.to_uint8_hwc(x)
    assert u.dtype == np.uint8 and u.shape == (2, 3, 8, 10, 3)
    back = viz.to_float_chw(u)
    assert back.shape == x.shape and back.dtype == torch.float32
    assert (back - x).abs().max() <= 0.5 / 255 + 1e-6


def test_id_colors_stable_and_distinct():
    ids = np.array([[0, 1, 2], [3, 4, -1]])
    c = viz.id_colors(ids)
    assert c.shape == (2, 3, 3) and c.dtype == np.uint8
    assert np.array_equal(c, viz.id_colors(torch.tensor(ids)))  # same for tensors
    assert np.array_equal(c[0, 1], viz.id_colors(1))  # elementwise, independent of the batch
    assert tuple(c[1, 2]) == viz.PAD_COLOR
    many = viz.id_colors(np.arange(50))
    assert len({tuple(x) for x in many}) == 50
    # neighbouring IDs differ clearly
    assert np.abs(many[1:].astype(int) - many[:-1].astype(int)).sum(-1).min() > 30
    # and the colours do not depend on the process (no salted hash)
    code = "from scalor.viz import id_colors; print(id_colors([0, 1, 2, 12345]).tolist())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(viz.id_colors([0, 1, 2, 12345]).tolist())


def test_draw_boxes_changes_pixels_on_the_box_only():
    frame = np.zeros((64, 64, 3), np.uint8)
    boxes = np.array([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.1, 0.1]])
    out = viz.draw_boxes(frame, boxes, np.array([7, -1]), labels=False)
    assert frame.sum() == 0  # input untouched
    changed = out.any(-1)
    assert changed[16, 16:49].all() and changed[16:49, 48].all()  # the box outline
    assert tuple(out[16, 30]) == tuple(viz.id_colors(7))
    assert not changed[20:45, 20:45].any()  # inside stays
    assert not changed[:6, :6].any()  # padding ID not drawn
    labelled = viz.draw_boxes(frame, boxes, np.array([7, -1]), labels=True)
    assert labelled.any(-1).sum() > changed.sum()  # text added inside the box
    thick = viz.draw_boxes(frame, boxes[:1], [3], labels=False, thickness=3)
    assert thick.any(-1).sum() > changed.sum()


def test_draw_trails():
    frame = np.zeros((64, 64, 3), np.uint8)
    hist = deque(maxlen=4)
    for t in range(5):
        x = 0.1 + 0.15 * t
        hist.append((torch.tensor([[x, 0.4, x + 0.1, 0.6]]), torch.tensor([5])))
    out = viz.draw_trails(frame, hist)
    changed = out.any(-1)
    assert changed[32, 20:44].all()  # last 4 centres: x = 0.3..0.75 of 64 px, y = 0.5
    assert not changed[:20].any() and not changed[:, :18].any()  # the oldest point fell out
    assert frame.sum() == 0


def test_make_grid():
    v = np.zeros((2, 3, 4, 5, 3), np.uint8)
    v[1, 2] = 200
    g = viz.make_grid(v, pad=1, pad_value=255)
    assert g.shape == (2 * 4 + 3, 3 * 5 + 4, 3)
    assert (g[0] == 255).all() and (g[6:10, 13:18] == 200).all() and (g[1:5, 1:6] == 0).all()
    assert viz.make_grid(v[0]).shape == (4 + 2, 3 * 5 + 4, 3)
    with pytest.raises(ValueError):
        viz.make_grid(np.zeros((2, 3, 3, 4, 5), np.float32))


@pytest.mark.parametrize("hw", [(32, 48), (33, 47)])
def test_write_video_reads_back(tmp_path, hw):
    H, W = hw
    T = 7
    frames = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):
        frames[t, :, :, 0] = 30 * t  # red ramp over time
    path = viz.write_video(tmp_path / "sub" / "v.mp4", frames, fps=5)
    back = _read_video(path)
    assert back.shape == (T, H + H % 2, W + W % 2, 3)
    # colours survive (RGB order, lossy codec)
    assert abs(float(back[6, : H - 1, : W - 1, 0].mean()) - 180) < 12
    assert float(back[6, : H - 1, : W - 1, 2].mean()) < 12


def test_streaming_video_writer(tmp_path):
    path = tmp_path / "s.mp4"
    with viz.VideoWriter(path, fps=10) as w:
        for t in range(12):
            w.write(np.full((16, 24, 3), 10 * t, np.uint8))
        with pytest.raises(ValueError, match="differs"):
            w.write(np.zeros((8, 8, 3), np.uint8))
    assert w.num_frames == 12
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))) == (16, 24)
    cap.release()


def test_segmentation_overlay():
    frame = torch.zeros(3, 8, 8)
    seg = -torch.ones(8, 8, dtype=torch.long)
    seg[2:4, 2:4] = 3
    out = viz.segmentation_overlay(frame, seg, alpha=1.0)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out[2:4, 2:4] == viz.id_colors(3)).all()
    assert out[seg.numpy() < 0].sum() == 0
    half = viz.segmentation_overlay(frame, seg, alpha=0.5)
    assert np.abs(half[2, 2].astype(int) - viz.id_colors(3).astype(int) / 2).max() <= 1


def test_mark_generated():
    frame = np.full((64, 64, 3), 40, np.uint8)
    out = viz.mark_generated(frame)
    assert tuple(out[0, 0]) == viz.GEN_COLOR and tuple(out[32, -1]) == viz.GEN_COLOR
    assert (out[20:60, 20:60] == 40).all()  # the content stays
    inner = out[3:20, 3:40]
    assert (inner != 40).any()  # the text
    assert (frame == 40).all()


def test_mot_txt_well_formed(tmp_path):
    rows = viz.mot_rows(0, np.array([[0.1, 0.2, 0.3, 0.5], [0, 0, 1, 1]]), np.array([4, -1]), width=100, height=50)
    assert rows == [(1, 4, 10.0, 10.0, 20.0, 15.0, 1.0)]
    rows += viz.mot_rows(1, torch.tensor([[0.5, 0.5, 0.6, 0.7]]), torch.tensor([4]), 100, 50, conf=[0.75])
    path = tmp_path / "tracks.txt"
    assert viz.write_mot_txt(path, rows) == 2
    assert viz.write_mot_txt(path, [(3, 9, 1, 2, 3, 4)], append=True) == 1
    lines = path.read_text().splitlines()
    assert lines[0] == "1,4,10.00,10.00,20.00,15.00,1,-1,-1,-1"
    assert lines[1] == "2,4,50.00,25.00,10.00,10.00,0.75,-1,-1,-1"
    for line in lines:
        f = line.split(",")
        assert len(f) == 10 and int(f[0]) >= 1 and int(f[1]) >= 0
        assert all(float(v) >= 0 for v in f[2:6]) and f[7:] == ["-1", "-1", "-1"]
    with pytest.raises(ValueError, match="start at 1"):
        viz.write_mot_txt(path, [(0, 1, 0, 0, 1, 1)])
