"""Generated dSprites scenes: batch contract, exact ground truth, entering/leaving objects, seeding, caching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalor.datamodules import DSpritesDataModule
from scalor.datamodules.base import is_complete
from scalor.errors import ConfigError, DataError
from test_data_common import check_ground_truth, make_dm

TINY = dict(img_size=32, seq_len=4, batch_size=2, num_train=3, num_val=1, num_test=2, min_size=4, max_size=8,
            min_objects=1, max_objects=3)


def test_batch_contract(tmp_path):
    dm = make_dm("dsprites", tmp_path, **TINY)
    assert dm.has_ground_truth
    dm.prepare_data()
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 3, "val": 1, "test": 2}
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"video", "boxes", "ids", "hidden"}
    video, boxes, ids = batch["video"], batch["boxes"], batch["ids"]
    assert batch["hidden"].shape == ids.shape and batch["hidden"].dtype == torch.float32
    assert ((batch["hidden"] >= 0) & (batch["hidden"] <= 1)).all() and (batch["hidden"][ids < 0] == 0).all()
    assert video.shape == (2, 4, 3, 32, 32) and video.dtype == torch.float32
    assert boxes.shape == (2, 4, 3, 4) and boxes.dtype == torch.float32
    assert ids.shape == (2, 4, 3) and ids.dtype == torch.int64
    assert 0 <= video.min() and video.max() <= 1 and video.max() > 0.5
    real = ids >= 0
    assert real.any() and (boxes[~real] == 0).all() and ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[real][:, 2:] > boxes[real][:, :2]).all()
    assert len(list(dm.test_dataloader())) == 1 and len(list(dm.val_dataloader())) == 1
    assert str(dm.cache_dir).startswith(str(tmp_path / "data" / "dsprites"))


@pytest.mark.parametrize("background", ["black", "complex"])
def test_boxes_are_the_pixels_of_each_object_alone(tmp_path, background):
    dm = make_dm("dsprites", tmp_path, **{**TINY, "num_train": 4, "min_objects": 5, "max_objects": 8,
                                          "min_size": 6, "max_size": 10, "background": background})
    dm.setup()
    seen = check_ground_truth(dm, "train")
    assert seen["visible"] > 40 and seen["occluded_pixels"] > 0  # depth order occludes
    shapes = {int(s) for s in np.asarray(dm.datasets["train"].arrays["labels"]).ravel() if s >= 0}
    assert len(shapes) >= 3
    if background == "complex":  # the background moves
        video = dm.datasets["train"].arrays["video"][0]
        assert (video[0] != video[-1]).mean() > 0.5


def test_objects_entering_and_leaving_have_ground_truth_only_while_visible(tmp_path):
    dm = make_dm("dsprites", tmp_path, **{**TINY, "seq_len": 12, "num_train": 4, "min_objects": 2, "max_objects": 3,
                                          "entry_frames": [0, 3], "entry": "border", "exit_prob": 1.0,
                                          "min_speed": 3.0, "max_speed": 4.0})
    dm.setup()
    assert dm.max_num_objects == 6
    seen = check_ground_truth(dm, "train")
    assert seen["entered"] >= 2 and seen["left"] >= 2
    ids = np.asarray(dm.datasets["train"].arrays["ids"])
    for i in range(4):
        first_wave = int((dm.make_scene("train", i).births == 0).sum())
        assert (ids[i, :3, first_wave:] == -1).all()  # the second wave has no GT before it enters at t = 3
        assert (ids[i, 3:, first_wave:] >= 0).any()


def test_discovery_waves_enter_at_their_frames(tmp_path):
    dm = make_dm("dsprites", tmp_path, **{**TINY, "seq_len": 8, "min_objects": 2, "max_objects": 2,
                                          "entry_frames": [0, 5], "entry": "inside"})
    dm.setup()
    ids = np.asarray(dm.datasets["train"].arrays["ids"])
    assert ids.shape[-1] == 4
    assert (ids[:, :5, 2:] == -1).all() and (ids[:, 5:, 2:] >= 0).all() and (ids[:, :, :2] >= 0).all()


def test_seeded_and_reproducible(tmp_path):
    def arrays(root, **kw):
        dm = DSpritesDataModule(root=str(root), **{**TINY, **kw})
        dm.setup()
        return {k: np.asarray(v) for k, v in dm.datasets["train"].arrays.items()}, dm

    a, dm_a = arrays(tmp_path / "a", seed=3)
    b, _ = arrays(tmp_path / "b", seed=3)
    c, _ = arrays(tmp_path / "c", seed=4)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["video"], c["video"])
    # sequence i does not depend on the dataset size
    bigger = DSpritesDataModule(root=str(tmp_path / "d"), **{**TINY, "seed": 3, "num_train": 7})
    np.testing.assert_array_equal(bigger.make_scene("train", 2).render(1)[0], dm_a.make_scene("train", 2).render(1)[0])


def test_cache_is_atomic_reused_and_keyed_by_settings(tmp_path, monkeypatch):
    dm = make_dm("dsprites", tmp_path, **TINY)
    real = DSpritesDataModule.make_scene

    def crash(self, split, index):
        if split == "train" and index == 2:
            raise RuntimeError("killed mid-write")
        return real(self, split, index)

    monkeypatch.setattr(DSpritesDataModule, "make_scene", crash)
    with pytest.raises(RuntimeError):
        dm.prepare_data()
    assert not is_complete(dm.cache_dir / "train") and not (dm.cache_dir / "train").exists()
    assert not [p for p in dm.cache_dir.iterdir() if ".tmp" in p.name]  # the half-written copy is gone

    monkeypatch.setattr(DSpritesDataModule, "make_scene", real)
    dm.setup()
    stamp = (dm.cache_dir / "train" / "video.npy").stat().st_mtime_ns

    monkeypatch.setattr(DSpritesDataModule, "make_scene", crash)  # a second run reads the cache, generates nothing
    again = make_dm("dsprites", tmp_path, **TINY)
    again.setup()
    assert (again.cache_dir / "train" / "video.npy").stat().st_mtime_ns == stamp
    assert make_dm("dsprites", tmp_path, **{**TINY, "max_speed": 2.0}).cache_dir != dm.cache_dir
    assert make_dm("dsprites", tmp_path, **{**TINY, "batch_size": 3}).cache_dir == dm.cache_dir


def test_worker_processes_read_the_memory_maps(tmp_path):
    dm = make_dm("dsprites", tmp_path, **{**TINY, "num_workers": 1})
    dm.setup()
    batches = list(dm.train_dataloader())
    assert sum(len(b["video"]) for b in batches) == 3


@pytest.mark.parametrize("overrides, match", [
    ({"min_objects": 4, "max_objects": 2}, "data.min_objects"),
    ({"max_size": 40}, "data.max_size"),
    ({"entry_frames": [0, 9]}, "data.entry_frames"),
    ({"background": "noise"}, "data.background"),
    ({"num_val": 0}, "data.num_val"),
])
def test_bad_settings_fail_in_one_line(tmp_path, overrides, match):
    dm = make_dm("dsprites", tmp_path, **{**TINY, **overrides})  # constructors never raise: Hydra would wrap it
    with pytest.raises(ConfigError, match=match) as err:
        dm.validate()
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=match):
        dm.setup()
    assert not (tmp_path / "data").exists()


def test_root_that_is_a_file_is_a_data_error(tmp_path):
    (tmp_path / "file").write_text("x")
    dm = DSpritesDataModule(root=str(tmp_path / "file"), **TINY)
    with pytest.raises(DataError, match="data.root"):
        dm.validate()


def test_hidden_fraction_of_overlapping_objects():
    from scalor.datamodules.base import Scene, Sprite

    square = Sprite(np.full((4, 4, 3), 200, np.uint8), np.ones((4, 4), bool))
    # object 0 at (0, 0), object 1 half over it at (2, 0) and painted after it, object 2 born at t = 1
    corners = np.array([[[0, 0], [2, 0], [10, 10]], [[0, 0], [4, 0], [10, 10]]])
    scene = Scene([square, square, square], corners, births=np.array([0, 0, 1]), depth=np.array([0, 1, 2]),
                  img_size=16)
    np.testing.assert_allclose(scene.hidden(0), [0.5, 0.0, 0.0])  # half of object 0 is under object 1
    np.testing.assert_allclose(scene.hidden(1), [0.0, 0.0, 0.0])  # side by side; object 2 overlaps nothing
    scene.depth = np.array([1, 0, 2])  # object 0 in front now
    np.testing.assert_allclose(scene.hidden(0), [0.0, 0.5, 0.0])
