"""`python run.py` as a user runs it: exact resume after SIGKILL, and the default command end to end.
(DDP, multirun, Optuna and the launchers: tests/test_sweeps.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, tiny_cli

ENV = {**os.environ, "HYDRA_FULL_ERROR": "0", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# 8 training sequences in batches of 2: 4 steps per epoch; last.ckpt every 3 steps, so most saves are mid-epoch.
RESUME = ["trainer.deterministic=true", "seed=3", "trainer.max_steps=15", "trainer.log_every_n_steps=1",
          "callbacks.last_checkpoint.every_n_train_steps=3"]


def cli(tmp_path: Path, data_dir: Path, *overrides: str, flags: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "run.py", *flags, *tiny_cli(tmp_path, data_dir), *overrides]


def newest_run(root: Path) -> Path:
    runs = [p for p in (root / "outputs" / "quick").iterdir() if p.is_dir()]
    return max(runs, key=lambda p: p.name)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key])), key


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path, data_dir):
    # the uninterrupted reference run, which also exercises the end-of-run summary
    ref = subprocess.run(cli(tmp_path / "a", data_dir, *RESUME, "test_after_fit=true", "logger=csv"), cwd=ROOT,
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "task=fit finished" in ref.stdout and "test/mota" in ref.stdout and "checkpoints" in ref.stdout
    reference = load(newest_run(tmp_path / "a") / "checkpoints" / "last.ckpt")
    assert reference["global_step"] == 15

    # the same run, killed with SIGKILL as soon as its first checkpoint is on disk
    proc = subprocess.Popen(cli(tmp_path / "b", data_dir, *RESUME), cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if list((tmp_path / "b" / "outputs").glob("quick/*/checkpoints/last.ckpt")):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = load(newest_run(tmp_path / "b") / "checkpoints" / "last.ckpt")["global_step"]
    assert 0 < killed_at < 15

    resumed = subprocess.run(cli(tmp_path / "b", data_dir, *RESUME, "ckpt_path=last"), cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training_state(reference, load(newest_run(tmp_path / "b") / "checkpoints" / "last.ckpt"))


def test_stop_mid_epoch_then_resume_equals_uninterrupted_run(compose_cfg):
    """In-process twin of the SIGKILL test whose checkpoint is always mid-epoch (step 6 of 4-step epochs)."""
    from scalor.tasks import run

    common = [*RESUME, "test_after_fit=false"]
    full = compose_cfg(*common, run="full")
    run(full)
    part = compose_cfg(*common, "trainer.max_steps=7", run="part")
    run(part)
    assert load(Path(part.paths.ckpt_dir) / "last.ckpt")["global_step"] == 6
    rest = compose_cfg(*common, f"ckpt_path={Path(part.paths.ckpt_dir) / 'last.ckpt'}", run="rest")
    run(rest)
    assert_same_training_state(load(Path(full.paths.ckpt_dir) / "last.ckpt"),
                               load(Path(rest.paths.ckpt_dir) / "last.ckpt"))


@pytest.mark.slow
def test_default_command_trains_tests_and_summarises(tmp_path):
    """`python run.py` as in the README's quick start (only the output and data folders moved to tmp)."""
    proc = subprocess.run([sys.executable, "run.py", f"paths.output_root={tmp_path / 'outputs'}",
                           f"paths.data_dir={tmp_path / 'data'}"], cwd=ROOT,
                          env={k: v for k, v in ENV.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                                         "WANDB_SILENT")},
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in ("task=fit finished", "val/mota (best)", "test/mota", "checkpoints", "wandb sync", "media"):
        assert line in proc.stdout, line
    console = proc.stdout + proc.stderr  # quiet: no codec notices, no Lightning INFO lines, tips or wandb banners
    for noise in ("OpenCV: FFMPEG", "LeafSpec", "litlogger", "INFO:", "wandb:", "Warning", "warn("):
        assert noise not in console, (noise, console[-3000:])
    run_dir = newest_run(tmp_path)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and list(run_dir.glob("checkpoints/best-*.ckpt"))
    assert list(run_dir.glob("wandb/offline-run-*")) and list(run_dir.glob("media/step_*/test_tracking_*"))
