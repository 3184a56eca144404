"""Grand Central-like folders of numbered frames: reference indexing, crops, and every bad-input case."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from scalor.datamodules.grand_central import clip_starts
from scalor.errors import DataError
from test_data_common import make_dm

N_FRAMES, W, H, CROP = 90, 120, 80, 40  # r = 40: frames must be >= 3r x 2r
SMALL = dict(img_size=40, seq_len=3, frame_skip=2, crop_size=CROP, batch_size=4, num_val=3)
CORNERS = [(20, 0), (60, 0), (0, 40), (40, 40), (80, 40), (0, 20), (40, 20), (80, 20)]


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """Frames 0.png .. 89.png (no zero padding, so name order is not frame order). R = frame number, G = column,
    B = 2 * row: every pixel of a clip says which frame and which crop it came from."""
    folder = tmp_path_factory.mktemp("gc")
    cols, rows = np.meshgrid(np.arange(W), np.arange(H))
    for k in range(N_FRAMES):
        rgb = np.stack([np.full((H, W), k), cols, 2 * rows], -1).astype(np.uint8)
        cv2.imwrite(str(folder / f"{k}.png"), rgb[..., ::-1])
    return folder


def _copy(frames, tmp_path):
    return shutil.copytree(frames, tmp_path / "frames")


def test_reference_indexing_crops_and_split(frames, tmp_path):
    dm = make_dm("grand_central", tmp_path, root=str(frames), **SMALL)
    assert not dm.has_ground_truth
    dm.validate()
    dm.setup()
    n_test = N_FRAMES // 10
    n_train, span = N_FRAMES - n_test, 3 * 2
    num_train = n_train - span + 1  # the reference's n - 79 for T = 10, skip 8
    num_test = (n_test - span + 1) // 3
    assert len(dm.datasets["train"]) == 8 * num_train and len(dm.datasets["test"]) == 8 * num_test
    assert len(dm.datasets["val"]) == 3
    for split, i, first in [("train", 0, 0), ("train", 5 * num_train + 17, 17), ("train", 8 * num_train - 1,
                                                                                 num_train - 1),
                            ("test", 7 * num_test, n_train)]:
        video = (dm.datasets[split][i]["video"].numpy() * 255).round()
        assert video.shape == (3, 3, 40, 40)
        left, top = CORNERS[i // (num_train if split == "train" else num_test)]
        np.testing.assert_array_equal(video[:, 0, 0, 0], [first, first + 2, first + 4])  # frames skip 2, numeric order
        np.testing.assert_array_equal(video[0, 1, 0, :], np.arange(left, left + 40))
        np.testing.assert_array_equal(video[0, 2, :, 0], 2 * np.arange(top, top + 40))
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"video"} and batch["video"].shape == (4, 3, 3, 40, 40)


def test_resized_to_img_size(frames, tmp_path):
    dm = make_dm("grand_central", tmp_path, root=str(frames), **{**SMALL, "img_size": 20})
    dm.setup()
    video = dm.datasets["test"][0]["video"]
    assert video.shape == (3, 3, 20, 20) and 0 <= video.min() and video.max() <= 1
    np.testing.assert_allclose(video[0, 1, 0, :2].numpy() * 255, [20.5, 22.5], atol=0.6)  # 2x2 area average


def test_test_clips_do_not_overlap():
    starts = clip_starts(4800, 10, 8, test=True)  # the reference's last 10% of 48,000 frames
    assert len(starts) == (4800 - 79) // 10 and starts[8] == 80 and starts[-1] + 72 < 4800
    frames = (starts[:, None] + 8 * np.arange(10)).ravel()
    assert len(np.unique(frames)) == len(frames)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="data.root=.*does not exist"):
        make_dm("grand_central", tmp_path, root=str(tmp_path / "nope"), **SMALL).validate()


def test_empty_root(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames here")
    dm = make_dm("grand_central", tmp_path, root=str(tmp_path / "empty"), **SMALL)
    with pytest.raises(DataError, match="holds no image files"):
        dm.validate()
    with pytest.raises(DataError, match="holds no image files"):
        dm.setup()


def test_frame_names_must_be_integers(frames, tmp_path):
    root = _copy(frames, tmp_path)
    shutil.copy(root / "3.png", root / "frame_0003.png")
    with pytest.raises(DataError, match="must be integers.*'frame_0003.png'") as err:
        make_dm("grand_central", tmp_path, root=str(root), **SMALL).validate()
    assert "\n" not in str(err.value)


def test_truncated_frame_is_named(frames, tmp_path):
    root = _copy(frames, tmp_path)
    data = (root / "50.png").read_bytes()
    (root / "50.png").write_bytes(data[: len(data) // 2])
    dm = make_dm("grand_central", tmp_path, root=str(root), **SMALL)
    dm.validate()  # cheap: first and last frames only
    with pytest.raises(DataError, match="50.png"):
        dm.setup()
    lazy = make_dm("grand_central", tmp_path, root=str(root), **{**SMALL, "check_frames": False})
    lazy.setup()
    with pytest.raises(DataError, match="cannot read image .*50.png"):
        lazy.datasets["train"][50 - 4]  # crop 0, start 46: frames 46, 48, 50
    (root / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="0.png"):
        dm.validate()


def test_frames_smaller_than_the_crop(frames, tmp_path):
    with pytest.raises(DataError, match="120x80 px, smaller than the 150x100.*data.crop_size=50"):
        make_dm("grand_central", tmp_path, root=str(frames), **{**SMALL, "crop_size": 50}).validate()


def test_sequence_longer_than_the_footage(frames, tmp_path):
    dm = make_dm("grand_central", tmp_path, root=str(frames), **{**SMALL, "seq_len": 10, "frame_skip": 8})
    with pytest.raises(DataError, match="has 90 frames.*data.seq_len=10"):
        dm.validate()
    with pytest.raises(DataError, match="has 90 frames"):
        dm.setup()
