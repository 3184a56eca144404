"""Whole-frame tracking by overlapping tiles (scalor/tracking/tiles.py, TileFit in scalor/datamodules/video.py,
track_video and task=track with data.resize=tiles), on generated frames and tracks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from scalor.datamodules.video import FrameFit, TileFit, VideoDataModule, footage_frames
from scalor.errors import ConfigError, DataError
from scalor.inference import track_video
from scalor.tasks import run
from scalor.tracking.tiles import TileJoiner, tile_positions, tile_rects
from test_inference import TINY, parse_mot, tiny_model


# ------------------------------------------------------------------------------------------------- the layout
@pytest.mark.parametrize("length,window,overlap", [(64, 64, 0), (65, 64, 32), (256, 64, 40), (192, 64, 40),
                                                    (1000, 128, 100), (130, 64, 0)])
def test_tiles_cover_the_side_and_overlap_enough(length, window, overlap):
    starts = tile_positions(length, window, overlap)
    assert starts[0] == 0 and starts[-1] == length - window
    assert (np.diff(starts) > 0).all() and (window - np.diff(starts) >= overlap).all()
    # not more tiles than needed: one fewer could not overlap by as much
    if len(starts) > 2:
        assert (length - window) / (len(starts) - 2) > window - overlap


def test_tile_layout_errors():
    with pytest.raises(ValueError, match="shorter than the 64 px window"):
        tile_positions(50, 64, 0)
    with pytest.raises(ValueError, match="overlap=64"):
        tile_positions(100, 64, 64)
    rects = tile_rects(192, 256, 64, 40)
    assert rects.shape == (7 * 9, 4) and (rects[:, 2:] - rects[:, :2] == 64).all()
    assert rects[:, 2].max() == 256 and rects[:, 3].max() == 192


# ------------------------------------------------------------------------------------------------- the joiner
class FakeTileTrackers:
    """Per-tile trackers as a model would run them: a tile reports an object while at least ``visible`` of its box
    lies inside the tile, clipped to the tile, under a track ID of that tile's own that is new each time the
    object enters the tile again."""

    def __init__(self, rects: np.ndarray, visible: float = 0.3) -> None:
        self.rects, self.visible = rects.astype(float), visible
        self.live: dict[tuple[int, int], int] = {}  # (tile, object) -> the tile's track ID
        self.counters = [0] * len(rects)

    def frame(self, objects: np.ndarray, slots: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self.rects)
        boxes, ids, scores = np.zeros((n, slots, 4)), -np.ones((n, slots), np.int64), np.zeros((n, slots))
        for tile, r in enumerate(self.rects):
            k = 0
            for obj, box in enumerate(objects):
                clipped = np.r_[np.maximum(box[:2], r[:2]), np.minimum(box[2:], r[2:])]
                area = np.prod(np.clip(clipped[2:] - clipped[:2], 0, None))
                if area < self.visible * np.prod(box[2:] - box[:2]):
                    self.live.pop((tile, obj), None)
                    continue
                if (tile, obj) not in self.live:
                    self.live[(tile, obj)] = self.counters[tile]
                    self.counters[tile] += 1
                boxes[tile, k], ids[tile, k], scores[tile, k] = clipped, self.live[(tile, obj)], 0.9
                k += 1
        return boxes, ids, scores


def walk(t: int) -> np.ndarray:
    """Boxes (3, 4) xyxy at frame t in a 300 x 100 frame: one person walking right across every tile, one walking
    left, one standing where two tiles meet."""
    return np.array([[5 + 4 * t, 20, 25 + 4 * t, 70], [270 - 3 * t, 30, 290 - 3 * t, 80], [140, 10, 160, 60]], float)


def test_joiner_keeps_one_id_per_object_across_tiles():
    rects = tile_rects(100, 300, 100, 40)  # 5 tiles in a row, 60 px apart
    trackers, joiner = FakeTileTrackers(rects), TileJoiner(rects, 100, 300)
    ids_of = {0: set(), 1: set(), 2: set()}
    for t in range(60):
        truth = walk(t)
        boxes, ids, scores = joiner(*trackers.frame(truth))
        assert len(ids) == 3 and len(set(ids.tolist())) == 3  # one box per object, whatever tiles see it
        for obj, box in enumerate(truth):  # each reported whole (from a tile that holds it all)
            k = int(np.argmin(np.abs(boxes - box).sum(axis=1)))
            np.testing.assert_allclose(boxes[k], box)
            ids_of[obj].add(int(ids[k]))
        assert (scores == 0.9).all()
    assert all(len(v) == 1 for v in ids_of.values()), ids_of  # no ID switch where tiles meet
    assert len(set().union(*ids_of.values())) == 3
    assert sum(trackers.counters) > 10  # the per-tile trackers did start many tracks


def test_joiner_keeps_two_tracks_of_one_tile_apart():
    rects = tile_rects(100, 160, 100, 40)
    joiner = TileJoiner(rects, 100, 160)
    boxes = np.zeros((2, 2, 4))
    boxes[0] = [[50, 10, 70, 60], [52, 12, 72, 62]]  # two overlapping objects in tile 0
    ids = np.array([[0, 1], [-1, -1]])
    out_boxes, out_ids, _ = joiner(boxes, ids, np.ones((2, 2)))
    assert len(out_ids) == 2 and out_ids[0] != out_ids[1]
    empty = joiner(np.zeros((2, 2, 4)), -np.ones((2, 2), np.int64), np.zeros((2, 2)))
    assert empty[0].shape == (0, 4) and empty[1].shape == (0,)


# ------------------------------------------------------------------------------------------------- TileFit
def test_tile_fit_maps_boxes_back_to_the_footage():
    fit = TileFit(64, 0.5, 16, frame_skip=2)
    rects = fit.footage_tiles(180, 300)  # scaled 90 x 150: tiles at x 0, 43, 86 and y 0, 26
    np.testing.assert_allclose(rects[:, :2], [[0, 0], [86, 0], [172, 0], [0, 52], [86, 52], [172, 52]])
    boxes = np.zeros((6, 1, 4))
    boxes[:, 0] = [0.25, 0.5, 0.5, 1.0]
    out = fit.to_footage(boxes, 180, 300)[:, 0]
    np.testing.assert_allclose(out, rects[:, :2].repeat(2, 0).reshape(6, 4) + [32, 64, 64, 128])
    assert fit.frame_number(3) == 7
    img = np.random.default_rng(0).integers(0, 255, (180, 300, 3), np.uint8)
    tiles = fit.model_input(img)
    scaled = cv2.resize(img, (150, 90), interpolation=cv2.INTER_AREA)
    assert tiles.shape == (6, 3, 64, 64)
    np.testing.assert_allclose(tiles[4], scaled[26:90, 43:107].transpose(2, 0, 1) / 255.0, atol=1e-6)
    with pytest.raises(DataError, match="smaller than one 64 px tile; raise data.scale"):
        fit.tiles(100, 300)
    with pytest.raises(ConfigError, match="data.tile_overlap=64"):
        TileFit(64, 0.5, 64)


def squares_footage(k: int, size: int = 128) -> np.ndarray:
    img = np.full((size, size, 3), 30, np.uint8)
    img[20 + 2 * k:44 + 2 * k, 10 + 4 * k:34 + 4 * k] = (230, 60, 60)
    img[70:94, 90 - 3 * k:114 - 3 * k] = (60, 230, 60)
    return img


def test_one_tile_tracks_as_the_whole_frame_resized(tmp_path):
    """A frame that scales to exactly one tile: tiles give the same tracks as fitting the whole frame."""
    frames = [squares_footage(k) for k in range(6)]
    model = tiny_model()
    tiled = track_video(model, frames, tmp_path / "tiles", window=3, fit=TileFit(64, 0.5, 0))
    whole = track_video(model, frames, tmp_path / "whole", window=3, fit=FrameFit(64, "resize"))
    a, b = parse_mot(tmp_path / "tiles" / "tracks.txt"), parse_mot(tmp_path / "whole" / "tracks.txt")
    assert a and len(a) == len(b) and tiled["detections"] == whole["detections"]
    a, b = sorted(a, key=lambda r: (r[0], r[2], r[3])), sorted(b, key=lambda r: (r[0], r[2], r[3]))
    assert [r[0] for r in a] == [r[0] for r in b]
    np.testing.assert_allclose([r[2:7] for r in a], [r[2:7] for r in b], atol=0.02)
    renamed = {(ra[1], rb[1]) for ra, rb in zip(a, b)}  # the joiner's IDs are the model's, renamed one to one
    assert len(renamed) == len({i for i, _ in renamed}) == len({j for _, j in renamed})


def test_track_video_with_tiles_writes_the_whole_footage(tmp_path):
    frames = [squares_footage(k, 160) for k in range(6)]
    fit = TileFit(64, 0.75, 24)  # 120 x 120 scaled: 3 x 3 tiles
    stats = track_video(tiny_model(), frames, tmp_path, window=3, fit=fit)
    rows = parse_mot(tmp_path / "tracks.txt")
    assert stats["footage_hw"] == (160, 160) and stats["frames"] == 6 and rows
    assert all(0 <= x and 0 <= y and x + w <= 160 and y + h <= 160 for _, _, x, y, w, h, _ in rows)
    per_frame = {}
    for f, oid, *_ in rows:
        per_frame.setdefault(f, []).append(oid)
    assert all(len(v) == len(set(v)) for v in per_frame.values())  # one box per ID and frame
    cap = cv2.VideoCapture(stats["tracks_mp4"])
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (160, 160)
    cap.release()


# ------------------------------------------------------------------------------------------------- data and task
def write_clip(path: Path, frames: list[np.ndarray]) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (w, h))
    for f in frames:
        writer.write(f[..., ::-1])
    writer.release()
    return path


def test_video_data_module_trains_on_windows(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", [squares_footage(k, 160) for k in range(20)])
    dm = VideoDataModule(str(clip), str(tmp_path / "cache"), img_size=64, seq_len=4, batch_size=2,
                         resize="tiles", scale=0.75, tile_overlap=24, tile_stride=28, eval_clips=3,
                         val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    frames = np.load(next((tmp_path / "cache").glob("video-*")) / "frames.npy", mmap_mode="r")
    assert frames.shape == (20, 3, 120, 120)  # the whole frame at 3/4
    train = dm.datasets["train"]
    assert len(train) == (12 - 4 + 1) * 3 * 3  # clip starts x windows at 0, 28, 56 in each direction
    item = train[3 * 3 + 4]["video"]  # clip 1, window (28, 28)
    np.testing.assert_allclose(item.numpy(), frames[1:5, :, 28:92, 28:92] / 255.0, atol=1e-6)
    assert len(dm.datasets["val"]) == 3 and dm.datasets["val"][0]["video"].shape == (4, 3, 64, 64)


def test_task_track_takes_the_tiles_from_the_checkpoint(compose_cfg, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.mp4", [squares_footage(k, 160) for k in range(6)])
    model = tiny_model()
    ckpt = tmp_path / "tiles.ckpt"
    trained_data = {"_target_": "scalor.datamodules.VideoDataModule", "resize": "tiles", "scale": 0.75,
                    "tile_overlap": 24}
    torch.save({"hyper_parameters": {"model": {"_target_": "scalor.model.SCALOR", **TINY}, "data": trained_data},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    cfg = compose_cfg("task=track", f"ckpt_path={ckpt}", "data=video", f"data.path={clip}", "data.seq_len=3",
                      run="track")
    stats = run(cfg)
    assert stats["footage_hw"] == (160, 160) and stats["frames"] == 6
    out = " ".join(capsys.readouterr().out.split())
    assert "9 tiles overlapping by 24 px" in out and "scaled by 0.75" in out, out


# ------------------------------------------------------------------------------------------------- scoring
def write_mot(path: Path, rows: list[tuple]) -> Path:
    path.write_text("".join(f"{f},{i},{x},{y},{w},{h},1,-1,-1,-1\n" for f, i, x, y, w, h in rows))
    return path


def test_score_tracks_counts_the_annotated_frames_only(tmp_path):
    from scalor.metrics.mot_files import score_tracks

    gt = write_mot(tmp_path / "gt.txt", [(1, 1, 10, 10, 20, 40), (1, 2, 100, 10, 20, 40),
                                         (11, 1, 20, 10, 20, 40), (11, 2, 90, 10, 20, 40)])
    # frame 5 is not annotated: its boxes do not count; frame 11 has one false positive, and ID 8 takes over
    tracks = write_mot(tmp_path / "tracks.txt", [(1, 7, 10, 10, 20, 40), (1, 8, 101, 10, 20, 40),
                                                 (5, 9, 300, 300, 20, 20), (11, 7, 20, 10, 20, 40),
                                                 (11, 9, 90, 10, 20, 40), (11, 10, 200, 200, 20, 20)])
    m = score_tracks(tracks, gt)
    assert m["annotated_frames"] == 2 and m["num_gt"] == 4 and m["false_positives"] == 1
    assert m["id_switches"] == 1 and m["misses"] == 0
    assert m["mota"] == pytest.approx(1 - (1 + 1) / 4)
    assert m["count_mae"] == pytest.approx(0.5) and m["count_acc"] == pytest.approx(0.5)


def test_task_track_scores_against_ground_truth(compose_cfg, tmp_path, capsys):
    import json

    clip = write_clip(tmp_path / "clip.mp4", [squares_footage(k, 160) for k in range(6)])
    ckpt = tmp_path / "tiles.ckpt"
    model = tiny_model()
    torch.save({"hyper_parameters": {"model": {"_target_": "scalor.model.SCALOR", **TINY}},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    gt = write_mot(tmp_path / "gt.txt", [(1, 1, 10, 20, 24, 24), (4, 1, 22, 26, 24, 24)])
    cfg = compose_cfg("task=track", f"ckpt_path={ckpt}", "data=video", f"data.path={clip}", f"groundtruth={gt}",
                      run="track")
    stats = run(cfg)
    summary = json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())
    assert summary["task"] == "track" and summary["metrics"]["track/annotated_frames"] == 2
    assert summary["tracker"] == "online"
    assert summary["metrics"]["track/num_gt"] == 2 and "track/count_mae" in summary["metrics"]
    assert stats["metrics"]["track/mota"] == summary["metrics"]["track/mota"]
    picked = compose_cfg("task=track", f"ckpt_path={ckpt}", "data=video", f"data.path={clip}", "tracker=pick8",
                         run="track_pick")
    run(picked)  # a whole-sequence tracker streams with its streaming counterpart, and the summary says which
    assert json.loads((Path(picked.paths.output_dir) / "summary.json").read_text())["tracker"] == "backfill"
    bad = compose_cfg("task=track", f"ckpt_path={ckpt}", "data=video", f"data.path={clip}",
                      f"groundtruth={tmp_path / 'none.txt'}", run="track2")
    with pytest.raises(ConfigError, match="none.txt: no such file"):
        run(bad)


@pytest.mark.parametrize("override,message", [
    ("data.scale=0", "data.scale=0.0 must be > 0"),
    ("data.scale=0.2", "smaller than one 64 px tile; raise data.scale or lower data.img_size"),
    ("data.tile_overlap=64", "data.tile_overlap=64 must be in [0, data.img_size=64)"),
])
def test_bad_tile_settings_stop_with_one_line(tmp_path, override, message):
    clip = write_clip(tmp_path / "clip.mp4", [squares_footage(k, 160) for k in range(12)])
    dm = VideoDataModule(str(clip), str(tmp_path / "cache"), img_size=64, seq_len=3, resize="tiles", scale=0.75)
    key, value = override.split("=")
    setattr(dm, {"data.scale": "scale", "data.tile_overlap": "tile_overlap"}[key], type(getattr(dm, key[5:]))(value))
    with pytest.raises((ConfigError, DataError), match=message.replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")) as err:
        dm.validate()
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists()  # nothing decoded


def test_tiles_end_exactly_at_the_frame_border():
    """Scaled back to the footage, the last tiles end at the frame's edges exactly, so the joiner treats the border
    as a border: an object whole in the last tile is reported once, from that tile."""
    fit = TileFit(64, 0.75, 24)
    rects = fit.footage_tiles(85, 114)  # scaled 64 x 86: tiles at x 0 and 22, y 0
    assert rects[:, 2].max() == 114 and rects[:, 3].max() == 85
    joiner = TileJoiner(rects, 85, 114)
    assert not joiner.inner[np.argmax(rects[:, 2]), 2] and not joiner.inner[:, 3].any()
    whole = np.array([80.0, 20, 114, 60])  # whole in the last tile, up to the border; cut by the first tile's edge
    boxes = np.zeros((2, 1, 4))
    boxes[0, 0], boxes[1, 0] = [80, 20, rects[0, 2], 60], whole
    out, ids, _ = joiner(boxes, np.array([[0], [0]]), np.ones((2, 1)))
    assert len(ids) == 1 and np.allclose(out[0], whole)


def test_score_tracks_on_the_tracked_frames_only(tmp_path):
    from scalor.metrics.mot_files import score_tracks

    gt = write_mot(tmp_path / "gt.txt", [(1, 1, 10, 10, 20, 40), (11, 1, 20, 10, 20, 40), (21, 1, 30, 10, 20, 40)])
    tracks = write_mot(tmp_path / "tracks.txt", [(1, 5, 10, 10, 20, 40), (21, 5, 30, 10, 20, 40)])
    assert score_tracks(tracks, gt)["misses"] == 1  # frame 11 was annotated, and nothing tracked there
    m = score_tracks(tracks, gt, tracked={1, 4, 7, 10, 13, 16, 19, 22})  # frame skip 3: 11 and 21 not tracked
    assert m["annotated_frames"] == 1 and m["mota"] == 1.0
    with pytest.raises(DataError, match="no frame that .* annotates was tracked"):
        score_tracks(tracks, gt, tracked={2, 3})
    bad = tmp_path / "bad.txt"
    bad.write_text("1,1,10,10,20,40,1,-1,-1,-1\nframe,id\n")
    with pytest.raises(DataError, match="line 2 of .* is not a MOTChallenge row") as err:
        score_tracks(tracks, bad)
    assert "\n" not in str(err.value)


def test_extract_frames_writes_numbered_images(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    clip = write_clip(tmp_path / "clip.mp4", [squares_footage(k, 96) for k in range(7)])
    cmd = [sys.executable, "scripts/extract_frames.py", str(clip), str(tmp_path / "frames"), "--skip", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == ["0.png", "2.png", "4.png", "6.png"]
    assert cv2.imread(str(tmp_path / "frames" / "2.png")).shape == (96, 96, 3)
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and len(again.stderr.splitlines()) == 1
