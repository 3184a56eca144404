"""Data configs and experiments compose, and helpers shared by the tests/test_data_*.py files."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from scalor.model import SCALORConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
SPRITE_EXPERIMENTS = ["dsprites_easy", "dsprites_crowded", "dsprites_dense", "dsprites_discovery",
                      "dsprites_background", "mnist_crowded"]
EXPERIMENTS = [*SPRITE_EXPERIMENTS, "grand_central"]


def data_config(name: str, tmp_path: Path, **overrides) -> DictConfig:
    """conf/data/<name>.yaml under `data` with paths.data_dir in tmp_path; unknown override keys fail, as in Hydra."""
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path / "data")},
                            "data": OmegaConf.load(CONF / "data" / f"{name}.yaml")})
    OmegaConf.set_struct(cfg, True)
    return OmegaConf.merge(cfg, {"data": {"num_workers": 0, **overrides}})


def make_dm(name: str, tmp_path: Path, **overrides):
    """The DataModule of conf/data/<name>.yaml, instantiated as the framework does, with tiny overrides."""
    return hydra.utils.instantiate(data_config(name, tmp_path, **overrides).data)


def check_ground_truth(dm, split: str) -> dict[str, int]:
    """Assert the cached video and ground truth of ``split`` equal a re-render of each scene, and that each GT box
    is exactly the bounding box of the object's pixels when it is rendered alone (no GT iff no pixel in frame).
    The hidden fraction of each object is that of its pixels which objects later in the paint order draw too.
    Returns counts of what was seen (visible object-frames, occluded pixels, objects that entered or left)."""
    arrays = dm.datasets[split].arrays
    seen = {"visible": 0, "occluded_pixels": 0, "entered": 0, "left": 0}
    for i in range(len(arrays["video"])):
        scene = dm.make_scene(split, i)
        n = len(scene.sprites)
        assert (arrays["ids"][i, :, n:] == -1).all() and (arrays["boxes"][i, :, n:] == 0).all()
        assert (arrays["hidden"][i, :, n:] == 0).all()
        for t in range(dm.seq_len):
            frame = scene.render(t)[0]
            np.testing.assert_array_equal(arrays["video"][i, t], frame.transpose(2, 0, 1))
            masks = [scene.render(t, only=[k], with_background=False)[0].any(-1) for k in range(n)]
            for k in range(n):
                alone = masks[k]
                gt_id, box = arrays["ids"][i, t, k], arrays["boxes"][i, t, k]
                if not alone.any():
                    assert gt_id == -1 and (box == 0).all() and arrays["hidden"][i, t, k] == 0, (i, t, k)
                    continue
                in_front = list(scene.depth).index(k) + 1
                front = np.any([masks[j] for j in scene.depth[in_front:]] + [np.zeros_like(alone)], axis=0)
                assert arrays["hidden"][i, t, k] == pytest.approx((alone & front).sum() / alone.sum(), abs=1e-6)
                rows, cols = np.flatnonzero(alone.any(1)), np.flatnonzero(alone.any(0))
                expected = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]) / dm.img_size
                assert gt_id == k, (i, t, k)
                np.testing.assert_allclose(box, expected, atol=1e-6)
                solo = scene.render(t, only=[k])[0]
                seen["visible"] += 1
                seen["occluded_pixels"] += int((frame[alone] != solo[alone]).any(-1).sum())
        visible = arrays["ids"][i, :, :n] >= 0  # (T, n)
        for k in range(n):
            frames = np.flatnonzero(visible[:, k])
            if frames.size:  # an object is visible during one contiguous interval: it enters once, leaves once
                assert frames[-1] - frames[0] + 1 == frames.size, (i, k, frames)
                seen["entered"] += int(frames[0] > 0)
                seen["left"] += int(frames[-1] < dm.seq_len - 1)
    return seen


def _experiment(name: str) -> tuple[str, dict]:
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.splitlines()[0] == "# @package _global_"
    return text, yaml.safe_load(text)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_files_override_known_keys(name, tmp_path):
    _, exp = _experiment(name)
    overrides = {k: v for d in exp["defaults"] for k, v in d.items()}
    source = overrides["override /data"]
    assert overrides["override /grid"] in ("4x4", "8x8", "16x16")
    if (CONF / "grid").is_dir():
        assert (CONF / "grid" / f"{overrides['override /grid']}.yaml").is_file()
    assert set(exp["model"]) <= set(SCALORConfig.keys()), set(exp["model"]) - set(SCALORConfig.keys())
    dm = make_dm(source, tmp_path, **exp.get("data", {}))  # struct merge: unknown data keys fail here
    assert dm.img_size in (64, 128)
    if name == "grand_central":
        assert dm.img_size == 128 and exp["model"]["max_num_obj"] == 45
    else:
        assert exp["model"]["max_num_obj"] >= dm.max_num_objects
        dm.validate()


@pytest.mark.parametrize("name", SPRITE_EXPERIMENTS)
def test_experiment_box_anchors_reach_the_sprites(name, tmp_path):
    """The model's box parametrisation (docs/model.md §2.2) can express the boxes of the generated objects: with
    model.box_source=where the glimpse box is the reported box and must be able to fit each object; with mask
    (boxes of the drawn pixels) a glimpse box only has to be able to contain the object."""
    _, exp = _experiment(name)
    model = SCALORConfig.from_mapping(exp["model"])  # the experiment's options over the defaults
    dm = make_dm(exp["defaults"][0]["override /data"], tmp_path, **exp.get("data", {}))
    boxes = np.array([s.mask.shape for i in range(4) for s in dm.make_scene("train", i).sprites], float)  # (h, w)
    size, ratio = np.sqrt(boxes.prod(1)) / dm.img_size, boxes[:, 0] / boxes[:, 1]
    if model.box_source == "where":
        fits = (abs(size - model.size_anc) < model.var_s) & (abs(ratio - model.ratio_anc) < model.var_anc)
    else:  # some box (s, r) of the range has sx = s / sqrt(r) >= w and sy = s * sqrt(r) >= h
        s_max, (h, w) = model.size_anc + model.var_s, (boxes / dm.img_size).T
        low, high = np.maximum(model.ratio_anc - model.var_anc, (h / s_max) ** 2), \
            np.minimum(model.ratio_anc + model.var_anc, (s_max / w) ** 2)
        fits = low <= high
    reach = fits.mean()
    assert reach >= (0.95 if name.startswith("mnist") else 0.99), reach


@pytest.mark.skipif(not (CONF / "config.yaml").is_file(), reason="the framework's conf/config.yaml is not there yet")
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiments_compose_with_the_framework_config(name, tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}", f"paths.data_dir={tmp_path}"])
    assert cfg.model.img_size == cfg.data.img_size
    assert str(cfg.data.root).startswith(str(tmp_path))
    assert hydra.utils.instantiate(cfg.data).img_size == cfg.data.img_size
