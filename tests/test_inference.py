"""Streaming tracking, conditional generation and checkpoint loading (scalor/inference.py)."""

from __future__ import annotations

from collections import defaultdict

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

import scalor.inference as inference
from conftest import OLD_EXECUTION, OLD_OFF, read_video
from scalor.errors import ConfigError, DataError, ScalorError
from scalor.inference import generate_videos, load_model, track_video
from scalor.model import SCALOR
from scalor.model.config import MOVED_OUT_OF_MODEL, MOVED_TO_EXECUTION, REMOVED_OPTIONS, upgrade_saved_config
from scalor.model.execution import ExecutionOptions
from scalor.tracking import BackfillTracker

torch.set_num_threads(1)

TINY = dict(img_size=64, num_cell_h=4, num_cell_w=4, glimpse_size=16, max_num_obj=6)


def tiny_model(seed: int = 0, pres_bias: float = 0.5) -> SCALOR:
    """An untrained tiny SCALOR whose discovery presence is raised so that it finds (and keeps) objects.

    The bias stays moderate: saturated presences tie at exactly 1 and the cap then keeps none of them.
    """
    torch.manual_seed(seed)
    model = SCALOR.from_config(**TINY)
    with torch.no_grad():
        model.discovery.proposal.pres_head[-1].bias.fill_(pres_bias)
    return model


def squares(n: int = 12, size: int = 64, log: list | None = None):
    """Three coloured squares moving on black, as float32 (3, H, W) frames; appends each index to ``log``."""
    for t in range(n):
        if log is not None:
            log.append(t)
        img = np.zeros((3, size, size), np.float32)
        for k, (x0, y0, c) in enumerate([(8, 10, (1, 0.2, 0.2)), (40, 36, (0.2, 1, 0.2)), (20, 44, (0.3, 0.3, 1))]):
            x, y = x0 + t, y0 + (t if k == 0 else -(t // 2))
            img[:, y:y + 10, x:x + 10] = np.array(c, np.float32)[:, None, None]
        yield img




def parse_mot(path):
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert all(len(r) == 10 and r[7:] == ["-1", "-1", "-1"] for r in rows)
    return [(int(r[0]), int(r[1]), *map(float, r[2:7])) for r in rows]


def test_track_video_writes_mot_and_video_with_persistent_ids(tmp_path):
    model = tiny_model()
    model.train()
    summary = track_video(model, squares(12), tmp_path, window=5, fps=8)
    assert model.training  # train mode restored

    rows = parse_mot(tmp_path / "tracks.txt")
    assert rows and summary["detections"] == len(rows) and summary["frames"] == 12
    frames_of = defaultdict(set)
    for frame, oid, x, y, w, h, conf in rows:
        assert 1 <= frame <= 12 and oid >= 1 and w > 0 and h > 0 and 0.5 < conf <= 1
        frames_of[oid].add(frame)
    assert {frame for frame, *_ in rows} == set(range(1, 13))  # something tracked in every frame
    # IDs persist over the whole video, across the window boundaries (after frames 5 and 10)
    assert any(f == set(range(1, 13)) for f in frames_of.values())
    assert all({5, 6, 10, 11} <= f for f in frames_of.values() if min(f) <= 5)
    assert summary["num_ids"] == len(frames_of) and summary["ids"] == sorted(frames_of)
    assert summary["max_objects"] <= TINY["max_num_obj"]
    # ids are never reused: each ID's frames are one run
    assert all(max(f) - min(f) + 1 == len(f) for f in frames_of.values())

    video = read_video(tmp_path / "tracks.mp4")
    assert len(video) == 12
    assert video[0].shape[0] >= 256 and video[0].shape[:2] == (256, 256)  # 64 px enlarged 4x
    assert summary["tracks_mp4"] == str(tmp_path / "tracks.mp4") and summary["frames_per_s"] > 0


def test_track_video_matches_one_window_run(tmp_path):
    """Streaming in windows gives the same tracks as one pass over the whole clip (the carry is complete)."""
    model = tiny_model()
    track_video(model, squares(12), tmp_path / "w5", window=5)
    track_video(model, squares(12), tmp_path / "w12", window=12)
    a = parse_mot(tmp_path / "w5" / "tracks.txt")
    b = parse_mot(tmp_path / "w12" / "tracks.txt")
    assert [r[:2] for r in a] == [r[:2] for r in b]
    np.testing.assert_allclose(np.array([r[2:] for r in a]), np.array([r[2:] for r in b]), atol=0.02)


def test_track_video_with_backfill_keeps_every_forward_row(tmp_path):
    """BackfillTracker in windows: every row of plain tracking is written again (same frame, ID and box); rows it
    adds come before their ID's first frame within its window."""
    model = tiny_model()
    track_video(model, squares(12), tmp_path / "plain", window=5)
    summary = track_video(model, squares(12), tmp_path / "backfill", window=5, tracker=BackfillTracker())
    plain = {(r[0], r[1]): r[2:6] for r in parse_mot(tmp_path / "plain" / "tracks.txt")}
    filled = {(r[0], r[1]): r[2:6] for r in parse_mot(tmp_path / "backfill" / "tracks.txt")}
    assert plain and set(plain) <= set(filled) and summary["frames"] == 12
    np.testing.assert_allclose([filled[k] for k in plain], [plain[k] for k in plain], atol=0.02)
    for frame, oid in set(filled) - set(plain):
        window = (frame - 1) // 5
        later = [f for f, i in plain if i == oid and (f - 1) // 5 == window]
        assert later and frame < min(later)


def test_track_video_streams_lazily(tmp_path, monkeypatch):
    """Frames are pulled a window at a time: never more than ``window`` ahead of what is written."""
    written = []

    class CountingWriter(inference.VideoWriter):
        def write(self, frame):
            written.append(1)
            super().write(frame)

    monkeypatch.setattr(inference, "VideoWriter", CountingWriter)
    pulled: list[int] = []
    ahead = []

    def frames():
        for t, f in enumerate(squares(13, log=pulled)):
            ahead.append(t + 1 - len(written))
            yield f

    summary = track_video(tiny_model(), frames(), tmp_path, window=4)
    assert summary["frames"] == 13 and len(pulled) == 13 and len(written) == 13
    assert max(ahead) <= 4  # last window is shorter (1 frame)
    assert len(read_video(tmp_path / "tracks.mp4")) == 13


def test_track_video_rejects_bad_frames(tmp_path):
    model = tiny_model()
    with pytest.raises(DataError, match="data.img_size=64"):
        track_video(model, iter([np.zeros((3, 32, 32), np.float32)]), tmp_path)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        track_video(model, iter([np.full((3, 64, 64), 255.0, np.float32)]), tmp_path)
    with pytest.raises(DataError, match="no frames"):
        track_video(model, iter([]), tmp_path)
    with pytest.raises(ConfigError, match="window"):
        track_video(model, squares(2), tmp_path, window=0)


@pytest.mark.parametrize("observe", [3, 0])
def test_generate_videos_writes_every_frame(tmp_path, observe):
    video = torch.from_numpy(np.stack(list(squares(6))))[None].repeat(2, 1, 1, 1, 1)
    model = tiny_model()
    paths = generate_videos(model, video, tmp_path, observe_frames=observe, fps=5, start_index=3)
    assert [p.name for p in paths] == ["generation_003.mp4", "generation_004.mp4"]
    for p in paths:
        frames = read_video(p)
        assert len(frames) == 6
        h, w = frames[0].shape[:2]
        assert w == 256 and h == 2 * 256 + 4  # real on top, model below (4x enlarged), separator
        # generated frames carry the red marker (BGR red) on the border of the lower half; observed ones do not
        marked = [f[h - 2, w // 2, 2] > 200 and f[h - 2, w // 2, 0] < 60 for f in frames]
        assert marked == [t >= observe for t in range(6)]
        assert cv2.imread(str(p.with_suffix(".png"))) is not None
    with pytest.raises(ConfigError, match="observe_frames"):
        generate_videos(model, video, tmp_path, observe_frames=6)


def _checkpoint(model: SCALOR, cfg: dict) -> dict:
    return {"hyper_parameters": {"model": cfg, "seed": 1},
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}


def test_load_model_round_trip(tmp_path):
    model = tiny_model(seed=3)
    ckpt = tmp_path / "m.ckpt"
    cfg = OmegaConf.create({"_target_": "scalor.model.SCALOR", **TINY, "z_pres_disc_threshold": 0.6})
    torch.save(_checkpoint(model, cfg), ckpt)
    loaded = load_model(ckpt)
    assert isinstance(loaded, SCALOR) and not loaded.training and loaded.z_pres_disc_threshold == 0.6
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_load_model_errors(tmp_path):
    with pytest.raises(ScalorError, match="is not a file"):
        load_model(tmp_path / "missing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ScalorError, match="cannot be read"):
        load_model(bad)
    model = tiny_model()
    no_cfg = tmp_path / "nocfg.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"seed": 1}}, no_cfg)
    with pytest.raises(ScalorError, match="has no model config"):
        load_model(no_cfg)
    unknown = tmp_path / "unknown.ckpt"
    torch.save(_checkpoint(model, {**TINY, "warp_drive": True}), unknown)
    with pytest.raises(ScalorError, match="warp_drive"):
        load_model(unknown)
    mismatch = tmp_path / "mismatch.ckpt"
    torch.save(_checkpoint(model, {**TINY, "glimpse_size": 32}), mismatch)
    with pytest.raises(ScalorError, match="do not fit"):
        load_model(mismatch)
    no_weights = tmp_path / "noweights.ckpt"
    torch.save({"hyper_parameters": {"model": TINY}, "state_dict": {"other.x": torch.zeros(1)}}, no_weights)
    with pytest.raises(ScalorError, match="no model weights"):
        load_model(no_weights)


OLD_ON = [("reverse_init", True, "true"), ("inference_duplicate_min_iou", 0.3, "0.3"),
          ("train_skip_glimpse_below", 0.02, "0.02"), ("track_duplicate_iou", 0.8, "0.8"),
          ("reject_min_iou", 0.3, "0.3"), ("duplicate_ratio_threshold", 0.6, "0.6"), ("duplicate_copy_iou", 0.5, "0.5")]


def test_upgrade_saved_config_drops_the_run_options_of_older_checkpoints():
    """checkpoint_*, channels_last, fixed_slots, compile, skip_glimpse_below: the execution group's now; an older
    checkpoint's values are dropped whatever they were (they never changed the weights)."""
    assert set(MOVED_TO_EXECUTION) == set(OLD_EXECUTION) == set(ExecutionOptions.keys())
    cfg = {"_target_": "scalor.model.SCALOR", **TINY, "box_source": "where"}
    assert upgrade_saved_config({**cfg, **OLD_EXECUTION}) == cfg
    assert upgrade_saved_config({**cfg, **OLD_OFF, **OLD_EXECUTION, "compile": True}) == cfg


# Tracking, test and generation options as checkpoints written before the tracker group saved them (any values).
TRACKING_ON = {"backfill": True, "backfill_copy_iou": 0.6, "pick_direction": True, "pick_views": 8,
               "deterministic": True, "nll_samples": 5, "observe_frames": 3}


def test_checkpoint_with_the_old_tracking_options_loads_without_them(tmp_path):
    """backfill, backfill_copy_iou, pick_direction, pick_views, deterministic, nll_samples, observe_frames: an
    older checkpoint's values are dropped whatever they were (they never changed the weights); the model has none
    of them."""
    assert set(MOVED_OUT_OF_MODEL) == set(TRACKING_ON)
    cfg = {"_target_": "scalor.model.SCALOR", **TINY, "box_source": "where"}
    assert upgrade_saved_config({**cfg, **TRACKING_ON, **OLD_OFF}) == cfg
    model = tiny_model(seed=3)
    old = tmp_path / "old.ckpt"
    torch.save(_checkpoint(model, OmegaConf.create({**cfg, **TRACKING_ON})), old)
    loaded = load_model(old)
    assert not any(hasattr(loaded, key) for key in TRACKING_ON)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_load_model_of_a_checkpoint_with_run_options_applies_the_given_ones(tmp_path):
    """An older checkpoint's saved run options are dropped; load_model runs the model with ``execution``."""
    model = tiny_model(seed=3)
    old = tmp_path / "old.ckpt"
    torch.save(_checkpoint(model, {"_target_": "scalor.model.SCALOR", **TINY, **OLD_EXECUTION}), old)
    loaded = load_model(old)
    run_options = lambda m: (m.checkpoint_decoder, m.checkpoint_encoder, m.channels_last, m.fixed_slots,  # noqa: E731
                             m.compile, m.skip_glimpse_below)
    assert run_options(loaded) == run_options(ExecutionOptions().apply(SCALOR.from_config(**TINY)))
    assert (loaded.checkpoint_decoder, loaded.skip_glimpse_below, loaded.channels_last) == (False, 0.0, True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    loaded = load_model(old, execution={"channels_last": False, "skip_glimpse_below": 0.2, "fixed_slots": True})
    assert (loaded.channels_last, loaded.skip_glimpse_below, loaded.fixed_slots) == (False, 0.2, True)
    w = next(p for p in loaded.glimpse_decoder.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert w.is_contiguous()
    with pytest.raises(ConfigError, match="execution.fixed_slots='always'"):
        load_model(old, execution={"fixed_slots": "always"})


def test_upgrade_saved_config_drops_removed_options_that_were_off():
    assert REMOVED_OPTIONS == OLD_OFF
    cfg = {"_target_": "scalor.model.SCALOR", **TINY, "box_source": "where"}
    assert upgrade_saved_config({**cfg, **OLD_OFF}) == cfg
    assert upgrade_saved_config({**cfg, "track_duplicate_iou": 0}) == cfg  # an int 0 is off as well
    assert upgrade_saved_config(cfg) == cfg  # a current config passes as it is


# not the off value either: 0 for a flag, 0 where null meant off (0 is a threshold there)
NOT_OFF = [("reverse_init", 0, "0"), ("duplicate_ratio_threshold", 0.0, "0.0"), ("inference_duplicate_min_iou", 0, "0")]


@pytest.mark.parametrize("key,value,shown", OLD_ON + NOT_OFF)
def test_upgrade_saved_config_refuses_a_removed_option_that_was_on(key, value, shown):
    """A removed option saved with any value but its off value: the checkpoint ran a code path that is gone."""
    with pytest.raises(ConfigError) as err:
        upgrade_saved_config({**TINY, **OLD_OFF, key: value})
    assert str(err.value) == (f"checkpoint trained with model.{key}={shown}, an option that no longer exists; use "
                              "an earlier version of scalor to evaluate it.")


def test_load_model_of_a_checkpoint_with_removed_options(tmp_path):
    """A checkpoint written before the options were removed loads where they were off (the same network and
    weights); one that switched an option on stops with one line naming it."""
    model = tiny_model(seed=3)
    old = tmp_path / "old.ckpt"
    torch.save(_checkpoint(model, OmegaConf.create({"_target_": "scalor.model.SCALOR", **TINY, **OLD_OFF})), old)
    loaded = load_model(old)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    video = torch.from_numpy(np.stack(list(squares(4))))[None]
    model.eval()
    with torch.no_grad():
        a, b = model(video, track_only=True, deterministic=True), loaded(video, track_only=True, deterministic=True)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.boxes, b.boxes)
    for key, value, shown in OLD_ON:
        on = tmp_path / f"{key}.ckpt"
        torch.save(_checkpoint(model, {**TINY, **OLD_OFF, key: value}), on)
        with pytest.raises(ConfigError) as err:
            load_model(on)
        text = str(err.value)
        assert text == (f"checkpoint {on} was trained with model.{key}={shown}, an option that no longer exists; "
                        "use an earlier version of scalor to evaluate it.")
        assert "\n" not in text


def test_load_model_from_lit_module_checkpoint(tmp_path):
    """The contract with SCALORLitModule: its checkpoint rebuilds the same network."""
    lit_module = pytest.importorskip("scalor.lit_module")
    cfg = OmegaConf.create({"data": {"img_size": 64},
                            "model": {"_target_": "scalor.model.SCALOR", **TINY, "img_size": "${data.img_size}"}})
    module = lit_module.SCALORLitModule(model=cfg.model)
    clips = [{"video": torch.from_numpy(np.stack(list(squares(3))))} for _ in range(2)]
    trainer = L.Trainer(max_steps=1, logger=False, accelerator="cpu", devices=1, default_root_dir=tmp_path,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, DataLoader(clips, batch_size=2))
    trainer.save_checkpoint(tmp_path / "fit.ckpt")
    loaded = load_model(tmp_path / "fit.ckpt")
    assert loaded.img_hw == (64, 64)
    for k, v in module.model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
