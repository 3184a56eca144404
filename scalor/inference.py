"""Using a trained model: streaming tracking of a video, conditional generation, loading a checkpoint.

``track_video`` reads frames window by window and carries the model's state (objects, IDs, ConvLSTM and
background state) from one window to the next, so memory depends on the window, not on the video's length;
it writes ``tracks.txt`` (MOTChallenge) and ``tracks.mp4`` as it goes, in the footage's own pixels and frame
numbers when given a ``FrameFit``. ``generate_videos`` infers the first ``observe_frames`` frames of each sequence
and imagines the rest from the priors. ``load_model`` rebuilds a SCALOR from a Lightning checkpoint of
``SCALORLitModule``.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import torch
from torch import Tensor

from scalor.errors import ConfigError, DataError, ScalorError
from scalor.launch import read_checkpoint
from scalor.model import PRESENCE_THRESHOLD, SCALOR, SCALORConfig
from scalor.model.config import upgrade_saved_config
from scalor.model.execution import ExecutionOptions
from scalor.warm_start import model_weights
from scalor.schedules import Schedule
from scalor.tracking import OnlineTracker, Tracker, evaluating, inference_schedule
from scalor.tracking.tiles import TileJoiner
from scalor.viz import (VideoWriter, draw_boxes, draw_trails, make_grid, mark_generated, mot_rows, to_uint8_hwc,
                        write_mot_txt)

if TYPE_CHECKING:  # not at run time: the data modules import Lightning, which scalor.bench keeps out
    from scalor.datamodules.video import FrameFit, TileFit

__all__ = ["PRESENCE_THRESHOLD", "generate_videos", "inference_schedule", "load_model", "track_video"]

MIN_VIDEO_SIDE = 256  # output videos are enlarged (nearest neighbour) to at least this many pixels per side


# ---------------------------------------------------------------------------------------------- helpers
def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _upscale_factor(height: int, width: int, upscale: int | None) -> int:
    if upscale is not None:
        if int(upscale) < 1:
            raise ConfigError(f"upscale={upscale} must be >= 1 (or None to pick one automatically).")
        return int(upscale)
    return max(1, math.ceil(MIN_VIDEO_SIDE / max(1, min(height, width))))


def _enlarge(img: np.ndarray, k: int) -> np.ndarray:
    """Uint8 (H, W, 3) -> (k*H, k*W, 3) by pixel repetition."""
    if k == 1:
        return img
    return cv2.resize(img, (img.shape[1] * k, img.shape[0] * k), interpolation=cv2.INTER_NEAREST)


def _check_frame(frame: Any, index: int, img_hw: tuple[int, int]) -> np.ndarray:
    """One input frame -> float32 (3, H, W) array, or a DataError that says what is wrong."""
    f = frame.detach().cpu().numpy() if isinstance(frame, Tensor) else np.asarray(frame)
    if f.shape != (3, *img_hw):
        raise DataError(f"frame {index} has shape {tuple(f.shape)} but the model takes (3, {img_hw[0]}, "
                        f"{img_hw[1]}); read the video with data.img_size={img_hw[0]} (the size it was trained on).")
    if f.dtype == np.uint8:
        return f.astype(np.float32) / 255.0
    f = f.astype(np.float32, copy=False)
    if not np.isfinite(f).all() or f.min() < -1e-3 or f.max() > 1 + 1e-3:
        raise DataError(f"frame {index} has values outside [0, 1] (min {f.min():.3g}, max {f.max():.3g}); "
                        "pass float frames scaled to [0, 1].")
    return f


def _check_footage(frame: Any, number: int, size: tuple[int, int] | None) -> np.ndarray:
    """One footage frame -> RGB uint8 (h, w, 3) array of the footage's size ``size`` (None: any), or a DataError."""
    f = np.asarray(frame)
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
        raise DataError(f"footage frame {number} is {f.dtype} {f.shape}; pass RGB uint8 (h, w, 3) frames, as "
                        "scalor.datamodules.video.footage_frames reads them.")
    if size is not None and f.shape[:2] != size:
        raise DataError(f"footage frame {number} is {f.shape[1]}x{f.shape[0]} px but the footage began at "
                        f"{size[1]}x{size[0]}; tracks.mp4 has one frame size: give every image the same size.")
    return f


def _windows(frames: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of at most ``size`` items, pulled from ``frames`` only when needed."""
    it = iter(frames)
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


# ---------------------------------------------------------------------------------------------- tracking
def track_video(model: SCALOR, frames: Iterable[np.ndarray], out_dir: str | os.PathLike, window: int = 10,
                fps: float = 10.0, trail: int = 8, device: str | torch.device | None = "cpu",
                schedule: Schedule | None = None, upscale: int | None = None,
                fit: FrameFit | TileFit | None = None, tracker: Tracker | None = None) -> dict[str, Any]:
    """Track objects through a stream of frames; write tracks.txt and tracks.mp4.

    ``fit`` None: frames are the model's input, float32 (3, S, S) in [0, 1] (S = the model's image size), and the
    outputs are in its pixels, frames numbered 1, 2, ... . With a :class:`~scalor.datamodules.video.FrameFit`
    (``fit.img_size`` = S): frames are the footage's own, RGB uint8 (h, w, 3) of one size, each fitted to the model
    by ``fit.model_input``, and the outputs are in the footage's pixels (boxes clipped to it) and frame numbers
    (``fit.frame_number``). With a :class:`~scalor.datamodules.video.TileFit` the whole footage frame is tracked by
    overlapping tiles, one batch element each, and the tiles' tracks are joined online into one set with global
    IDs (:class:`~scalor.tracking.tiles.TileJoiner`).

    Frames are read ``window`` at a time and tracked by ``tracker.streaming()`` (None: the
    :class:`~scalor.tracking.OnlineTracker`; a PickTracker streams with backfill or online) in eval mode, on
    posterior means, without gradients; its ``carry`` continues each window where the previous one ended, so
    object IDs persist over the whole video and memory does not grow with its length. Every processed frame is
    written at once: ``tracks.txt`` gets MOTChallenge lines
    ``frame,id,x,y,w,h,conf,-1,-1,-1`` (conf = presence) for objects with presence > 0.5; ``tracks.mp4`` shows
    the frames with their boxes and the last ``trail`` box centres in ID colours (and, for a crop, the outline of
    the tracked square). ``upscale`` enlarges the video's frames that many times (None: model input to >= 256 px,
    footage as it is). ``device`` moves the model there (None: leave it where it is); ``schedule`` defaults to
    :func:`inference_schedule`. The model's train mode is restored afterwards.

    Returns ``frames`` (count), ``footage_hw`` (h, w of the frames the tracks are in), ``num_ids`` and ``ids``
    (distinct IDs written), ``detections`` (lines written), ``max_objects`` (most objects in one frame),
    ``tracks_txt`` and ``tracks_mp4`` (paths as str), ``seconds``, ``frames_per_s`` (everything included) and
    ``model_frames_per_s`` (the model alone).
    """
    if int(window) < 1:
        raise ConfigError(f"window={window} must be at least 1 frame.")
    if int(trail) < 1:
        raise ConfigError(f"trail={trail} must be at least 1 frame.")
    if not float(fps) > 0:
        raise ConfigError(f"fps={fps} must be > 0.")
    img_hw = tuple(model.img_hw)
    if fit is not None and int(fit.img_size) != img_hw[0]:
        raise ConfigError(f"fit.img_size={fit.img_size} but the model takes {img_hw[0]} px frames; fit the footage "
                          f"to img_size={img_hw[0]}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    txt, mp4 = out_dir / "tracks.txt", out_dir / "tracks.mp4"
    txt.write_text("", encoding="ascii")  # streamed lines are appended below
    if device is not None:
        model.to(device)
    dev = _device_of(model)
    schedule = schedule or inference_schedule()
    history: deque = deque(maxlen=int(trail))  # (boxes normalised to the written frame, ids) per frame
    ids_seen: set[int] = set()
    n_frames = n_rows = max_objects = 0
    footage_hw = None if fit is not None else img_hw
    model_s = 0.0
    carry = None
    tiled = fit is not None and hasattr(fit, "tiles")
    joiner = None
    stream = (tracker or OnlineTracker()).streaming()
    start = time.perf_counter()
    with evaluating(model), VideoWriter(mp4, fps) as writer:
        for chunk in _windows(frames, int(window)):
            numbers = [n_frames + i + 1 if fit is None else fit.frame_number(n_frames + i) for i in range(len(chunk))]
            if fit is None:
                clip = np.stack([_check_frame(f, n - 1, img_hw) for f, n in zip(chunk, numbers)])
                pictures = to_uint8_hwc(clip)  # (T, S, S, 3)
            else:
                footage_hw = footage_hw or np.shape(chunk[0])[:2]  # the first frame's size
                pictures = [_check_footage(f, n, footage_hw) for f, n in zip(chunk, numbers)]
                clip = np.stack([fit.model_input(p, f"footage frame {n}") for p, n in zip(pictures, numbers)])
            height, width = footage_hw
            if tiled:  # (T, N, 3, S, S) -> a batch of N tiles
                joiner = joiner or TileJoiner(fit.footage_tiles(height, width), height, width)
                video = torch.from_numpy(np.ascontiguousarray(clip.swapaxes(0, 1))).to(dev)  # (N, T, 3, S, S)
            else:
                video = torch.from_numpy(clip).to(dev)[None]  # (1, T, 3, S, S)
            t0 = time.perf_counter()
            out = stream(model, video, schedule, carry=carry)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            model_s += time.perf_counter() - t0
            carry = out.carry
            norm = np.array([width, height, width, height])
            pres = out.presence.float().cpu().numpy()  # (B, T, K)
            ids = np.where(pres > PRESENCE_THRESHOLD, out.ids.cpu().numpy(), -1)
            boxes = out.boxes.float().cpu().numpy()  # (B, T, K, 4) normalised to the model's input
            if tiled:  # each tile's boxes in footage pixels, joined frame by frame into whole-frame tracks
                boxes = fit.to_footage(boxes, height, width)
                joined = [joiner(boxes[:, t], ids[:, t], pres[:, t]) for t in range(len(chunk))]
                boxes = [b / norm for b, _, _ in joined]
                ids = [i for _, i, _ in joined]
                pres = [c for _, _, c in joined]
            else:
                boxes, pres, ids = boxes[0], pres[0], ids[0]  # (T, K, ...)
                if fit is not None:  # normalised to the footage frame
                    boxes = fit.to_footage(boxes, height, width) / norm
            rows = []
            for t, number in enumerate(numbers):
                keep = ids[t] >= 0
                rows += mot_rows(number - 1, boxes[t][keep], ids[t][keep], width, height, pres[t][keep])
                ids_seen.update(ids[t][keep].tolist())
                max_objects = max(max_objects, int(keep.sum()))
                history.append((boxes[t][keep], ids[t][keep]))
                writer.write(_draw_frame(pictures[t], history, fit, upscale))
            n_rows += write_mot_txt(txt, rows, append=True)
            n_frames += len(chunk)
            del out, video, clip, pictures
    if n_frames == 0:
        mp4.unlink(missing_ok=True)
        raise DataError("the video has no frames to track; check data.path and data.frame_skip.")
    seconds = time.perf_counter() - start
    return {
        "frames": n_frames,
        "footage_hw": tuple(int(v) for v in footage_hw),
        "num_ids": len(ids_seen),
        "ids": sorted(ids_seen),
        "detections": n_rows,
        "max_objects": max_objects,
        "tracks_txt": str(txt),
        "tracks_mp4": str(mp4),
        "seconds": seconds,
        "frames_per_s": n_frames / max(seconds, 1e-9),
        "model_frames_per_s": n_frames / max(model_s, 1e-9),
    }


def _draw_frame(picture: np.ndarray, history: deque, fit: FrameFit | None, upscale: int | None) -> np.ndarray:
    """One frame of tracks.mp4: picture uint8 (h, w, 3) enlarged ``upscale`` times (None: model input to >= 256 px,
    footage as it is), the trails and boxes of ``history`` (its last entry is this frame's), for a crop the
    outline of the tracked square."""
    h, w = picture.shape[:2]
    scale = _upscale_factor(h, w, upscale) if fit is None or upscale is not None else 1
    img = _enlarge(picture, scale)
    thickness = max(1, scale // 2, min(img.shape[:2]) // 256)
    img = draw_trails(img, history, thickness=thickness)  # a new array: the picture stays as it was
    if getattr(fit, "resize", None) == "crop":
        left, top, side_w, side_h = (v * scale for v in fit.region(h, w))
        cv2.rectangle(img, (left, top), (left + side_w - 1, top + side_h - 1), (255, 255, 255), thickness)
    boxes, ids = history[-1]
    return draw_boxes(img, boxes, ids, thickness=thickness)


# ---------------------------------------------------------------------------------------------- generation
def generate_videos(model: SCALOR, video: Tensor | np.ndarray, out_dir: str | os.PathLike, observe_frames: int,
                    fps: float = 5.0, schedule: Schedule | None = None, deterministic: bool = False,
                    start_index: int = 0, upscale: int | None = None) -> list[Path]:
    """Condition on the first ``observe_frames`` frames of video (B, T, 3, H, W) in [0, 1], imagine the rest.

    Writes, per sequence b, ``generation_{start_index + b:03d}.mp4`` with T frames: the real frames on top,
    the model's below (reconstructions of observed frames, then imagined frames marked with a red border and
    "GEN"), and ``generation_{...}.png``, the same as one image (columns = frames). ``observe_frames=0``
    generates from t = 0. ``deterministic``: posterior and prior means instead of samples (sampling gives varied
    futures). The model runs in eval mode without gradients (its train mode comes back after). Returns the mp4
    paths.
    """
    v = torch.as_tensor(video)
    img_hw = tuple(model.img_hw)
    if v.dim() != 5 or tuple(v.shape[2:]) != (3, *img_hw):
        raise DataError(f"video has shape {tuple(v.shape)} but generation takes (B, T, 3, {img_hw[0]}, "
                        f"{img_hw[1]}); use data.img_size={img_hw[0]} (the size the model was trained on).")
    if v.dtype == torch.uint8:
        v = v.float() / 255.0
    b, t_len = v.shape[:2]
    k = int(observe_frames)
    if not 0 <= k < t_len:
        raise ConfigError(f"observe_frames={observe_frames} leaves nothing to generate in sequences of "
                          f"{t_len} frames; use 0 <= observe_frames < data.seq_len={t_len}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with evaluating(model):
        out = model(v.float().to(_device_of(model)), schedule or inference_schedule(), observe_frames=k,
                    deterministic=deterministic)
    real = to_uint8_hwc(v.float())  # (B, T, H, W, 3)
    fake = to_uint8_hwc(out.recon.float().clamp(0, 1))
    scale = _upscale_factor(*img_hw, upscale)
    paths = []
    for i in range(b):
        top = [_enlarge(f, scale) for f in real[i]]
        bottom = [_enlarge(f, scale) for f in fake[i]]
        bottom = [mark_generated(f) if t >= k else f for t, f in enumerate(bottom)]
        name = f"generation_{start_index + i:03d}"
        path = out_dir / f"{name}.mp4"
        sep = np.full((max(2, scale), top[0].shape[1], 3), 255, np.uint8)
        with VideoWriter(path, fps) as writer:
            for r, g in zip(top, bottom):
                writer.write(np.concatenate([r, sep, g], 0))
        if writer.num_frames != t_len:
            raise ScalorError(f"{path} got {writer.num_frames} frames instead of {t_len}; check free disk space.")
        grid = make_grid(np.stack([np.stack(real[i]), np.stack([mark_generated(f) if t >= k else f
                                                                 for t, f in enumerate(fake[i])])]))
        cv2.imwrite(str(out_dir / f"{name}.png"), grid[..., ::-1])
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------- checkpoints
def _plain(value: Any, where: str) -> Any:
    """OmegaConf containers -> plain Python (interpolations resolved)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception as err:  # noqa: BLE001 - any resolution failure is the checkpoint's problem
            raise ScalorError(f"{where}: the model config cannot be resolved ({err}).") from err
    return value


def load_model(ckpt_path: str | os.PathLike, map_location: str | torch.device = "cpu",
               execution: ExecutionOptions | Mapping | None = None) -> SCALOR:
    """Rebuild SCALOR from a Lightning checkpoint: ``hyper_parameters['model']`` (the options of
    :class:`~scalor.model.SCALORConfig`, ``_target_`` allowed, a missing one at its default; options removed
    since the checkpoint was written are dropped where they were off, and the run and tracking options that
    older checkpoints saved there are dropped, see :func:`scalor.model.config.upgrade_saved_config`) and the
    ``model.``-prefixed weights of ``state_dict``, run with ``execution`` (the execution group's options; None:
    the defaults). Returns the model in eval mode.

    Only load checkpoints you trust: Lightning checkpoints are pickles.
    """
    options = ExecutionOptions.from_config(execution)  # ConfigError for impossible run options
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise ScalorError(f"ckpt_path={path} is not a file; pass the path of a .ckpt checkpoint "
                          "(or ckpt_path=last for the newest one of the experiment).")
    try:
        ckpt = read_checkpoint(str(path))  # the read the start-up checks of the same run made
    except Exception as err:  # noqa: BLE001 - corrupt file, wrong format, truncated download
        raise ScalorError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); "
                          "pass a checkpoint written by this project.") from err
    if not isinstance(ckpt, Mapping):
        raise ScalorError(f"checkpoint {path} is not a Lightning checkpoint (it holds a {type(ckpt).__name__}).")
    hparams = _plain(ckpt.get("hyper_parameters"), f"checkpoint {path}")
    cfg = _plain(hparams.get("model") if isinstance(hparams, Mapping) else None, f"checkpoint {path}")
    if not isinstance(cfg, Mapping):
        raise ScalorError(f"checkpoint {path} has no model config: expected hyper_parameters['model'] with the "
                          "SCALOR settings; was it written by scalor's training (task=fit)?")
    cfg = upgrade_saved_config(cfg, f"checkpoint {path} was")  # options removed since: off, or a ConfigError
    kwargs = {str(k): v for k, v in cfg.items() if not str(k).startswith("_")}
    unknown = sorted(set(kwargs) - set(SCALORConfig.keys()))
    if unknown:
        raise ScalorError(f"checkpoint {path} has model settings this version does not know: {unknown}; "
                          "load it with the scalor version that trained it.")
    unresolved = sorted(k for k, v in kwargs.items() if isinstance(v, str) and "${" in v)
    if unresolved:
        raise ScalorError(f"checkpoint {path} has unresolved model settings {unresolved}; "
                          "save the model config resolved.")
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise ScalorError(f"checkpoint {path} has no state_dict; pass a checkpoint written by task=fit.")
    weights = model_weights(state)
    if not weights:
        raise ScalorError(f"checkpoint {path} has no model weights (no state_dict key starts with 'model.').")
    model = SCALOR.from_config(kwargs)  # ConfigError for impossible settings
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ScalorError(f"checkpoint {path}: the weights do not fit its model config ({' '.join(first[:2])}).") \
            from err
    return options.apply(model).to(map_location).eval()
