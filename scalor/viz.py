"""Drawing and writing helpers: ID colours, boxes, trails, grids, overlays, videos, MOTChallenge text.

Images here are uint8 (H, W, 3) RGB NumPy arrays unless a docstring says otherwise; the model's float
[0, 1] (3, H, W) tensors convert with ``to_uint8_hwc`` / ``to_float_chw``. Boxes are normalised
(x1, y1, x2, y2); an ID < 0 marks padding and is never drawn or written. Drawing functions return a new
array and leave their input untouched. OpenCV does the drawing and the video encoding (mp4v).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

__all__ = [
    "VideoWriter",
    "draw_boxes",
    "draw_trails",
    "id_colors",
    "make_grid",
    "mark_generated",
    "mot_rows",
    "segmentation_overlay",
    "to_float_chw",
    "to_uint8_hwc",
    "write_mot_txt",
    "write_video",
]

PAD_COLOR = (128, 128, 128)  # colour of negative (padding) IDs
GEN_COLOR = (255, 0, 0)  # marker colour of generated frames (RGB red)


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_uint8_hwc(images) -> np.ndarray:
    """Float [0, 1] (..., 3, H, W) tensor or array -> uint8 (..., H, W, 3) array (clipped, rounded)."""
    x = _np(images).astype(np.float32)
    x = np.moveaxis(x, -3, -1)
    return np.ascontiguousarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8))


def to_float_chw(images) -> torch.Tensor:
    """Uint8 (..., H, W, 3) array or tensor -> float32 (..., 3, H, W) tensor in [0, 1]."""
    x = torch.as_tensor(_np(images)).float().div(255.0)
    return x.movedim(-1, -3).contiguous()


def id_colors(ids) -> np.ndarray:
    """Object IDs (...) int -> colours (..., 3) uint8 RGB; a fixed hash of the ID, the same in every run.

    Hue is a Fibonacci hash of the ID (consecutive IDs are ~0.38 of the colour wheel apart), saturation
    and value vary with a splitmix64 hash of it. Negative IDs (padding) are grey.
    """
    ids = _np(ids).astype(np.int64)
    shape = ids.shape
    u = ids.reshape(-1).astype(np.uint64)
    with np.errstate(over="ignore"):
        fib = u * np.uint64(0x9E3779B97F4A7C15)
        h = fib + np.uint64(0x9E3779B97F4A7C15)  # splitmix64 finaliser
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
    hue = (fib >> np.uint64(40)).astype(np.float64) / float(1 << 24)  # [0, 1)
    sat = 0.65 + 0.35 * ((h >> np.uint64(16)) & np.uint64(0xFF)).astype(np.float64) / 255.0
    val = 0.8 + 0.2 * ((h >> np.uint64(8)) & np.uint64(0xFF)).astype(np.float64) / 255.0
    # HSV -> RGB
    k = np.stack([(5.0 + hue * 6.0) % 6.0, (3.0 + hue * 6.0) % 6.0, (1.0 + hue * 6.0) % 6.0], axis=-1)
    rgb = val[:, None] - val[:, None] * sat[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    out = np.rint(rgb * 255.0).astype(np.uint8)
    out[ids.reshape(-1) < 0] = PAD_COLOR
    return out.reshape(*shape, 3)


def _pixel_boxes(boxes, height: int, width: int) -> np.ndarray:
    """Normalised (N, 4) xyxy -> int (N, 4) pixel corners, clipped to the image."""
    b = _np(boxes).astype(np.float64).reshape(-1, 4) * np.array([width, height, width, height])
    b = np.rint(b)
    b[:, 0::2] = np.clip(b[:, 0::2], 0, width - 1)
    b[:, 1::2] = np.clip(b[:, 1::2], 0, height - 1)
    return b.astype(np.int64)


def _font_scale(height: int, width: int) -> float:
    return max(0.25, min(height, width) / 256.0)


def _check_frame(frame) -> np.ndarray:
    f = _np(frame)
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) frame, got {f.dtype} {f.shape}; convert with to_uint8_hwc.")
    return np.ascontiguousarray(f).copy()


def draw_boxes(frame, boxes, ids, labels: bool = True, thickness: int = 1) -> np.ndarray:
    """Draw boxes in ID colours: frame uint8 (H, W, 3), boxes (N, 4) normalised xyxy, ids (N,) -> new frame.

    Boxes with a negative ID or non-finite coordinates are skipped; ``labels`` writes the ID in the box's
    top-left corner.
    """
    out = _check_frame(frame)
    H, W = out.shape[:2]
    b = _np(boxes).reshape(-1, 4)
    ids = _np(ids).reshape(-1).astype(np.int64)
    keep = (ids >= 0) & np.isfinite(b).all(axis=1)
    if not keep.any():
        return out
    px = _pixel_boxes(b[keep], H, W)
    colors = id_colors(ids[keep])
    scale = _font_scale(H, W)
    for (x1, y1, x2, y2), c, i in zip(px.tolist(), colors.tolist(), ids[keep].tolist()):
        cv2.rectangle(out, (x1, y1), (x2, y2), tuple(c), thickness)
        if labels:
            (tw, th), _ = cv2.getTextSize(str(i), cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            org = (min(x1 + 1, max(W - tw, 0)), min(max(y1 + th + 1, th), H - 1))
            cv2.putText(out, str(i), org, cv2.FONT_HERSHEY_SIMPLEX, scale, tuple(c), 1, cv2.LINE_AA)
    return out


def draw_trails(frame, history: Iterable[tuple], thickness: int = 1) -> np.ndarray:
    """Draw each ID's recent box centres as a polyline: frame uint8 (H, W, 3) -> new frame.

    ``history`` is a sequence of ``(boxes (N, 4) normalised xyxy, ids (N,))`` for consecutive frames, oldest
    first (e.g. a ``collections.deque(maxlen=k)`` a streaming tracker appends to). A trail breaks where the
    ID is absent from a frame.
    """
    out = _check_frame(frame)
    H, W = out.shape[:2]
    last: dict[int, tuple[int, int]] = {}
    for boxes, ids in history:
        b = _np(boxes).astype(np.float64).reshape(-1, 4)
        ids = _np(ids).reshape(-1).astype(np.int64)
        keep = (ids >= 0) & np.isfinite(b).all(axis=1)
        cx = np.rint((b[keep, 0] + b[keep, 2]) * 0.5 * W).clip(0, W - 1).astype(int)
        cy = np.rint((b[keep, 1] + b[keep, 3]) * 0.5 * H).clip(0, H - 1).astype(int)
        now = {i: (x, y) for i, x, y in zip(ids[keep].tolist(), cx.tolist(), cy.tolist())}
        if now:
            colors = dict(zip(now, id_colors(np.fromiter(now, np.int64)).tolist()))
            for i, p in now.items():
                if i in last:
                    cv2.line(out, last[i], p, tuple(colors[i]), thickness, cv2.LINE_AA)
        last = now
    return out


def make_grid(videos, pad: int = 1, pad_value: int = 255) -> np.ndarray:
    """Tile videos uint8 (R, T, H, W, 3) (or one (T, H, W, 3)) -> uint8 image; rows = sequences, columns = frames.

    The result is (R*H + (R+1)*pad, T*W + (T+1)*pad, 3) with ``pad_value`` between tiles.
    """
    v = _np(videos)
    if v.ndim == 4:
        v = v[None]
    if v.ndim != 5 or v.shape[-1] != 3 or v.dtype != np.uint8:
        raise ValueError(f"expected uint8 videos (R, T, H, W, 3), got {v.dtype} {v.shape}; convert with to_uint8_hwc.")
    R, T, H, W, _ = v.shape
    grid = np.full((R * H + (R + 1) * pad, T * W + (T + 1) * pad, 3), pad_value, dtype=np.uint8)
    for r in range(R):
        y = pad + r * (H + pad)
        for t in range(T):
            x = pad + t * (W + pad)
            grid[y : y + H, x : x + W] = v[r, t]
    return grid


class VideoWriter:
    """Streaming mp4 (mp4v) writer for uint8 (H, W, 3) RGB frames, one at a time; a context manager.

    The size is fixed by the first frame; odd sizes are padded with black to even ones (the codec needs
    them). Memory does not grow with the number of frames.

    >>> with VideoWriter("out.mp4", fps=10) as w:
    ...     for frame in frames:
    ...         w.write(frame)
    """

    def __init__(self, path: str | os.PathLike, fps: float = 10.0) -> None:
        self.path = Path(path)
        self.fps = float(fps)
        self.num_frames = 0
        self.size: tuple[int, int] | None = None  # (H, W) of the input frames
        self._writer: cv2.VideoWriter | None = None

    def _open(self, height: int, width: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (height, width)
        w = cv2.VideoWriter(
            str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width + width % 2, height + height % 2)
        )
        if not w.isOpened():
            raise OSError(f"OpenCV cannot write the video {self.path}; check that the folder is writable.")
        self._writer = w

    def write(self, frame) -> None:
        """Append one frame, uint8 (H, W, 3) RGB."""
        f = _np(frame)
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) frame, got {f.dtype} {f.shape}; convert with to_uint8_hwc.")
        if self._writer is None:
            self._open(*f.shape[:2])
        elif f.shape[:2] != self.size:
            raise ValueError(f"frame size {f.shape[:2]} differs from the video's {self.size}; resize frames first.")
        H, W = f.shape[:2]
        if H % 2 or W % 2:
            f = np.pad(f, ((0, H % 2), (0, W % 2), (0, 0)))
        self._writer.write(np.ascontiguousarray(f[..., ::-1]))  # RGB -> BGR
        self.num_frames += 1

    def close(self) -> None:
        """Finish the file (safe to call twice)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_video(path: str | os.PathLike, frames, fps: float = 10.0) -> Path:
    """Write uint8 (T, H, W, 3) RGB frames to an mp4 (mp4v) file; returns the path."""
    with VideoWriter(path, fps) as w:
        for f in _np(frames):
            w.write(f)
    return Path(path)


def segmentation_overlay(frame, seg_ids, alpha: float = 0.5) -> np.ndarray:
    """Blend ID colours over an image: frame float [0, 1] (3, H, W), seg_ids int (H, W) -> uint8 (H, W, 3).

    Pixels with seg_id < 0 (background) keep the image's colour; the others become
    ``(1 - alpha) * image + alpha * id_colour``.
    """
    img = to_uint8_hwc(frame).astype(np.float32)
    seg = _np(seg_ids).astype(np.int64)
    if seg.shape != img.shape[:2]:
        raise ValueError(f"seg_ids has shape {seg.shape} but the frame is {img.shape[:2]}; they must agree.")
    fg = seg >= 0
    if fg.any():
        colors = id_colors(seg[fg]).astype(np.float32)
        img[fg] = (1.0 - alpha) * img[fg] + alpha * colors
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def mark_generated(frame, text: str = "GEN") -> np.ndarray:
    """Mark an imagined (generated) frame with a red border and ``text``: uint8 (H, W, 3) -> new frame."""
    out = _check_frame(frame)
    H, W = out.shape[:2]
    b = max(1, round(min(H, W) / 32))
    out[:b], out[-b:], out[:, :b], out[:, -b:] = GEN_COLOR, GEN_COLOR, GEN_COLOR, GEN_COLOR
    scale = _font_scale(H, W)
    (_, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(out, text, (b + 1, min(b + 1 + th, H - 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, GEN_COLOR, 1, cv2.LINE_AA)
    return out


def mot_rows(frame_index: int, boxes, ids, width: int, height: int, conf=None) -> list[tuple]:
    """Rows for one frame: 0-based frame_index, boxes (N, 4) normalised xyxy, ids (N,), conf (N,) or None (1.0).

    Returns ``(frame, id, x, y, w, h, conf)`` tuples with a 1-based frame number and pixel units
    (x, y = top-left corner); negative IDs are dropped.
    """
    b = _np(boxes).astype(np.float64).reshape(-1, 4) * np.array([width, height, width, height])
    ids = _np(ids).reshape(-1).astype(np.int64)
    c = np.ones(len(ids)) if conf is None else _np(conf).astype(np.float64).reshape(-1)
    return [
        (frame_index + 1, int(i), float(x1), float(y1), float(x2 - x1), float(y2 - y1), float(s))
        for (x1, y1, x2, y2), i, s in zip(b.tolist(), ids.tolist(), c.tolist())
        if i >= 0
    ]


def write_mot_txt(path: str | os.PathLike, rows: Iterable[Sequence], append: bool = False) -> int:
    """Write MOTChallenge lines ``frame,id,x,y,w,h,conf,-1,-1,-1``; returns the number of lines written.

    Each row is ``(frame, id, x, y, w, h[, conf])`` with a 1-based frame number and pixel units (see
    ``mot_rows``); conf defaults to 1. ``append=True`` adds to an existing file (for streaming).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "a" if append else "w", encoding="ascii") as fh:
        for row in rows:
            frame, oid, x, y, w, h, *rest = row
            if int(frame) < 1:
                raise ValueError(f"MOT frame numbers start at 1, got {frame}; pass frame_index + 1.")
            conf = float(rest[0]) if rest else 1.0
            fh.write(f"{int(frame)},{int(oid)},{x:.2f},{y:.2f},{w:.2f},{h:.2f},{conf:.4g},-1,-1,-1\n")
            n += 1
    return n
