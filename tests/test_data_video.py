"""User footage: a tiny mp4 written with OpenCV and a folder of images; streaming reader; bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from scalor.datamodules import iter_frames, video_fps
from scalor.errors import DataError
from test_data_common import make_dm

N_FRAMES, W, H = 40, 64, 48
SMALL = dict(img_size=32, seq_len=4, frame_skip=2, batch_size=3, val_fraction=0.2, test_fraction=0.2)


def _level(k):
    return 20 + 5 * k  # grey level of frame k


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (W, H))
    assert writer.isOpened()
    for k in range(N_FRAMES):
        writer.write(np.full((H, W, 3), _level(k), np.uint8))
    writer.release()
    return path


def _brightness(frames):
    return np.array([float(f.mean()) * 255 for f in frames])


def test_iter_frames_streams_with_skip(clip):
    frames = list(iter_frames(clip, 32, frame_skip=3))
    assert len(frames) == 14  # frames 0, 3, ..., 39
    assert all(f.shape == (3, 32, 32) and f.dtype == np.float32 for f in frames)
    assert 0 <= min(f.min() for f in frames) and max(f.max() for f in frames) <= 1
    np.testing.assert_allclose(_brightness(frames), [_level(k) for k in range(0, N_FRAMES, 3)], atol=4)
    assert video_fps(clip) == pytest.approx(10.0)
    cropped = next(iter_frames(clip, 16, resize="crop", crop_size=48))
    assert cropped.shape == (3, 16, 16)


def test_video_datamodule_splits_in_time_order(clip, tmp_path):
    dm = make_dm("video", tmp_path, path=str(clip), **SMALL)
    assert not dm.has_ground_truth
    dm.setup()
    # 40 frames: train 0-23, val 24-31, test 32-39; a clip spans (4 - 1) * 2 + 1 = 7 frames
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 18, "val": 1, "test": 1}
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == {"video"} and batch["video"].shape == (1, 4, 3, 32, 32)
    np.testing.assert_allclose(_brightness(batch["video"][0]), [_level(k) for k in (32, 34, 36, 38)], atol=4)
    first = dm.datasets["train"][5]["video"]
    np.testing.assert_allclose(_brightness(first), [_level(k) for k in (5, 7, 9, 11)], atol=4)
    assert list(dm.cache_dir.glob("*")) and not list(dm.cache_dir.glob("*.raw"))


def test_folder_of_images_in_natural_order(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for k in range(12):
        cv2.imwrite(str(folder / f"img{k + 1}.png"), np.full((30, 40, 3), _level(k), np.uint8))
    frames = list(iter_frames(folder, 16))
    np.testing.assert_allclose(_brightness(frames), [_level(k) for k in range(12)], atol=0.5)  # img2 before img10
    assert video_fps(folder) == 25.0
    dm = make_dm("video", tmp_path, path=str(folder), **{**SMALL, "seq_len": 2, "frame_skip": 1,
                                                            "val_fraction": 0.25, "test_fraction": 0.25})
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [5, 1, 1]


def test_video_opencv_cannot_open(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 20)
    with pytest.raises(DataError, match="OpenCV cannot open") as err:
        make_dm("video", tmp_path, path=str(bad), **SMALL).validate()
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="OpenCV cannot open"):
        next(iter_frames(bad, 32))


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="data.path is not set"):
        make_dm("video", tmp_path, **SMALL).validate()
    with pytest.raises(DataError, match="does not exist"):
        make_dm("video", tmp_path, path=str(tmp_path / "nope.mp4"), **SMALL).setup()


def test_frames_smaller_than_the_crop(clip, tmp_path):
    dm = make_dm("video", tmp_path, path=str(clip), **{**SMALL, "resize": "crop", "crop_size": 60})
    with pytest.raises(DataError, match="64x48 px, too small for a 60 px crop.*data.crop_size"):
        dm.validate()


def test_sequence_longer_than_the_footage(clip, tmp_path):
    with pytest.raises(DataError, match="has 40 frames.*data.seq_len=30"):
        make_dm("video", tmp_path, path=str(clip), **{**SMALL, "seq_len": 30}).validate()
    dm = make_dm("video", tmp_path, path=str(clip), **{**SMALL, "seq_len": 5})  # fits, but not in the 8-frame val
    with pytest.raises(DataError, match="the val split has 8"):
        dm.setup()


def test_truncated_image_in_a_folder_is_named(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for k in range(3):
        cv2.imwrite(str(folder / f"{k}.png"), np.full((30, 40, 3), 50, np.uint8))
    data = (folder / "2.png").read_bytes()
    (folder / "2.png").write_bytes(data[:-20])
    with pytest.raises(DataError, match="2.png"):
        list(iter_frames(folder, 16))
