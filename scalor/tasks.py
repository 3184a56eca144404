"""The tasks behind ``python run.py task=fit|test|track|generate``, each a plain function of the Hydra config.

``run(cfg)`` dispatches on ``cfg.task`` and returns the number a sweep optimises (the monitored validation
metric for fit, the matching test metric for test). Every task first calls :func:`check_config`, which ends
impossible settings with a :class:`ConfigError` naming the key and the fix, before any data is generated or read.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from scalor.callbacks import AtomicCheckpointIO
from scalor.callbacks.wandb_run import WandbRun, wandb_logger_args, watch_args
from scalor.console import quiet_console
from scalor.errors import ConfigError, ScalorError
from scalor.launch import monitor_choice, read_checkpoint, use_job_command_for_ddp_workers
from scalor.lit_module import TRACKING_INFERENCE, SCALORLitModule, check_nll_samples
from scalor.model import SCALORConfig
from scalor.model.config import upgrade_saved_config
from scalor.model.execution import ExecutionOptions, execution_options
from scalor.resume import resumable_train_loader
from scalor.schedules import Curriculum
from scalor.summary import write_summary
from scalor.tracking import OnlineTracker, Tracker
from scalor.tracking.trackers import build_tracker
from scalor.typecheck import check_types
from scalor.warm_start import WarmStart, checkpoint_weights, warm_start

TASKS = ("fit", "test", "track", "generate")
# Set by Lightning's DDP launcher in the process that starts the workers (restored after each job).
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Where each model key is set from (for error messages).
MODEL_KEY_SOURCE = {"img_size": "data.img_size", "num_cell_h": "grid.num_cell_h", "num_cell_w": "grid.num_cell_w"}


# ======================================================================================= entry point
def run(cfg: DictConfig) -> Optional[float]:
    """Run ``cfg.task``; returns the metric sweeps optimise (fit: best validation value of ``monitor.metric``;
    test: the matching test metric; track/generate: None). Raises :class:`ScalorError` for user errors."""
    task = cfg.get("task")
    if task not in TASKS:
        raise ConfigError(f"task={task} is unknown; use task=fit, task=test, task=track or task=generate.")
    quiet_console()
    env = {key: os.environ.get(key) for key in DDP_ENV}
    try:
        return {"fit": fit, "test": test, "track": track, "generate": generate}[task](cfg)
    finally:
        finish_wandb()
        finish_distributed(env)


def fit(cfg: DictConfig) -> Optional[float]:
    """Train (resuming from ``ckpt_path`` if given), then test the best checkpoint; returns the best
    validation value of the monitored metric."""
    ckpt_path = check_config(cfg)
    start = time.monotonic()
    datamodule = build_datamodule(cfg)
    monitor = resolve_monitor(cfg, datamodule)
    resumable_train_loader(datamodule, cfg.seed)
    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg)
    if cfg.get("init_from"):
        if ckpt_path is None:
            report_warm_start(warm_start(module.model, cfg.init_from), cfg.paths.output_dir)
        else:
            rank_zero_only(print)(f"init_from={cfg.init_from} is not read: the fit resumes from ckpt_path={ckpt_path}, "
                                  "which holds its weights.", flush=True)
    trainer = build_trainer(cfg)
    log_config(trainer, cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    best = _best_checkpoint(trainer)
    value = _metric_value(trainer, monitor, best)
    log_objective(trainer, monitor, value)
    test_metrics: dict[str, float] = {}
    if cfg.test_after_fit:
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        test_metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        draw_test_media(trainer, module, datamodule)
    if trainer.is_global_zero:
        seconds = time.monotonic() - start
        metrics = {f"{monitor} (best)": value, **test_metrics}
        write_summary(cfg, "fit", seconds, trainer.global_step, metrics, best or None, module.test_tracker_label)
        print_summary(cfg, trainer, "fit", seconds, metrics)
    return value


def test(cfg: DictConfig) -> Optional[float]:
    """Evaluate ``ckpt_path`` on the test split; returns the test counterpart of the monitored metric."""
    ckpt_path = check_config(cfg)
    start = time.monotonic()
    datamodule = build_datamodule(cfg)
    monitor = resolve_monitor(cfg, datamodule)
    L.seed_everything(cfg.seed, workers=True)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    log_config(trainer, cfg)
    results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    draw_test_media(trainer, module, datamodule)
    if trainer.is_global_zero:
        seconds = time.monotonic() - start
        write_summary(cfg, "test", seconds, module._ckpt_step, metrics, str(ckpt_path), module.test_tracker_label)
        print_summary(cfg, trainer, "test", seconds, {"checkpoint": str(ckpt_path), **metrics})
    return metrics.get(monitor.replace("val/", "test/", 1))


def track(cfg: DictConfig) -> dict:
    """Stream ``data.path`` (a video file or a folder of frames) through the checkpoint's model, ``data.seq_len``
    frames at a time with the state carried over, by the streaming counterpart of ``tracker`` (``tracker=pick``
    streams with backfill), and write ``tracks.txt`` (MOTChallenge) and ``tracks.mp4`` into the run folder, in
    the footage's own pixels and frame numbers. The model (image size, grid ...) is the checkpoint's: each frame
    is fitted to its input (``data.resize``, ``data.crop_size``; ``resize=tiles``: the whole frame by
    overlapping tiles at ``data.scale``) and its boxes mapped back. How frames are fitted is the checkpoint's
    training data's where the command line does not say; a ``data.img_size`` on the command line other than the
    checkpoint's is a ConfigError. Returns the tracking stats."""
    ckpt_path = check_config(cfg)
    start = time.monotonic()
    from scalor.datamodules.video import FrameFit, TileFit, footage_frames, video_fps
    from scalor.inference import inference_schedule, load_model, track_video

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(ckpt_path, map_location=device, execution=execution_options(cfg))
    size = model.img_hw[0]
    data = cfg.data
    if command_line_sets("data.img_size") and int(data.img_size) != size:
        raise ConfigError(f"data.img_size={data.img_size} is set on the command line but task=track runs the "
                          f"checkpoint's model at its own {size} px input (tracks come out in the footage's pixels "
                          f"whatever that size); drop data.img_size or set data.img_size={size}.")
    fitting = footage_fitting(cfg, (_load_checkpoint(ckpt_path).get("hyper_parameters") or {}).get("data"))
    skip = int(data.get("frame_skip", 1))
    tracker = build_tracker(cfg) or OnlineTracker()
    if fitting["resize"] == "tiles":
        fit = TileFit(size, float(fitting["scale"]), int(fitting["tile_overlap"]), skip)
    else:
        fit = FrameFit(size, fitting["resize"], fitting["crop_size"], skip)
    stats = track_video(model, footage_frames(data.path, fit.frame_skip), cfg.paths.output_dir,
                        window=int(data.seq_len), fps=video_fps(data.path) / fit.frame_skip, device=device,
                        schedule=inference_schedule(instantiate(cfg.curriculum)), fit=fit,
                        tracker=tracker)
    h, w = stats["footage_hw"]
    scores = {}
    if cfg.get("groundtruth"):
        from scalor.metrics.mot_files import score_tracks

        tracked = {fit.frame_number(k) for k in range(stats["frames"])}  # with frame_skip, not every frame
        scores = {f"track/{k}": v for k, v in score_tracks(stats["tracks_txt"], cfg.groundtruth, tracked).items()}
        stats["metrics"] = scores
    seconds = time.monotonic() - start
    write_summary(cfg, "track", seconds, None, {**{k: stats[k] for k in SUMMARY_STATS}, **scores}, str(ckpt_path),
                  tracker.streaming().label)
    if isinstance(fit, TileFit):
        seen = (f"{len(fit.tiles(h, w))} tiles overlapping by {fit.overlap} px over the whole frame scaled by "
                f"{fit.scale:.4g}")
    else:
        left, top, side, _ = fit.region(h, w)
        seen = ("the whole frame resized" if fit.resize == "resize"
                else f"the {side} px square at ({left}, {top}) resized")
    print_summary(cfg, None, "track", seconds,
                  {"checkpoint": ckpt_path, "footage": f"{w}x{h} px (tracks.txt and tracks.mp4 in these pixels)",
                   "model input": f"{size}x{size} px ({seen})", **{k: stats[k] for k in SUMMARY_STATS}, **scores},
                  (Path(stats["tracks_txt"]), Path(stats["tracks_mp4"])))
    return stats


SUMMARY_STATS = ("frames", "num_ids", "detections", "max_objects", "frames_per_s")
FIT_KEYS = {"resize": "resize", "crop_size": None, "scale": 1.0, "tile_overlap": 32}


def footage_fitting(cfg: DictConfig, trained: Optional[Mapping]) -> dict:
    """How task=track fits footage to the model: each of ``FIT_KEYS`` from the command line where it sets
    ``data.<key>``, else from the checkpoint's training data config ``trained`` where that was footage
    (``data=video``), else from this run's data config."""
    trained = trained if str((trained or {}).get("_target_", "")).endswith("VideoDataModule") else {}
    out = {}
    for key, default in FIT_KEYS.items():
        if not command_line_sets(f"data.{key}") and key in trained:
            out[key] = trained[key]
        else:
            out[key] = cfg.data.get(key, default)
    return out


def command_line_sets(key: str) -> bool:
    """Whether this run's command line sets ``key`` (``key=...``, ``+key=...`` or ``++key=...`` among Hydra's task
    overrides); False when Hydra is not initialised (a config composed in code)."""
    if not HydraConfig.initialized():
        return False
    overrides = HydraConfig.get().overrides.task or []
    return any(str(o).lstrip("+").split("=", 1)[0].strip() == key for o in overrides)


def generate(cfg: DictConfig) -> list[Path]:
    """Conditional generation: infer the first ``observe_frames`` frames of a few test sequences and
    imagine the rest; writes ``media/generation_<i>.mp4`` and ``.png`` (real frames above generated ones)."""
    ckpt_path = check_config(cfg)
    start = time.monotonic()
    from scalor.inference import generate_videos, inference_schedule, load_model

    datamodule = build_datamodule(cfg)
    L.seed_everything(cfg.seed, workers=True)
    model = load_model(ckpt_path, map_location="cuda" if torch.cuda.is_available() else "cpu",
                       execution=execution_options(cfg))
    datamodule.prepare_data()
    datamodule.setup("test")
    video = next(iter(datamodule.test_dataloader()))["video"][:4]
    k = int(cfg.observe_frames)
    paths = generate_videos(model, video, cfg.paths.media_dir, k,
                            schedule=inference_schedule(instantiate(cfg.curriculum)))
    print_summary(cfg, None, "generate", time.monotonic() - start,
                  {"checkpoint": ckpt_path, "observe_frames": k, "sequences": len(paths)}, tuple(paths))
    return paths


# ======================================================================================= validation
def check_config(cfg: DictConfig) -> Optional[str]:
    """Check the whole config before anything is built; returns the resolved checkpoint path (or None).

    Raises ConfigError (one sentence: the key, the bad value, the fix) for unresolvable interpolations,
    impossible model settings, hardware the run cannot have, a missing or mismatched checkpoint, and
    cross-group conflicts (e.g. observe_frames >= data.seq_len for task=generate).
    """
    resolved = _resolve(cfg)
    task = resolved.get("task")
    if task not in TASKS:
        raise ConfigError(f"task={task} is unknown; use task=fit, task=test, task=track or task=generate.")
    check_types(resolved)
    # the model's options as it reads them; ConfigError for a key that is no (longer an) option, impossible settings
    current = SCALORConfig.from_mapping(resolved["model"]).to_dict()
    ExecutionOptions.from_config(resolved.get("execution"))  # ConfigError for impossible run options
    data = resolved["data"]
    observe = resolved.get("observe_frames")
    if task == "generate" and not (isinstance(observe, int) and not isinstance(observe, bool)
                                   and 0 <= observe < int(data["seq_len"])):
        raise ConfigError(f"observe_frames={observe} leaves nothing to generate in data.seq_len={data['seq_len']} "
                          f"frames; use 0 <= observe_frames < {data['seq_len']}.")
    check_nll_samples(resolved.get("nll_samples"))
    if task == "track" and not data.get("path"):
        raise ConfigError("task=track streams a video: pass data=video data.path=/path/to/clip.mp4 (or a folder "
                          "of frames).")
    gt = resolved.get("groundtruth")
    if gt is not None and (task != "track" or not Path(str(gt)).expanduser().is_file()):
        raise ConfigError(f"groundtruth={gt}: " + ("no such file; pass the path of a MOTChallenge gt.txt (e.g. "
                          "groundtruth/vtest/gt.txt)." if task == "track" else f"scores task=track only (this is "
                          f"task={task}); drop it."))
    if gt is not None:  # read now: a malformed file stops the run before the footage is tracked
        from scalor.metrics.mot_files import read_mot

        if not read_mot(gt, "ground-truth"):
            raise ConfigError(f"groundtruth={gt} has no rows; pass a MOTChallenge gt.txt.")
    clip = resolved.get("train_seq_len")
    if clip is not None and not (isinstance(clip, int) and clip >= 1):
        raise ConfigError(f"train_seq_len={clip} must be a number of frames >= 1 (or null: whole sequences).")
    if resolved.get("tracking_inference", "deterministic") not in TRACKING_INFERENCE:
        raise ConfigError(f"tracking_inference={resolved.get('tracking_inference')} is unknown; use deterministic "
                          "(posterior means, as task=track) or sampled (the ELBO's posterior sample).")
    for key in ("tracker", "fit_val_tracker"):
        if resolved.get(key) is not None:
            build_tracker(cfg, key)
    _check_curriculum(resolved.get("curriculum") or {})
    _check_trainer(resolved["trainer"])
    _check_monitor(resolved.get("monitor") or {})
    lr = (resolved.get("optimizer") or {}).get("lr")
    if lr is not None and not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise ConfigError(f"optimizer.lr={lr} must be a number > 0 (the reference uses 4e-5).")
    if resolved.get("scheduler_interval") not in ("step", "epoch"):
        raise ConfigError(f"scheduler_interval={resolved.get('scheduler_interval')} is unknown; use step or epoch.")

    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path is None and task in ("test", "track", "generate"):
        raise ConfigError(f"task={task} needs a trained model: pass ckpt_path=PATH or ckpt_path=last.")
    init_from = resolved.get("init_from")
    if init_from is not None:
        if task != "fit":
            raise ConfigError(f"init_from={init_from} starts a fit from trained weights (this is task={task}); drop "
                              "it, or pass the checkpoint as ckpt_path=PATH.")
        if ckpt_path is None:  # a resumed fit has its weights in its checkpoint: init_from is not read
            checkpoint_weights(init_from)  # ConfigError for a missing or foreign file
    if ckpt_path is not None:
        saved = (_load_checkpoint(ckpt_path).get("hyper_parameters") or {}).get("model")
        if saved is None:
            raise ConfigError(f"ckpt_path={ckpt_path} holds no scalor model config; pass a checkpoint written by "
                              "`python run.py` (task=fit).")
        saved = upgrade_saved_config(saved, f"ckpt_path={ckpt_path} was")  # options removed since: off, or an error
        # both as the model reads them: an option the checkpoint predates at its default
        saved = SCALORConfig.from_mapping(saved, f"ckpt_path={ckpt_path}").to_dict()
        # fit/test build the model from this config; generate runs the checkpoint's model on this data, so only
        # the image size must agree; track resizes the video to the checkpoint's image size.
        keys = {"fit": list(current), "generate": ["img_size"], "track": []}
        for key in keys.get(task, keys["fit"]):
            if saved[key] == current[key]:
                continue
            source = MODEL_KEY_SOURCE.get(key, f"model.{key}")
            raise ConfigError(f"ckpt_path={ckpt_path} was trained with {source}={saved[key]} but this config "
                              f"has {current[key]}; set {source}={saved[key]} (or use the experiment it was "
                              "trained with).")
    return ckpt_path


def _check_curriculum(curriculum: dict) -> None:
    fields = {f.name for f in dataclasses.fields(Curriculum)}
    unknown = sorted(set(curriculum) - fields - {"_target_"})
    if unknown:
        raise ConfigError(f"curriculum.{unknown[0]} is not a schedule parameter; use one of "
                          f"{', '.join(sorted(fields))}.")
    Curriculum(**{k: v for k, v in curriculum.items() if k != "_target_"})  # raises ConfigError on bad values


def _resolve(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise ConfigError(f"the config does not resolve{f' at {key}' if key else ''}: {msg}; fix that value "
                          "or its interpolation.") from None


def _check_trainer(trainer: dict) -> None:
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    accelerator = str(trainer.get("accelerator", "auto"))
    strategy = trainer.get("strategy", "auto")
    strategy_name = strategy.get("_target_", "") if isinstance(strategy, dict) else str(strategy)
    ddp = "ddp" in strategy_name.lower()
    gpus = torch.cuda.device_count()
    if accelerator not in ("auto", "gpu", *AcceleratorRegistry.available_accelerators()):
        raise ConfigError(f"trainer.accelerator={accelerator} is unknown; use trainer=default (auto), trainer=cpu "
                          "or trainer=gpu.")
    if not isinstance(strategy, dict) and strategy_name != "auto" and strategy_name not in StrategyRegistry:
        raise ConfigError(f"trainer.strategy={strategy_name} is unknown; use strategy=single, strategy=ddp (GPUs) "
                          "or strategy=ddp_cpu (2 CPU processes).")
    if accelerator in ("gpu", "cuda") and gpus == 0:
        if ddp:
            raise ConfigError("strategy=ddp needs CUDA GPUs but none is visible; use strategy=ddp_cpu "
                              "(2 CPU processes) or strategy=single.")
        raise ConfigError(f"trainer.accelerator={accelerator} needs a CUDA GPU but none is visible; use "
                          "trainer=cpu (or trainer=default, which picks the hardware).")
    devices = trainer.get("devices", 1)
    if isinstance(devices, int) and (devices == 0 or devices < -1):
        raise ConfigError(f"trainer.devices={devices} is invalid; use a positive number, -1 (all) or auto.")
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > gpus:
        raise ConfigError(f"trainer.devices={devices} but only {gpus} GPU(s) are visible; set trainer.devices="
                          f"{gpus} or fewer.")
    if ddp and accelerator == "cpu" and isinstance(devices, int) and devices < 2 and trainer.get("num_nodes", 1) < 2:
        raise ConfigError(f"strategy=ddp_cpu with trainer.devices={devices} has nothing to distribute; set "
                          "trainer.devices=2 (or more) or use strategy=single.")


def _check_monitor(monitor: dict) -> None:
    metric, mode = str(monitor.get("metric", "auto")), str(monitor.get("mode", "auto"))
    if metric != "auto" and not metric.startswith("val/"):
        raise ConfigError(f"monitor.metric={metric} must be a validation metric such as val/mota or val/neg_elbo "
                          "(or auto).")
    if mode not in ("auto", "min", "max"):
        raise ConfigError(f"monitor.mode={mode} is unknown; use min, max or auto.")


def resolve_monitor(cfg: DictConfig, datamodule: Any) -> str:
    """Fill ``monitor.metric`` / ``monitor.mode`` if ``auto`` (:func:`monitor_choice`) and return the metric
    name."""
    has_gt = bool(getattr(datamodule, "has_ground_truth", False))
    metric, mode = monitor_choice(cfg.monitor.metric, cfg.monitor.mode, has_gt)
    if not has_gt and metric.split("/")[-1] in ("mota", "motp", "idf1", "idp", "idr", "count_acc", "count_mae"):
        raise ConfigError(f"monitor.metric={metric} needs ground truth but data={cfg.data._target_.split('.')[-1]} "
                          "has none; use monitor.metric=val/neg_elbo monitor.mode=min "
                          "(an Optuna search then minimises it).")
    cfg.monitor.metric, cfg.monitor.mode = metric, mode
    return metric


# ======================================================================================= checkpoints
def resolve_ckpt_path(cfg: DictConfig) -> Optional[str]:
    """``ckpt_path``: None, an existing file, or ``last`` -> the newest ``*.ckpt`` of this experiment under
    ``<paths.output_root>/<name>/`` (any run, any task)."""
    path = cfg.get("ckpt_path")
    if path is None or str(path) == "":
        return None
    if str(path) == "last":
        found = find_last_checkpoint(cfg.paths.output_root, cfg.name)
        if found is None:
            raise ConfigError(f"ckpt_path=last found no checkpoint of experiment {cfg.name} under "
                              f"{Path(cfg.paths.output_root) / cfg.name}; train first "
                              f"(python run.py experiment={cfg.name}) or pass ckpt_path=PATH.")
        return str(found)
    if not Path(str(path)).is_file():
        raise ConfigError(f"ckpt_path={path} is not a file; pass an existing .ckpt file or ckpt_path=last.")
    return str(path)


def find_last_checkpoint(output_root: str, name: str) -> Optional[Path]:
    """The most recently written ``*.ckpt`` below ``output_root/name`` (``last.ckpt`` wins ties), or None."""
    root = Path(str(output_root)) / str(name)
    if not root.is_dir():
        return None
    found = [p for p in root.rglob("*.ckpt") if p.is_file()]
    if not found:
        return None
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))


def _load_checkpoint(path: str) -> dict:
    try:
        return read_checkpoint(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error here
        raise ConfigError(f"ckpt_path={path} is not a readable checkpoint ({type(err).__name__}); pass a .ckpt "
                          "file written by `python run.py`.") from None


def _best_checkpoint(trainer: L.Trainer) -> str:
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.best_model_path:
            return cb.best_model_path
    return ""


def _metric_value(trainer: L.Trainer, monitor: str, best: str) -> Optional[float]:
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor == monitor and cb.best_model_score is not None and best:
            return float(cb.best_model_score)
    value = trainer.callback_metrics.get(monitor)
    return None if value is None else float(value)


# ======================================================================================= builders
def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets project errors through and turns bad arguments into ConfigError."""
    try:
        return hydra.utils.instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ScalorError):
            raise cause from None
        target = node.get("_target_", "?") if hasattr(node, "get") else "?"
        detail = str(cause or err).splitlines()[0] if str(cause or err) else type(cause or err).__name__
        raise ConfigError(f"cannot build {target}: {detail}; fix the matching config keys.") from None


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """Instantiate ``cfg.data`` and run its cheap input checks (no data is generated or read yet)."""
    datamodule = instantiate(cfg.data)
    datamodule.validate()
    return datamodule


def build_module(cfg: DictConfig) -> SCALORLitModule:
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    return SCALORLitModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        curriculum=OmegaConf.to_container(cfg.curriculum, resolve=True),
        optimizer=instantiate(cfg.optimizer), scheduler=scheduler,
        scheduler_interval=cfg.scheduler_interval, seed=cfg.seed, train_seq_len=cfg.get("train_seq_len"),
        tracking_inference=cfg.get("tracking_inference", "deterministic"), tracker=build_tracker(cfg),
        fit_val_tracker=build_tracker(cfg, "fit_val_tracker"), nll_samples=cfg.nll_samples,
        experiment=str(cfg.name),
        data=OmegaConf.to_container(cfg.data, resolve=True), execution=execution_options(cfg),
    )


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` (strategy merged in) with the callbacks, loggers and atomic checkpoints."""
    use_job_command_for_ddp_workers()  # DDP workers rerun this job, not the whole sweep (scalor/launch.py)
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()
                 if node is not None and "_target_" in node]
    loggers = build_loggers(cfg)
    if any(isinstance(lg, WandbLogger) for lg in loggers):  # the run id into checkpoints (resume), wandb.watch
        callbacks.append(WandbRun(watch_args(OmegaConf.select(cfg, "logger.wandb.watch"))))
    if not loggers:  # nothing to send learning rates to (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):  # trainer.enable_progress_bar=false wins over the callback
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    try:
        return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                           plugins=[AtomicCheckpointIO()],
                           enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))
    except ConfigError as err:
        raise ConfigError(str(err).replace("cannot build lightning.pytorch.Trainer", "trainer")) from None


def _run_names(cfg: DictConfig) -> tuple[str, Optional[str]]:
    """(run name, sweep group): ``<experiment>/<run folder>`` or, in a multirun, ``<experiment>/<sweep>/<job>``."""
    out = Path(str(cfg.paths.output_dir))
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            sweep = Path(str(hc.sweep.dir)).name
            return f"{cfg.name}/{sweep}/{hc.job.num}", f"{cfg.name}/{sweep}"
    return f"{cfg.name}/{out.name}", None


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is None or "_target_" not in node:
            continue
        kwargs = {}
        if node._target_.endswith("WandbLogger"):
            name, group = _run_names(cfg)
            node = wandb_logger_args(cfg, node, resolve_ckpt_path(cfg))  # resumed fit: the checkpoint's run
            kwargs = {"name": node.get("name") or name, "group": node.get("group") or group}
        logger = instantiate(node, **kwargs)
        if isinstance(logger, WandbLogger):  # Lightning always passes anonymous=None, which wandb 0.31 warns is
            logger._wandb_init.pop("anonymous", None)  # deprecated; unset, wandb says nothing (run is still lazy)
        loggers.append(logger)
    return loggers


@rank_zero_only
def report_warm_start(started: WarmStart, folder: str) -> None:
    """Print what ``init_from`` loaded and write it to ``<run folder>/init_from.json``."""
    print(started.line(), flush=True)
    started.save(folder)


@rank_zero_only
def log_config(trainer: L.Trainer, cfg: DictConfig) -> None:
    """Send the resolved config to every logger as hyperparameters."""
    params = OmegaConf.to_container(cfg, resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(params)


@rank_zero_only
def log_objective(trainer: L.Trainer, monitor: str, value: Optional[float]) -> None:
    """Put what ``run`` returns (the best validation value of ``monitor``) into the wandb run's summary as
    ``best/<monitor>``: the metric a wandb sweep optimises (sweeps/wandb_search.yaml)."""
    if value is None:
        return
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.summary[f"best/{monitor}"] = value


def finish_wandb() -> None:
    """Close the wandb run of this process, if any, so the next run (multirun job) starts its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=0 if sys.exc_info()[0] is None else 1)


def finish_distributed(env: dict[str, Optional[str]]) -> None:
    """Leave this job's DDP process group (its workers have exited) and restore the variables Lightning's
    launcher set (``env``: their values before the job, None = unset), so that the next job of a multirun in
    this process starts its own workers and process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# ======================================================================================= media and summary
def draw_test_media(trainer: L.Trainer, module: SCALORLitModule, datamodule: Any) -> None:
    """Draw the first test sequences with the configured visualisation callback (panels, tracking videos;
    files under media/ or the wandb run). Rank zero only; nothing without that callback or under fast_dev_run."""
    from scalor.callbacks.visualize import VisualizationCallback

    drawers = [cb for cb in trainer.callbacks if isinstance(cb, VisualizationCallback)]
    if drawers and trainer.is_global_zero and not trainer.fast_dev_run:
        drawers[0].draw(trainer, module, next(iter(datamodule.test_dataloader()))["video"], "test")


SUMMARY_KEYS = ("neg_elbo", "log_like", "kl", "count", "mota", "motp", "idf1", "id_switches", "count_acc",
                "count_mae", "nll")


def print_summary(cfg: DictConfig, trainer: Optional[L.Trainer], task: str, seconds: float,
                  metrics: dict[str, Any], outputs: tuple[Path, ...] = ()) -> None:
    """A short rich summary: the main metrics (all of them are in the logs), then where checkpoints, logs and
    media went."""
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=True)
    steps = f", {trainer.global_step} steps" if trainer is not None and task == "fit" else ""
    table = Table(title=f"scalor {cfg.name}: task={task} finished in {_duration(seconds)}{steps}",
                  title_justify="left", header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if isinstance(value, str):
            continue
        if "/" not in key or key.split("/")[-1] in SUMMARY_KEYS or key.startswith(str(cfg.monitor.metric)):
            table.add_row(key, _format(value))
    console.print(table)
    for key, value in metrics.items():
        if isinstance(value, str):
            console.print(f"{key:<12} {value}")
    out = Path(str(cfg.paths.output_dir))
    console.print(f"run folder   {out}")
    ckpts = sorted(Path(str(cfg.paths.ckpt_dir)).glob("*.ckpt"))
    if ckpts:
        console.print(f"checkpoints  {ckpts[0].parent}: " + ", ".join(p.name for p in ckpts))
    if trainer is not None:
        for logger in trainer.loggers:
            kind = type(logger).__name__
            if kind == "WandbLogger":
                run_dir = Path(logger.experiment.dir).parent
                offline = getattr(logger.experiment.settings, "mode", "offline") in ("offline", "dryrun")
                # a resumed fit: the earlier parts of the run (same id) are in earlier run folders
                earlier = Path(str(cfg.paths.output_root), str(cfg.name)).glob(f"**/wandb/*-{logger.version}")
                parts = " ".join(str(p) for p in sorted({run_dir.resolve(), *(p.resolve() for p in earlier)},
                                                        key=lambda p: p.name))
                console.print(f"logs         wandb {run_dir}" + (f" (upload: wandb sync {parts})" if offline else ""))
            elif getattr(logger, "log_dir", None):
                console.print(f"logs         {kind} {logger.log_dir}")
    if (out / "run.log").is_file():
        console.print(f"logs         {out / 'run.log'}, config {out / '.hydra'}")
    media_dir = Path(str(cfg.paths.media_dir))
    files = sum(1 for p in media_dir.rglob("*") if p.is_file()) if media_dir.is_dir() else 0
    if files:
        console.print(f"media        {media_dir} ({files} files)")
    for path in outputs:
        console.print(f"output       {path}")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
