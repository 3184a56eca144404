"""Crowded moving MNIST: real digits, disjoint digit images per split, IDX files, bad input."""

from __future__ import annotations

import gzip
import struct

import cv2
import numpy as np
import pytest

from scalor.datamodules.mnist import load_digit_source
from scalor.errors import DataError
from test_data_common import check_ground_truth, make_dm

TINY = dict(img_size=32, seq_len=3, batch_size=2, num_train=4, num_val=2, num_test=3, min_size=10, max_size=14,
            min_objects=2, max_objects=3)


def _labels(dm, split):
    return {int(x) for x in np.asarray(dm.datasets[split].arrays["labels"]).ravel() if x >= 0}


def test_real_digits_disjoint_between_splits(tmp_path):
    dm = make_dm("mnist", tmp_path, **TINY)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (2, 3, 3, 32, 32) and batch["ids"].shape == (2, 3, 3)
    pools = {split: set(pool.tolist()) for split, pool in dm.pools.items()}
    assert not pools["train"] & pools["test"] and not pools["train"] & pools["val"] and not pools["val"] & pools["test"]
    assert len(pools["train"]) + len(pools["val"]) + len(pools["test"]) == 5000
    used = {split: _labels(dm, split) for split in ("train", "val", "test")}
    assert used["train"] <= pools["train"] and used["test"] <= pools["test"] and used["val"] <= pools["val"]
    assert used["train"] and used["test"]
    # each object draws the pixels of its source digit, scaled and thresholded
    images = load_digit_source(None)[0]
    sprite = dm.make_scene("test", 0).sprites[0]
    side = int(max(sprite.mask.shape))
    for s in range(dm.min_size, dm.max_size + 1):
        digit = cv2.resize(images[sprite.label], (s, s), interpolation=cv2.INTER_AREA)
        rows, cols = np.flatnonzero((digit >= 64).any(1)), np.flatnonzero((digit >= 64).any(0))
        tight = digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        if tight.shape == sprite.mask.shape and (sprite.rgb[..., 0] == tight).all():
            break
    else:
        pytest.fail(f"sprite of side {side} does not match digit {sprite.label}")
    check_ground_truth(dm, "test")


def _write_idx(path, images):
    data = struct.pack(">IIII", 0x803, *images.shape) + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_idx_files_with_an_official_test_set(tmp_path):
    images = load_digit_source(None)[0]
    folder = tmp_path / "idx"
    folder.mkdir()
    _write_idx(folder / "train-images-idx3-ubyte.gz", images[:30])
    _write_idx(folder / "t10k-images-idx3-ubyte", images[30:40])
    dm = make_dm("mnist", tmp_path, mnist_dir=str(folder), **TINY)
    dm.setup()
    assert set(dm.pools["test"].tolist()) == set(range(30, 40))
    assert _labels(dm, "test") <= set(range(30, 40)) and _labels(dm, "train") <= set(range(30))


@pytest.mark.parametrize("case", ["missing", "no_files", "bad_magic", "truncated"])
def test_bad_mnist_dir(tmp_path, case):
    folder = tmp_path / "idx"
    if case != "missing":
        folder.mkdir()
    if case == "bad_magic":
        (folder / "train-images-idx3-ubyte").write_bytes(b"\0" * 64)
    if case == "truncated":
        _write_idx(folder / "train-images-idx3-ubyte", np.zeros((5, 28, 28)))
        path = folder / "train-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:500])
    dm = make_dm("mnist", tmp_path, mnist_dir=str(folder), **TINY)
    if case == "truncated":  # the header is fine: found when the digits are loaded, before any data is written
        dm.validate()
        with pytest.raises(DataError, match="truncated"):
            dm.setup()
    else:
        with pytest.raises(DataError, match="data.mnist_dir|IDX") as err:
            dm.validate()
        assert "\n" not in str(err.value)
    assert not list((tmp_path / "data").rglob("*.npy"))
