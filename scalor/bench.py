"""``python -m scalor.bench [overrides]``: speed and memory of SCALOR for one configuration.

The config is the project's (conf/config.yaml) with the same overrides, plus ``bench.*``
(conf/bench.yaml). Input is synthetic moving shapes generated in memory. The warm-up steps are
excluded; the last line printed is one JSON object (docs/model.md §7.6).

    python -m scalor.bench data.img_size=128 grid=8x8 data.batch_size=1 data.seq_len=10 \
        model.max_num_obj=45 bench.steps=5 bench.mode=train
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from scalor.errors import ScalorError
from scalor.model import SCALOR
from scalor.model.config import check_overrides
from scalor.model.execution import execution_options
from scalor.summary import hardware
from scalor.tracking import OnlineTracker
from scalor.tracking.trackers import build_tracker

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _render_frames(data_cfg: dict, img_size: int, seq_len: int, batch_size: int, seed: int) -> np.ndarray:
    """(B, T, H, W, 3) uint8 moving sprites from the data config's generator (dSprites of that size otherwise)."""
    from scalor.datamodules import DSpritesDataModule, SpriteSceneDataModule

    with tempfile.TemporaryDirectory() as tmp:
        data_cfg["root"] = tmp
        try:
            dm = instantiate(data_cfg)
        except Exception:  # noqa: BLE001 - any data source: fall back to dSprites of the same size
            dm = None
        if not isinstance(dm, SpriteSceneDataModule):
            dm = DSpritesDataModule(root=tmp, img_size=img_size, seq_len=seq_len, batch_size=batch_size, seed=seed)
        return np.stack([
            np.stack([scene.render(t)[0] for t in range(dm.seq_len)])
            for scene in (dm.make_scene("train", i) for i in range(batch_size))
        ])


def synthetic_video(cfg: DictConfig, seed: int) -> torch.Tensor:
    """(B, T, 3, H, W) float moving sprites, rendered by the dSprites generator in a child process: the data
    modules import Lightning (about 180 MB), which the measured process then does not hold."""
    args = [OmegaConf.to_container(cfg.data, resolve=False), int(cfg.data.img_size), int(cfg.data.seq_len),
            int(cfg.data.batch_size), seed]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "video.npy"
        code = ("import json, sys, numpy; from scalor.bench import _render_frames; "
                "numpy.save(sys.argv[2], _render_frames(*json.loads(sys.argv[1])))")
        subprocess.run([sys.executable, "-c", code, json.dumps(args), str(out)], check=True,
                       cwd=Path(__file__).resolve().parents[1])
        frames = np.load(out)
    return torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float().div(255)


def load_weights(model: torch.nn.Module, path: str) -> None:
    """Copy a Lightning checkpoint's model weights into ``model`` (built from the bench config)."""
    from scalor.warm_start import model_weights

    if not Path(path).is_file():
        raise ScalorError(f"bench.ckpt_path={path} does not exist: give the path of a .ckpt file.")
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    model.load_state_dict(model_weights(state))


def _profile(step, rows: int) -> list[dict]:
    """torch.profiler over one more step (not timed): the ``rows`` operators with the most self time, as
    {"op", "self_ms", "self_pct"} (CPU time; CUDA time instead where the step ran on a GPU)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:rows]
    return [{"op": e.key, "self_ms": round(getattr(e, key) / 1e3, 2),
             "self_pct": round(100 * getattr(e, key) / total, 2)} for e in top]


def run_bench(cfg: DictConfig) -> dict:
    """Measure ``cfg.bench.steps`` steps after ``cfg.bench.warmup``; returns the result dict."""
    b = cfg.bench
    if b.mode not in ("train", "track"):
        raise ScalorError(f"bench.mode={b.mode} is unknown: use train or track.")
    if b.threads:
        torch.set_num_threads(int(b.threads))
    if b.device not in ("auto", "cpu", "cuda"):
        raise ScalorError(f"bench.device={b.device} is unknown: use auto, cpu or cuda.")
    if b.device == "cuda" and not torch.cuda.is_available():
        raise ScalorError("bench.device=cuda but no CUDA GPU is visible: use bench.device=auto or bench.device=cpu.")
    device = torch.device("cuda" if b.device == "auto" and torch.cuda.is_available() else
                          "cpu" if b.device == "auto" else b.device)
    execution = execution_options(cfg)
    torch.manual_seed(int(b.seed))
    # built as the training module builds it (ConfigError for impossible settings; instantiate would wrap it)
    model = execution.apply(SCALOR.from_config(OmegaConf.to_container(cfg.model, resolve=True)))
    if b.ckpt_path:
        load_weights(model, b.ckpt_path)
    model.to(device)
    curriculum = instantiate(cfg.curriculum)
    video = synthetic_video(cfg, int(b.seed)).to(device)
    frames = video.shape[0] * video.shape[1]
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # imports, weights, input
    times, counts = [], []
    if b.mode == "train":
        model.train()
        optimizer = instantiate(cfg.optimizer)(model.parameters())
    else:
        model.eval()
        tracker = build_tracker(cfg) or OnlineTracker()
    precision = str(cfg.trainer.precision)
    if precision not in ("32-true", "32", "bf16-mixed"):
        raise ScalorError(f"trainer.precision={precision} is not measured by the benchmark: use 32-true or bf16-mixed.")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    def one_step(step: int):
        schedule = curriculum.at(step if b.mode == "train" else 10**9)
        if b.mode == "train":
            with autocast:  # what Lightning's trainer.precision=bf16-mixed does around the forward pass
                out = model(video, schedule)
            out.neg_elbo.mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return out
        with autocast:  # the configured tracker (tracker=...), as validation tracks: eval mode, no gradients
            return tracker(model, video, schedule)

    for step in range(int(b.warmup) + int(b.steps)):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = one_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= int(b.warmup):
            times.append(time.perf_counter() - start)
            counts.append(float(out.counts.float().mean()))
    profile = _profile(lambda: one_step(int(b.warmup) + int(b.steps)), int(b.profile)) if b.profile else None
    median = statistics.median(times)
    result = {
        "median_step_s": round(median, 4),
        "min_step_s": round(min(times), 4),
        "max_step_s": round(max(times), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "frames_per_s": round(frames / median, 3),
        "mean_count": round(statistics.mean(counts), 2),
        "baseline_rss_mb": round(baseline_rss, 1),
        "lightning_imported": "lightning" in sys.modules,
        "device": str(device),
        "hardware": hardware(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": {
            "mode": b.mode, "steps": int(b.steps), "warmup": int(b.warmup), "precision": precision,
            "img_size": int(cfg.data.img_size), "grid": [int(cfg.grid.num_cell_h), int(cfg.grid.num_cell_w)],
            "batch_size": int(cfg.data.batch_size), "seq_len": int(cfg.data.seq_len),
            "model": OmegaConf.to_container(cfg.model, resolve=True),
            **({"tracker": repr(tracker)} if b.mode == "track" else {}),  # e.g. PickTracker(views=8, ...)
            "execution": execution.to_dict(),
            # what the model runs with (checkpoint_decoder/encoder=auto resolve by glimpse size)
            "checkpointing": {"decoder": model.checkpoint_decoder, "encoder": model.checkpoint_encoder},
        },
    }
    if profile is not None:
        result["profile"] = profile
    if device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        check_overrides(overrides)  # one line for a model override that would not compose
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("bench", overrides=overrides)
        result = run_bench(cfg)
    except ScalorError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result['config']['mode']}: median {result['median_step_s']} s/step, "
          f"{result['frames_per_s']} frames/s, peak RSS {result['peak_rss_mb']} MB, {result['params']:,} params")
    for row in result.get("profile", []):
        print(f"  {row['self_pct']:6.2f}%  {row['self_ms']:10.2f} ms  {row['op']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    sys.exit(main())
