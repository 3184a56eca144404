"""VisualizationCallback: what the model sees, explains and tracks, drawn every few training steps.

For a few sequences (the first validation batch, or the current training batch before any validation) the
model runs with ``visuals=True`` in eval mode without gradients, and the callback draws one image per
sequence (columns = frames; rows = ``ROWS``: input, reconstruction, background, foreground alpha, object-ID
segmentation, discovery boxes, propagated boxes, tracked boxes with trails), one tracking video per sequence
(tracked boxes and IDs beside the reconstruction) and a table of per-sequence numbers (loss terms, counts).

With a ``WandbLogger`` they go to wandb (images, webm videos, a table); otherwise they are written as
PNG / MP4 / CSV files under ``<media_dir>/step_<n>/`` (default media_dir: ``<trainer.log_dir>/media``), and
an info message says so once. Only global rank 0 draws.
"""

from __future__ import annotations

import csv
import functools
import logging
import math
import os
import sys
import tempfile
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor

from scalor.model import PRESENCE_THRESHOLD
from scalor.schedules import Schedule
from scalor.tracking import evaluating
from scalor.viz import VideoWriter, draw_boxes, draw_trails, make_grid, segmentation_overlay, to_uint8_hwc

__all__ = ["ROWS", "VisualizationCallback", "render_panels"]

log = logging.getLogger(__name__)

ROWS = ("input", "recon", "background", "alpha", "segments", "discovery", "propagation", "tracked")
DISC_COLOR = (0, 255, 0)  # accepted discovery proposals (presence > 0.5)
FAINT_COLOR = (200, 200, 200)  # proposals / propagated objects with presence <= 0.5
FAINT_WEIGHT = 0.35  # opacity of faint boxes
TERMS = ("log_like", "kl_what", "kl_where", "kl_depth", "kl_pres", "kl_bg")


# ---------------------------------------------------------------------------------------------- drawing
def _enlarge(img: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return img
    return cv2.resize(img, (img.shape[1] * k, img.shape[0] * k), interpolation=cv2.INTER_NEAREST)


def _plain_boxes(img: np.ndarray, boxes: np.ndarray, color: tuple, thickness: int, weight: float = 1.0) -> np.ndarray:
    """Draw normalised xyxy boxes (N, 4) in one colour, blended with ``weight`` opacity -> new image."""
    b = boxes.reshape(-1, 4)
    b = b[np.isfinite(b).all(1)]
    if len(b) == 0:
        return img
    h, w = img.shape[:2]
    px = np.rint(b * np.array([w, h, w, h])).astype(np.int64)
    px[:, 0::2] = px[:, 0::2].clip(0, w - 1)
    px[:, 1::2] = px[:, 1::2].clip(0, h - 1)
    layer = img.copy()
    for x1, y1, x2, y2 in px.tolist():
        cv2.rectangle(layer, (x1, y1), (x2, y2), color, thickness)
    return layer if weight >= 1 else cv2.addWeighted(layer, weight, img, 1 - weight, 0)


def _labelled(grid: np.ndarray, labels: tuple[str, ...], row_h: int, pad: int = 1) -> np.ndarray:
    """Prepend a white column with one label per grid row."""
    scale = max(0.35, row_h / 160)
    width = max(cv2.getTextSize(s, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for s in labels) + 8
    strip = np.full((grid.shape[0], width, 3), 255, np.uint8)
    for r, text in enumerate(labels):
        (_, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        y = pad + r * (row_h + pad) + (row_h + th) // 2
        cv2.putText(strip, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, grid], 1)


def render_panels(video: Tensor, out: Any, min_side: int = 128) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Draw each sequence of a ``visuals=True`` SequenceOutput: video (B, T, 3, H, W) -> [(grid, frames)].

    grid: uint8 image, one labelled row per ``ROWS`` entry and one column per frame; frames: T uint8 images
    of the tracking video (tracked boxes, IDs and trails on the input | reconstruction). Images are enlarged
    by pixel repetition to at least ``min_side`` pixels per side so that labels stay legible.
    """
    vis = {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
           for k, v in out.visuals.items()}
    video = video.detach().float().cpu()
    b, t_len, _, h, w = video.shape
    k = max(1, math.ceil(min_side / min(h, w)))
    thick = max(1, k // 2)
    inp = to_uint8_hwc(video)
    rec = to_uint8_hwc(vis["recon"].clamp(0, 1))
    bg = to_uint8_hwc(vis["bg"].clamp(0, 1))
    alpha = to_uint8_hwc(vis["alpha"].clamp(0, 1).expand(-1, -1, 3, -1, -1))
    seg = torch.where(vis["seg"] > 0, vis["seg"], -1).numpy()
    disc_boxes, disc_pres = vis["disc_boxes"].numpy(), vis["disc_pres"].numpy()
    prop_boxes, prop_pres = vis["prop_boxes"].numpy(), vis["prop_pres"].numpy()
    boxes = out.boxes.detach().float().cpu().numpy()
    pres = out.presence.detach().float().cpu().numpy()
    ids = np.where(pres > PRESENCE_THRESHOLD, out.ids.detach().cpu().numpy(), -1)
    all_ids = out.ids.detach().cpu().numpy()
    panels = []
    for i in range(b):
        rows: list[list[np.ndarray]] = [[] for _ in ROWS]
        frames = []
        history: deque = deque(maxlen=8)
        for t in range(t_len):
            base = _enlarge(inp[i, t], k)
            seg_img = segmentation_overlay(video[i, t] * 0.35, seg[i, t], alpha=1.0)
            # discovery: every cell's proposal, faint unless its presence exceeds 0.5
            on = disc_pres[i, t] > PRESENCE_THRESHOLD
            disc = _plain_boxes(base, disc_boxes[i, t][~on], FAINT_COLOR, thick, FAINT_WEIGHT)
            disc = _plain_boxes(disc, disc_boxes[i, t][on], DISC_COLOR, thick)
            # propagation: the objects tracked after frame t-1, in their slot order, with their IDs
            n = min(prop_boxes.shape[2], all_ids.shape[2])
            prop_ids = all_ids[i, t - 1, :n] if t > 0 else np.full(n, -1)
            p_on = (prop_ids >= 0) & (prop_pres[i, t, :n] > PRESENCE_THRESHOLD)
            p_off = (prop_ids >= 0) & ~p_on
            prop = _plain_boxes(base, prop_boxes[i, t, :n][p_off], FAINT_COLOR, thick, FAINT_WEIGHT)
            prop = draw_boxes(prop, prop_boxes[i, t, :n][p_on], prop_ids[p_on], thickness=thick)
            # tracked after frame t (what the tracker reports), with trails
            keep = ids[i, t] >= 0
            history.append((boxes[i, t][keep], ids[i, t][keep]))
            tracked = draw_boxes(draw_trails(base, history, thick), boxes[i, t][keep], ids[i, t][keep],
                                 thickness=thick)
            for r, img in enumerate((base, rec[i, t], bg[i, t], alpha[i, t], seg_img, disc, prop, tracked)):
                rows[r].append(_enlarge(img, k) if img.shape[0] == h else img)
            sep = np.full((tracked.shape[0], max(2, k), 3), 255, np.uint8)
            frames.append(np.concatenate([tracked, sep, _enlarge(rec[i, t], k)], 1))
        grid = make_grid(np.stack([np.stack(r) for r in rows]))
        panels.append((_labelled(grid, ROWS, h * k), frames))
    return panels


def sequence_metrics(out: Any) -> list[dict[str, float]]:
    """Per-sequence numbers of a SequenceOutput: loss terms, counts, distinct IDs with presence > 0.5."""
    counts = out.counts.detach().float().cpu()
    ids = torch.where(out.presence.detach().cpu() > PRESENCE_THRESHOLD, out.ids.detach().cpu(), -1)
    terms = {name: getattr(out, name).detach().float().cpu() for name in TERMS}
    neg_elbo = out.neg_elbo.detach().float().cpu()
    rows = []
    for i in range(counts.shape[0]):
        row = {"sequence": i, "neg_elbo": float(neg_elbo[i])}
        row.update({name: float(v[i]) for name, v in terms.items()})
        row.update(count_mean=float(counts[i].mean()), count_last=float(counts[i, -1]),
                   num_ids=int(ids[i][ids[i] >= 0].unique().numel()),
                   counts=" ".join(str(int(c)) for c in counts[i].tolist()))
        rows.append(row)
    return rows


@contextmanager
def _quiet_c_stderr():
    """Silence file descriptor 2 for a moment: OpenCV's FFmpeg backend prints codec-tag notices there itself."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _open_webm(path: Path, fps: float, width: int, height: int) -> cv2.VideoWriter:
    with _quiet_c_stderr():  # FFmpeg accepts VP8 in webm but says the 'VP80' tag is not its own, for every file
        return cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"VP80"), float(fps), (width, height))


@functools.cache
def webm_supported() -> bool:
    """Whether this OpenCV build encodes VP8 webm (asked once per process, by writing and reading back a probe)."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.webm"
        writer = _open_webm(probe, 1.0, 16, 16)
        if not writer.isOpened():
            return False
        writer.write(np.zeros((16, 16, 3), np.uint8))
        writer.release()
        reader = cv2.VideoCapture(str(probe))
        ok = reader.read()[0]
        reader.release()
    return bool(ok)


def _write_webm(path: Path, frames: list[np.ndarray], fps: float) -> Path | None:
    """VP8 webm (plays in browsers, unlike mp4v); None where OpenCV cannot encode it (then mp4 is written)."""
    if not webm_supported():
        return None
    h, w = frames[0].shape[:2]
    writer = _open_webm(path, fps, w + w % 2, h + h % 2)
    if not writer.isOpened():
        return None
    try:
        for f in frames:
            writer.write(np.ascontiguousarray(np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)))[..., ::-1]))
    finally:
        writer.release()
    return path


def _video_of(batch: Any) -> Tensor | None:
    """The (B, T, 3, H, W) video of a batch: a dict's "video", a tensor, or the first item of a tuple."""
    if isinstance(batch, dict):
        batch = batch.get("video")
    elif isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    return batch if isinstance(batch, Tensor) and batch.dim() == 5 else None


# ---------------------------------------------------------------------------------------------- callback
class VisualizationCallback(L.Callback):
    """Draw inputs, reconstructions, layers, segmentations, boxes and tracks every ``every_n_steps`` steps.

    every_n_steps: optimiser steps between drawings (0: never during training); num_sequences: sequences
    drawn; fps: of the videos; on_validation: also draw at the end of each validation (not the sanity
    check); max_frames: at most this many frames per sequence (None: all); media_dir: where files go
    (None: ``<trainer.log_dir>/media``); deterministic: draw the posterior means instead of a sample;
    min_side: images are enlarged to at least this many pixels per side.
    """

    def __init__(self, every_n_steps: int = 500, num_sequences: int = 3, fps: int = 5, on_validation: bool = True,
                 max_frames: int | None = None, media_dir: str | None = None, deterministic: bool = False,
                 min_side: int = 128) -> None:
        super().__init__()
        if int(every_n_steps) < 0 or int(num_sequences) < 1 or not float(fps) > 0:
            raise ValueError(f"VisualizationCallback needs every_n_steps >= 0, num_sequences >= 1 and fps > 0; "
                             f"got {every_n_steps}, {num_sequences}, {fps}.")
        self.every_n_steps = int(every_n_steps)
        self.num_sequences = int(num_sequences)
        self.fps = float(fps)
        self.on_validation = bool(on_validation)
        self.max_frames = None if max_frames is None else int(max_frames)
        self.media_dir = None if media_dir in (None, "") else str(media_dir)
        self.deterministic = bool(deterministic)
        self.min_side = int(min_side)
        self._root: Path | None = None
        self._val_video: Tensor | None = None
        self._last_step: int | None = None
        self._told = False
        self.written: list[Path] = []  # files written (for users and tests)

    # -------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir broadcasts: every rank must ask, so ask here rather than on rank 0 only.
        if self.media_dir is not None:
            self._root = Path(self.media_dir)
        else:
            self._root = Path(trainer.log_dir or trainer.default_root_dir) / "media"

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._val_video is None and trainer.is_global_zero and dataloader_idx == 0:
            video = _video_of(batch)
            if video is not None:
                self._val_video = video[: self.num_sequences].detach().cpu().clone()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps == 0 or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        if not trainer.is_global_zero:
            return
        video, split = self._val_video, "val"
        if video is None:
            video, split = _video_of(batch), "train"
            if video is None:
                return
            video = video[: self.num_sequences].detach()
        self.draw(trainer, pl_module, video, split)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (not self.on_validation or trainer.sanity_checking or not trainer.is_global_zero
                or self._val_video is None or trainer.global_step == self._last_step):
            return
        self.draw(trainer, pl_module, self._val_video, "val")

    # -------------------------------------------------------------- drawing and logging
    @staticmethod
    def _schedule(trainer: L.Trainer, pl_module: L.LightningModule) -> Schedule:
        step = trainer.global_step
        if callable(getattr(pl_module, "schedule_at", None)):
            return pl_module.schedule_at(step)
        if callable(getattr(pl_module, "schedule", None)):
            return pl_module.schedule()
        curriculum = getattr(pl_module, "curriculum", None)
        if callable(getattr(curriculum, "at", None)):
            return curriculum.at(step)
        return Schedule()

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, video: Tensor, split: str = "val") -> None:
        """Run the model on video (B, T, 3, H, W) and log / write its pictures for the current global step."""
        step = trainer.global_step
        self._last_step = step
        model = pl_module.model
        video = video[: self.num_sequences]
        if self.max_frames is not None:
            video = video[:, : self.max_frames]
        video = video.to(pl_module.device, torch.float32)
        with evaluating(model):
            out = model(video, self._schedule(trainer, pl_module), visuals=True, deterministic=self.deterministic)
        panels = render_panels(video, out, self.min_side)
        metrics = sequence_metrics(out)
        for row in metrics:
            row.update(step=step, split=split)
        folder = self._media_root(trainer) / f"step_{step}"
        folder.mkdir(parents=True, exist_ok=True)
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if wandb_loggers:
            self._to_wandb(wandb_loggers, panels, metrics, folder, split, step)
        else:
            self._to_files(trainer, panels, metrics, folder, split)

    def _media_root(self, trainer: L.Trainer) -> Path:
        if self._root is None:  # setup() was not called: no broadcast from rank 0 alone
            self._root = Path(self.media_dir or trainer.default_root_dir) / "media"
        return self._root

    def _to_wandb(self, loggers: list[WandbLogger], panels: list, metrics: list[dict], folder: Path, split: str,
                  step: int) -> None:
        videos, fmt = [], []
        for i, (_, frames) in enumerate(panels):
            path = _write_webm(folder / f"{split}_tracking_{i}.webm", frames, self.fps)
            if path is None:  # no VP8 encoder: mp4 still uploads (browsers may not play mp4v)
                path = folder / f"{split}_tracking_{i}.mp4"
                with VideoWriter(path, self.fps) as writer:
                    for f in frames:
                        writer.write(f)
            videos.append(str(path))
            fmt.append(path.suffix[1:])
            self.written.append(path)
        captions = [f"sequence {i}, step {step}; rows: {', '.join(ROWS)}" for i in range(len(panels))]
        columns = list(metrics[0])
        for lg in loggers:
            lg.log_image(key=f"media/{split}/panels", images=[g for g, _ in panels], step=step, caption=captions)
            lg.log_video(key=f"media/{split}/tracking", videos=videos, step=step,
                         caption=[f"sequence {i}, step {step}" for i in range(len(videos))])
            lg.log_table(key=f"media/{split}/sequences", columns=columns,
                         data=[[row[c] for c in columns] for row in metrics], step=step)

    def _to_files(self, trainer: L.Trainer, panels: list, metrics: list[dict], folder: Path, split: str) -> None:
        if not self._told:
            names = ", ".join(type(lg).__name__ for lg in trainer.loggers) or "no logger"
            log.info("VisualizationCallback: %s cannot show images or videos; writing PNG/MP4/CSV files under %s.",
                     names, self._media_root(trainer))
            self._told = True
        for i, (grid, frames) in enumerate(panels):
            png = folder / f"{split}_panels_{i}.png"
            if not cv2.imwrite(str(png), grid[..., ::-1]):
                raise OSError(f"OpenCV could not write {png}; check that the folder is writable.")
            mp4 = folder / f"{split}_tracking_{i}.mp4"
            with VideoWriter(mp4, self.fps) as writer:
                for f in frames:
                    writer.write(f)
            self.written += [png, mp4]
        table = folder / f"{split}_sequences.csv"
        with open(table, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(metrics[0]))
            writer.writeheader()
            writer.writerows(metrics)
        self.written.append(table)
