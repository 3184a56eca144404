"""The Lightning + Hydra framework end to end on tiny configs: every experiment trains a step, the non-finite
guard keeps the last good checkpoint, checkpoints are written atomically, resumable loaders and logging."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import experiments
from scalor.callbacks import AtomicCheckpointIO
from scalor.errors import ConfigError, ScalorError
from scalor.model import SCALOR
from scalor.resume import EpochRandomSampler, ResumableDataLoader, make_resumable, step_seed
from scalor.tasks import build_module, run
from scalor.tracking import OnlineTracker, PickTracker


def grand_central_frames(folder: Path, n: int = 60) -> Path:
    """n integer-named 96x64 PNG frames of a moving square (enough for 32 px crops, 3 frames, skip 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((64, 96, 3), 30, np.uint8)
        cv2.rectangle(img, (i % 80, 20), (i % 80 + 10, 30), (0, 200, 255), -1)
        cv2.imwrite(str(folder / f"{i:06d}.png"), img)
    return folder


def experiment_overrides(name: str, tmp_path: Path) -> list[str]:
    if name == "grand_central":
        root = grand_central_frames(tmp_path / "frames")
        return [f"data.root={root}", "data.crop_size=32", "data.frame_skip=1", "data.num_val=2"]
    return []


@pytest.mark.parametrize("name", experiments())
def test_every_experiment_runs_fast_dev_run(compose_cfg, tmp_path, name):
    cfg = compose_cfg(f"experiment={name}", "trainer.fast_dev_run=true", "test_after_fit=true",
                      *experiment_overrides(name, tmp_path))
    value = run(cfg)
    assert value is None or isinstance(value, float)


def test_fit_then_test_and_resume_from_last(compose_cfg, tmp_path, capsys):
    cfg = compose_cfg("trainer.max_steps=4", "callbacks.last_checkpoint.every_n_train_steps=1", "trainer.log_every_n_steps=1",
                      "test_after_fit=true", "logger=csv")
    value = run(cfg)
    assert math.isfinite(value)  # val/mota of the best checkpoint
    out_dir = Path(cfg.paths.output_dir)
    ckpts = out_dir / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and list(ckpts.glob("best-*.ckpt"))
    assert not list(ckpts.glob(".*.part"))
    assert list(out_dir.glob("media/step_4/test_tracking_*.mp4")) and list(out_dir.glob("media/step_4/test_panels_*.png"))
    assert (out_dir / "csv" / "version_0" / "metrics.csv").is_file()
    out = capsys.readouterr().out
    assert "task=fit finished" in out and "test/mota" in out and "checkpoints" in out and "media" in out
    record = json.loads((out_dir / "summary.json").read_text())
    assert record["tracker"] == "online"  # the default tracker reported the test's tracks
    summary = record["metrics"]
    kinds = ("hidden", "in_matched", "in_unmatched", "free")  # the breakdown adds up to the tracking metric's misses
    assert sum(summary[f"test/errors/misses/{k}"] for k in kinds) == summary["test/errors/misses"] == summary["test/misses"]
    assert summary["test/errors/false_positives"] == summary["test/false_positives"]
    state = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 4 and state["hyper_parameters"]["model"]["num_cell_h"] == 4
    metrics = (out_dir / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    for key in ("train/neg_elbo", "train/log_like", "train/kl_what", "train/kl_where", "train/kl_depth",
                "train/kl_pres", "train/kl_bg", "train/count", "schedule/tau", "schedule/z_pres_prior",
                "val/neg_elbo", "val/mota", "val/idf1", "val/count_acc", "lr-RMSprop"):
        assert key in metrics, key

    # task=test with ckpt_path=last evaluates the newest checkpoint of this experiment
    value = run(compose_cfg("task=test", "ckpt_path=last", run="test"))
    assert isinstance(value, float)
    # task=fit with ckpt_path=last resumes and continues to the new max_steps
    resumed = compose_cfg("ckpt_path=last", "trainer.max_steps=6", run="resumed")
    run(resumed)
    state = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    assert state["global_step"] == 6


def test_generate_and_track_write_videos(compose_cfg, tmp_path):
    run(compose_cfg("trainer.max_steps=1"))
    cfg = compose_cfg("task=generate", "ckpt_path=last", "observe_frames=1", run="gen")
    paths = run(cfg)
    assert len(paths) == 2 and all(p.stat().st_size > 0 and p.with_suffix(".png").is_file() for p in paths)
    frames = grand_central_frames(tmp_path / "clip", n=7)
    cfg = compose_cfg("task=track", "experiment=quick", "ckpt_path=last", "data=video", f"data.path={frames}",
                      run="track")
    stats = run(cfg)
    out = Path(cfg.paths.output_dir)
    assert stats["frames"] == 7 and (out / "tracks.mp4").stat().st_size > 0
    lines = (out / "tracks.txt").read_text().splitlines()
    assert len(lines) == stats["detections"] and all(len(line.split(",")) == 10 for line in lines)


def test_checkpoint_of_another_grid_is_refused_for_test(compose_cfg):
    run(compose_cfg("trainer.max_steps=1"))
    with pytest.raises(ScalorError, match="grid.num_cell_h=4 but this config has 8"):
        run(compose_cfg("task=test", "ckpt_path=last", "grid=8x8", run="other"))


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_nonfinite_guard_keeps_the_last_good_checkpoint(compose_cfg, tmp_path, monkeypatch, where):
    forward = SCALOR.forward
    calls = {"n": 0}

    def poisoned(self, video, *args, **kwargs):
        out = forward(self, video, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 4:  # the 4th optimiser step (global_step 3)
                if where == "loss":
                    out.log_like = out.log_like * float("nan")
                else:  # finite loss, NaN gradients: d sqrt(x)/dx at 0 is inf, times 0
                    p = next(self.parameters())
                    out.log_like = out.log_like + torch.sqrt(p.sum() * 0.0)
        return out

    monkeypatch.setattr(SCALOR, "forward", poisoned)
    cfg = compose_cfg("trainer.max_steps=6", "callbacks.last_checkpoint.every_n_train_steps=2",
                      "trainer.check_val_every_n_epoch=100")
    with pytest.raises(ScalorError) as err:
        run(cfg)
    message = str(err.value)
    assert re.search(rf"non-finite {'loss' if where == 'loss' else 'gradient norm'} \(nan\) at step 3 ", message)
    assert "last.ckpt" in message and "\n" not in message
    ckpts = Path(cfg.paths.ckpt_dir)
    state = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert not list(ckpts.glob(".*.part"))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, target)
    before = target.read_bytes()

    def crash(obj, f, *args, **kwargs):  # a partial write, then the process "dies"
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        io.save_checkpoint({"w": torch.zeros(3)}, target)
    assert target.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temp file left
    monkeypatch.undo()
    assert torch.equal(io.load_checkpoint(target)["w"], torch.ones(3))


def test_resumable_loader_skips_served_batches_and_reshuffles_per_epoch():
    data = TensorDataset(torch.arange(20))
    loader = make_resumable(DataLoader(data, batch_size=3, shuffle=True), seed=7)
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader.sampler, EpochRandomSampler)
    epoch0 = [b[0].tolist() for b in loader]
    loader.sampler.set_epoch(1)
    epoch1 = [b[0].tolist() for b in loader]
    assert epoch0 != epoch1 and sorted(sum(epoch0, [])) == list(range(20))

    # interrupted after 2 batches of epoch 1: a fresh loader restored from the state continues exactly
    loader.sampler.set_epoch(1)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 1, "served": 2}
    fresh = make_resumable(DataLoader(data, batch_size=3, shuffle=True), seed=7)
    fresh.load_state_dict(state)
    assert [b[0].tolist() for b in fresh] == epoch1[2:]
    # a completed epoch resumes at the start of the next one
    fresh.load_state_dict({"epoch": 1, "served": len(fresh)})
    assert fresh.sampler.epoch == 2 and len([b for b in fresh]) == len(fresh)


def test_step_seed_mixes_all_positions():
    seeds = {step_seed(666, step, rank) for step in range(50) for rank in range(2)}
    assert len(seeds) == 100 and all(0 <= s < 2**63 for s in seeds)
    assert step_seed(666, 3, 0) == step_seed(666, 3, 0)


def test_module_schedule_and_optimisers(compose_cfg):
    cfg = compose_cfg("scheduler={_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, step_size: 10}")
    module = build_module(cfg)
    assert module.schedule() == module.curriculum.at(0)
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.RMSprop)
    assert config["optimizer"].param_groups[0]["lr"] == cfg.optimizer.lr
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert config["lr_scheduler"]["interval"] == "step"


def test_training_clips_are_random_windows_of_the_batch(compose_cfg):
    module = build_module(compose_cfg("train_seq_len=3"))
    video = torch.arange(8.0).view(1, 8, 1, 1, 1).expand(2, 8, 3, 4, 4)
    starts = set()
    for step in range(20):
        torch.manual_seed(step)
        clip = module.training_clip(video)
        assert clip.shape == (2, 3, 3, 4, 4)
        first = int(clip[0, 0, 0, 0, 0])
        assert clip[:, :, 0, 0, 0].tolist() == [[first, first + 1, first + 2]] * 2  # consecutive, whole batch
        starts.add(first)
    assert starts == set(range(6))  # every window occurs
    torch.manual_seed(5)
    again = module.training_clip(video)
    torch.manual_seed(5)
    assert torch.equal(again, module.training_clip(video))  # the per-step seed decides: resume stays exact
    assert build_module(compose_cfg()).training_clip(video) is video  # unset: whole sequences


@pytest.mark.parametrize("mode", ["deterministic", "sampled"])
def test_tracking_metrics_score_the_configured_inference(compose_cfg, mode):
    module = build_module(compose_cfg(f"tracking_inference={mode}", "model.max_num_obj=4")).eval()
    video = torch.rand(2, 3, 3, 64, 64)
    batch = {"video": video, "boxes": torch.tensor([0.1, 0.1, 0.4, 0.4]).expand(2, 3, 1, 4).clone(),
             "ids": torch.ones(2, 3, 1, dtype=torch.long)}
    seen = []
    module.mot["val"].update = lambda boxes, ids, *_: seen.append((boxes, ids))
    with torch.no_grad():
        torch.manual_seed(0)
        out = module._evaluate("val", batch)
        torch.manual_seed(0)
        again = module.model(video, module.schedule())  # the ELBO's pass is the sampled one either way
        det = module.track(video)
    assert torch.allclose(out.neg_elbo, again.neg_elbo)
    assert isinstance(module.tracker, OnlineTracker) and not module.model.training  # eval mode comes back
    with torch.no_grad():
        online = module.model(video, module.schedule(), track_only=True, deterministic=True)
    assert torch.equal(det.boxes, online.boxes) and torch.equal(det.ids, online.ids)
    expected = det if mode == "deterministic" else out
    boxes, ids = seen[0]
    assert torch.equal(boxes, expected.boxes)
    assert torch.equal(ids, torch.where(expected.presence > 0.5, expected.ids, -1))


def test_fit_validation_tracker_applies_inside_fit_only(compose_cfg, monkeypatch):
    """fit_val_tracker tracks the validations of task=fit; the test after the fit tracks with `tracker`."""
    seen = []
    real = PickTracker.track
    monkeypatch.setattr(PickTracker, "track", lambda self, *a: seen.append(self.views) or real(self, *a))
    cfg = compose_cfg("trainer.max_steps=1", "trainer.val_check_interval=1", "trainer.check_val_every_n_epoch=null",
                      "tracker=pick", "tracker.views=2", "tracker@fit_val_tracker=pick", "fit_val_tracker.views=1",
                      "test_after_fit=true", "model.max_num_obj=4")
    run(cfg)
    assert seen == [1, 2]  # one validation batch in the fit, one test batch (2 sequences each)
    seen.clear()
    run(compose_cfg("trainer.max_steps=1", "trainer.val_check_interval=1", "trainer.check_val_every_n_epoch=null",
                    "tracker=pick", "tracker.views=2", "test_after_fit=true", "model.max_num_obj=4", run="same"))
    assert seen == [2, 2]  # fit_val_tracker null: the validation tracks with `tracker`
    with pytest.raises(ConfigError, match="fit_val_tracker.views=3 must be one of 1, 2, 4, 8"):
        run(compose_cfg("tracker@fit_val_tracker=pick", "fit_val_tracker.views=3"))
    with pytest.raises(ConfigError, match="fit_val_tracker must be a tracker"):
        run(compose_cfg("fit_val_tracker={_target_:scalor.model.SCALOR}"))


def test_wandb_offline_run_is_finished(compose_cfg, tmp_path):
    wandb = pytest.importorskip("wandb")
    cfg = compose_cfg("logger=wandb", "trainer.max_steps=1", "test_after_fit=false")
    run(cfg)
    assert wandb.run is None  # finished, so the next run (multirun job) gets its own
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1


EMA_ON = ["+callbacks.ema._target_=scalor.callbacks.EMA", "+callbacks.ema.decay=0.5"]


def test_ema_weights_are_validated_checkpointed_and_tested(compose_cfg, monkeypatch):
    from scalor.lit_module import SCALORLitModule
    seen = {}

    def record_test_weights(self):
        seen["test"] = {k: v.detach().clone() for k, v in self.state_dict().items()}

    monkeypatch.setattr(SCALORLitModule, "on_test_start", record_test_weights, raising=False)
    cfg = compose_cfg("trainer.max_steps=3", "trainer.val_check_interval=3", "test_after_fit=true", *EMA_ON)
    run(cfg)
    ckpts = Path(cfg.paths.output_dir) / "checkpoints"
    best_path = next(ckpts.glob("best-*.ckpt"))
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    raw, avg = best["current_model_state"], best["state_dict"]
    assert any(not torch.equal(raw[k], avg[k]) for k in avg)  # an average, not the raw weights
    assert all(torch.equal(seen["test"][k], avg[k]) for k in avg)  # the test after fit ran on the average
    # task=test of that checkpoint evaluates the average too (no raw weights put back outside fitting)
    seen.clear()
    run(compose_cfg("task=test", f"ckpt_path={best_path}", *EMA_ON, run="test"))
    assert all(torch.equal(seen["test"][k], avg[k]) for k in avg)
    # resuming a fit restores the raw weights under training and the average beside them
    resumed = compose_cfg("ckpt_path=last", "trainer.max_steps=4", *EMA_ON, run="resumed")
    run(resumed)
    last = torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert last["global_step"] == 4
