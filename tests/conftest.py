"""Shared fixtures: the real Hydra configs composed with tiny overrides (small images, few steps, CPU, no
logger, every output under tmp), for tests that run the framework end to end."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle threads sleep (shared CPUs)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

import scalor  # noqa: E402,F401  (registers conf/model's schema and the ${scalor.*} resolvers before any compose)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

torch.set_num_threads(1)  # 2 shared cores: one thread per test process is fastest overall
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# Small enough for one CPU thread, valid for every experiment (64 px, 16 px glimpses, 3 frames).
TINY = ["trainer=cpu", "logger=none", "data.img_size=64", "data.seq_len=3", "data.batch_size=2",
        "data.num_workers=0", "model.glimpse_size=16", "trainer.num_sanity_val_steps=0",
        "trainer.enable_model_summary=false", "test_after_fit=false"]
# Set where the data config has the key (generated sets).
TINY_DATA = {"num_train": 8, "num_val": 2, "num_test": 2}
# Removed model options as checkpoints written before their removal saved them (off: conf/model/scalor.yaml then).
OLD_OFF = {"reverse_init": False, "inference_duplicate_min_iou": None, "train_skip_glimpse_below": 0.0,
           "track_duplicate_iou": 0.0, "reject_min_iou": 0.0, "duplicate_ratio_threshold": None,
           "duplicate_copy_iou": 0.0}
# Tracking, test and generation options as checkpoints written before the tracker group saved them in the model
# config (dsprites_easy's values; any values: they never changed the weights).
OLD_TRACKING = {"backfill": True, "backfill_copy_iou": 0.7, "pick_direction": True, "pick_views": 8,
                "deterministic": False, "nll_samples": 1, "observe_frames": 5}
# Run options as checkpoints written before the execution group saved them in the model config (any values: they
# never changed the weights).
OLD_EXECUTION = {"checkpoint_decoder": True, "checkpoint_encoder": "auto", "channels_last": False,
                 "fixed_slots": False, "compile": False, "skip_glimpse_below": 0.1}


def experiments() -> list[str]:
    """The experiment files present now (so new ones are covered as they land)."""
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def tiny_data(cfg: DictConfig) -> None:
    with open_dict(cfg):
        for key, value in TINY_DATA.items():
            if key in cfg.data:
                cfg.data[key] = value
        if "entry_frames" in cfg.data:  # entry waves must fall inside the shortened sequences
            cfg.data.entry_frames = [t for t in cfg.data.entry_frames if t < cfg.data.seq_len] or [0]


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One generated-data cache for the whole session."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def compose_cfg(tmp_path, data_dir):
    """compose_cfg(*overrides, tiny=True, run="run") -> the composed config (HydraConfig set); the run folder
    is ``tmp_path/outputs/<experiment>/<run>``, as `python run.py` lays it out, so ckpt_path=last finds it."""

    def _compose(*overrides: str, tiny: bool = True, run: str = "run") -> DictConfig:
        base = [f"paths.output_root={tmp_path / 'outputs'}", f"paths.data_dir={data_dir}"]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("config", overrides=[*base, *(TINY if tiny else []), *overrides],
                          return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):  # the task function sees the job config only, as under @hydra.main
            del cfg["hydra"]
        if not any(o.startswith("paths.output_dir=") for o in overrides):
            cfg.paths.output_dir = str(tmp_path / "outputs" / cfg.name / run)
        if tiny:
            tiny_data(cfg)
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        return cfg

    return _compose


def tiny_cli(tmp_path: Path, data_dir: Path) -> list[str]:
    """The same tiny overrides for `python run.py` subprocesses."""
    return [f"paths.output_root={tmp_path / 'outputs'}", f"paths.data_dir={data_dir}", *TINY,
            *(f"data.{k}={v}" for k, v in TINY_DATA.items())]


def read_video(path) -> list:
    """Every frame of a video file, as OpenCV reads them (BGR uint8 arrays)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames
