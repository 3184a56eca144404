"""Your own footage (``data=video``): any video file OpenCV can read, or a folder of images (natural name order).

Training decodes the frames once, fitted to ``img_size``, into a memory-mapped cache under ``data.root`` and cuts
them into clips of ``seq_len`` frames ``frame_skip`` apart: train is the first part of the footage, then val and
test (``val_fraction``, ``test_fraction``), in time order. Tracking streams instead: ``footage_frames`` (the
footage's own frames) and ``iter_frames`` (fitted to the model) hold one frame at a time, and ``FrameFit`` maps
the model's boxes and frame numbers back to the footage. ``resize='resize'`` scales the whole frame to img_size x
img_size (the aspect ratio is not kept); ``resize='crop'`` takes the centred square of side ``crop_size`` (default
img_size, i.e. native pixels) and scales it to img_size. ``resize='tiles'`` scales the whole frame by ``scale``
(aspect kept) and trains on img_size windows of it (every ``tile_stride`` px); tracking then covers the whole frame
with windows overlapping by ``tile_overlap`` px, joined into one set of tracks (``TileFit``,
:mod:`scalor.tracking.tiles`).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from numpy.lib import format as npy_format
from tqdm.auto import tqdm

from scalor.datamodules.base import (SPLITS, AtomicFolder, BaseDataModule, MemmapDataset, check_writable_root, crop,
                                     floor_fraction, is_complete, list_images, read_image, require, resize_square,
                                     to_video_tensor)
from scalor.errors import DataError
from scalor.tracking.tiles import tile_rects

RESIZE_MODES = ("resize", "crop", "tiles")
DEFAULT_FPS = 25.0


def _open_video(path: Path) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(f"OpenCV cannot open the video data.path={path}; convert it (e.g. ffmpeg -i {path} "
                        "-c:v libx264 clip.mp4) or pass a folder of frames.")
    return cap


def _source(path: str | Path) -> Path:
    path = Path(str(path)).expanduser()
    if not path.exists():
        raise DataError(f"data.path={path} does not exist; point data.path at a video file or a folder of images.")
    return path


def _raw_frames(path: str | Path, frame_skip: int = 1) -> Iterator[tuple[str, np.ndarray]]:
    """(description, RGB uint8 (h, w, 3)) of frames 0, k, 2k, ... of a video file or image folder."""
    path = _source(path)
    if path.is_dir():
        for file in list_images(path, "data.path", numeric=False)[::frame_skip]:
            yield f"frame {file}", read_image(file)
        return
    cap = _open_video(path)
    try:
        index = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield f"frame {index} of {path}", cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            index += 1
            for _ in range(frame_skip - 1):
                if not cap.grab():
                    return
                index += 1
        if index == 0:
            raise DataError(f"OpenCV opened data.path={path} but could not decode a single frame; re-encode the "
                            "video (e.g. ffmpeg -i IN -c:v libx264 clip.mp4) or pass a folder of frames.")
    finally:
        cap.release()


def fit_region(height: int, width: int, img_size: int, resize: str = "resize",
               crop_size: int | None = None) -> tuple[int, int, int, int]:
    """(left, top, width, height) in pixels of the part of a height x width frame that ``fit_frame`` scales to
    img_size x img_size: the whole frame (resize), or the centred square of side crop_size (crop; default img_size)."""
    if resize in ("resize", "tiles"):
        return 0, 0, int(width), int(height)
    side = int(crop_size) if crop_size else int(img_size)
    return (int(width) - side) // 2, (int(height) - side) // 2, side, side


def scaled_hw(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size of a height x width frame scaled by ``scale`` (tiles mode), at least 1 px a side."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def scale_frame(img: np.ndarray, scale: float) -> np.ndarray:
    """RGB uint8 (h, w, 3) scaled by ``scale`` (area averaging when shrinking), aspect kept."""
    h, w = scaled_hw(*img.shape[:2], scale)
    if (h, w) == img.shape[:2]:
        return img
    inter = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=inter)


def fit_frame(img: np.ndarray, img_size: int, resize: str = "resize", crop_size: int | None = None,
              where: str = "a frame", scale: float = 1.0) -> np.ndarray:
    """RGB uint8 (h, w, 3) -> (img_size, img_size, 3): whole-frame resize, or centred crop then resize; in tiles
    mode the whole frame scaled by ``scale`` (h', w', 3), at least img_size a side."""
    if resize == "tiles":
        out = scale_frame(img, scale)
        h, w = out.shape[:2]
        if min(h, w) < img_size:
            raise DataError(f"{where} is {img.shape[1]}x{img.shape[0]} px, {w}x{h} px at data.scale={scale}, "
                            f"smaller than one {img_size} px tile; raise data.scale or lower data.img_size.")
        return out
    if resize == "resize":
        return resize_square(img, img_size)
    left, top, side, _ = fit_region(*img.shape[:2], img_size, resize, crop_size)
    key = "data.crop_size" if crop_size else "data.img_size (or set data.crop_size)"
    return resize_square(crop(img, left, top, side, where, key), img_size)


@dataclass(frozen=True)
class FrameFit:
    """How streamed footage becomes the model's input, and how the model's boxes and frames go back to it.

    Stream frame k (0-based) is footage frame ``k * frame_skip + 1`` (1-based, as MOTChallenge counts); a footage
    frame (h, w) becomes the model's (3, img_size, img_size) input by scaling its ``fit_region`` (whole frame or
    centred crop) to the square, so a box maps back by the inverse scaling plus the region's offset.
    """

    img_size: int
    resize: str = "resize"
    crop_size: int | None = None
    frame_skip: int = 1

    def __post_init__(self) -> None:
        require(self.resize in ("resize", "crop"), f"data.resize={self.resize!r}: FrameFit fits resize or crop "
                "(tiles: TileFit).")
        require(int(self.frame_skip) >= 1, f"data.frame_skip={self.frame_skip} must be at least 1.")

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, top, width, height) in footage pixels of what the model sees of a height x width frame."""
        return fit_region(height, width, self.img_size, self.resize, self.crop_size)

    def frame_number(self, k: int) -> int:
        """The footage's 1-based frame number of stream frame k (0-based)."""
        return int(k) * int(self.frame_skip) + 1

    def model_input(self, img: np.ndarray, where: str = "a frame") -> np.ndarray:
        """RGB uint8 (h, w, 3) footage frame -> float32 (3, img_size, img_size) in [0, 1]."""
        fitted = fit_frame(img, self.img_size, self.resize, self.crop_size, where)
        return fitted.transpose(2, 0, 1).astype(np.float32) / 255.0

    def to_footage(self, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
        """Boxes (..., 4) normalised xyxy of the model's input -> float64 (..., 4) xyxy pixels of the height x width
        footage frame, clipped to it."""
        left, top, w, h = self.region(height, width)
        b = np.asarray(boxes, np.float64) * np.array([w, h, w, h]) + np.array([left, top, left, top])
        return np.clip(b, 0, np.array([width, height, width, height], np.float64))


@dataclass(frozen=True)
class TileFit:
    """Whole-frame tracking of a model trained on windows (``resize='tiles'``): a footage frame is scaled by
    ``scale`` and cut into img_size tiles overlapping by at least ``overlap`` px (:func:`tile_rects`), one batch
    element each; each tile's boxes map back by its offset and the inverse scaling. Frame numbers as
    :class:`FrameFit`."""

    img_size: int
    scale: float
    overlap: int
    frame_skip: int = 1

    def __post_init__(self) -> None:
        require(float(self.scale) > 0, f"data.scale={self.scale} must be > 0.")
        require(0 <= int(self.overlap) < int(self.img_size),
                f"data.tile_overlap={self.overlap} must be in [0, data.img_size={self.img_size}).")
        require(int(self.frame_skip) >= 1, f"data.frame_skip={self.frame_skip} must be at least 1.")

    def frame_number(self, k: int) -> int:
        """The footage's 1-based frame number of stream frame k (0-based)."""
        return int(k) * int(self.frame_skip) + 1

    def tiles(self, height: int, width: int) -> np.ndarray:
        """(N, 4) xyxy of the tiles in the scaled frame's pixels."""
        h, w = scaled_hw(height, width, self.scale)
        if min(h, w) < self.img_size:
            raise DataError(f"the footage is {width}x{height} px, {w}x{h} px at data.scale={self.scale}, smaller "
                            f"than one {self.img_size} px tile; raise data.scale.")
        return tile_rects(h, w, self.img_size, self.overlap)

    def footage_tiles(self, height: int, width: int) -> np.ndarray:
        """(N, 4) float xyxy of the tiles in footage pixels."""
        h, w = scaled_hw(height, width, self.scale)  # multiplied first: frame edges come out exact
        return self.tiles(height, width) * np.array([width, height, width, height]) / np.array([w, h, w, h])

    def model_input(self, img: np.ndarray, where: str = "a frame") -> np.ndarray:
        """RGB uint8 (h, w, 3) footage frame -> float32 (N, 3, img_size, img_size) tiles in [0, 1]."""
        rects = self.tiles(*img.shape[:2])  # DataError naming data.scale for footage smaller than a tile
        scaled = scale_frame(img, self.scale)
        tiles = np.stack([scaled[t:b, l:r] for l, t, r, b in rects])
        return tiles.transpose(0, 3, 1, 2).astype(np.float32) / 255.0

    def to_footage(self, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
        """Boxes (N, ..., 4) normalised xyxy of each tile -> float64 (N, ..., 4) xyxy footage pixels, clipped."""
        rects = self.footage_tiles(height, width)
        b = np.asarray(boxes, np.float64)
        extra = (1,) * (b.ndim - 2)
        size = (rects[:, 2:] - rects[:, :2]).reshape(-1, *extra, 2)
        origin = rects[:, :2].reshape(-1, *extra, 2)
        out = np.concatenate([b[..., :2] * size + origin, b[..., 2:] * size + origin], axis=-1)
        return np.clip(out, 0, np.array([width, height, width, height], np.float64))


def footage_frames(path: str | Path, frame_skip: int = 1) -> Iterator[np.ndarray]:
    """Stream frames 0, k, 2k, ... (k = frame_skip) of a video or image folder as they are: RGB uint8 (h, w, 3).

    Memory stays at one frame whatever the length. Raises DataError for unreadable input.
    """
    require(int(frame_skip) >= 1, f"data.frame_skip={frame_skip} must be at least 1.")
    for _, img in _raw_frames(path, int(frame_skip)):
        yield img


def iter_frames(path: str | Path, img_size: int, frame_skip: int = 1, resize: str = "resize",
                crop_size: int | None = None) -> Iterator[np.ndarray]:
    """Stream frames 0, k, 2k, ... (k = frame_skip) of a video or image folder as float32 (3, H, W) in [0, 1],
    fitted to img_size (:class:`FrameFit`).

    Memory stays at one frame whatever the length. Raises DataError for unreadable input.
    """
    fit = FrameFit(img_size, resize, crop_size, int(frame_skip))
    for where, img in _raw_frames(path, fit.frame_skip):
        yield fit.model_input(img, where)


def video_fps(path: str | Path) -> float:
    """Frames per second of a video file (25 for image folders or when the file does not say)."""
    path = _source(path)
    if path.is_dir():
        return DEFAULT_FPS
    cap = _open_video(path)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return float(fps) if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS


def frame_count(path: str | Path) -> int | None:
    """Number of frames from the folder listing or the video header (None when the header does not say)."""
    path = _source(path)
    if path.is_dir():
        return len(list_images(path, "data.path", numeric=False))
    cap = _open_video(path)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n if n > 0 else None


class VideoClips(MemmapDataset):
    """Clips of a decoded-frames cache ``frames.npy`` uint8 (F, 3, H, W): frames start + offsets, and with
    ``corners`` (M, 2) (left, top) the size x size window there (item i: clip i // M, window i % M)."""

    def __init__(self, folder: Path, starts: np.ndarray, offsets: np.ndarray, corners: np.ndarray | None = None,
                 size: int = 0, items: np.ndarray | None = None) -> None:
        super().__init__(folder)
        self.starts, self.offsets, self.corners, self.size = starts, offsets, corners, int(size)
        n = len(starts) * (1 if corners is None else len(corners))
        self.items = np.arange(n) if items is None else items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = int(self.items[i])
        if self.corners is None:
            return {"video": to_video_tensor(self.arrays["frames"][self.starts[item] + self.offsets])}
        clip, (left, top) = divmod(item, len(self.corners))[0], self.corners[item % len(self.corners)]
        frames = self.arrays["frames"][self.starts[clip] + self.offsets, :, top:top + self.size, left:left + self.size]
        return {"video": to_video_tensor(frames)}


class VideoDataModule(BaseDataModule):
    """Clips of a user video or image folder (no ground truth). Train clips start every ``stride`` frames;
    val and test clips do not overlap. In tiles mode each clip is cut into img_size windows every ``tile_stride``
    px of the frame scaled by ``scale``; ``eval_clips`` caps val and test at that many items, evenly spaced."""

    has_ground_truth = False

    def __init__(self, path: str | None, root: str, img_size: int = 128, seq_len: int = 10, batch_size: int = 16,
                 num_workers: int = 0, pin_memory: bool | None = None, frame_skip: int = 1, resize: str = "resize",
                 crop_size: int | None = None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 stride: int = 1, scale: float = 1.0, tile_overlap: int = 32, tile_stride: int = 16,
                 eval_clips: int | None = None) -> None:
        super().__init__(img_size, seq_len, batch_size, num_workers, pin_memory)
        self.scale, self.tile_overlap, self.tile_stride = float(scale), int(tile_overlap), int(tile_stride)
        self.eval_clips = None if eval_clips in (None, "") else int(eval_clips)
        self.path = None if path in (None, "") else Path(str(path)).expanduser().resolve()
        self.root = Path(str(root)).expanduser()
        self.frame_skip, self.resize, self.stride = int(frame_skip), str(resize), int(stride)
        self.crop_size = None if crop_size in (None, "") else int(crop_size)
        self.fractions = {"val": float(val_fraction), "test": float(test_fraction)}

    def check_settings(self) -> None:
        super().check_settings()
        require(self.frame_skip >= 1, f"data.frame_skip={self.frame_skip} must be at least 1.")
        require(self.stride >= 1, f"data.stride={self.stride} must be at least 1.")
        require(self.resize in RESIZE_MODES, f"data.resize={self.resize!r} must be one of {list(RESIZE_MODES)}.")
        require(all(f >= 0 for f in self.fractions.values()) and sum(self.fractions.values()) < 1,
                f"data.val_fraction={self.fractions['val']} and data.test_fraction={self.fractions['test']} must be "
                ">= 0 with a sum below 1.")
        if self.resize == "tiles":
            require(self.scale > 0, f"data.scale={self.scale} must be > 0 (footage pixels to model pixels).")
            require(0 <= self.tile_overlap < self.img_size,
                    f"data.tile_overlap={self.tile_overlap} must be in [0, data.img_size={self.img_size}).")
            require(self.tile_stride >= 1, f"data.tile_stride={self.tile_stride} must be at least 1.")
        require(self.eval_clips is None or self.eval_clips >= 1,
                f"data.eval_clips={self.eval_clips} must be at least 1 (or null: all).")

    @property
    def span(self) -> int:
        """Frames covered by one clip."""
        return (self.seq_len - 1) * self.frame_skip + 1

    def _check_path(self) -> Path:
        if self.path is None:
            raise DataError("data.path is not set; pass data.path=/path/to/clip.mp4 or a folder of frames.")
        return _source(self.path)

    @property
    def cache_dir(self) -> Path:
        path = self._check_path()
        files = list_images(path, "data.path", numeric=False) if path.is_dir() else [path]
        stamp = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        fit = (self.img_size, self.resize, self.crop_size) if self.resize != "tiles" else ("tiles", self.scale)
        key = repr((stamp, *fit)).encode()
        return self.root / f"video-{path.stem}-{hashlib.sha256(key).hexdigest()[:12]}"

    def validate(self) -> None:
        self.check_settings()
        path = self._check_path()
        frames = _raw_frames(path)
        where, first = next(frames)
        frames.close()
        fit_frame(first, self.img_size, self.resize, self.crop_size, where, self.scale)
        n = frame_count(path)
        if n is not None and n < self.span:
            self._too_short(n, "the footage", n)
        check_writable_root(self.root)

    def _too_short(self, n_total: int, part: str, n: int) -> None:
        raise DataError(f"data.path={self.path} has {n_total} frames, so {part} has {n}, fewer than the {self.span} "
                        f"that one sequence needs (data.seq_len={self.seq_len}, data.frame_skip={self.frame_skip}); "
                        "use longer footage or lower data.seq_len/data.frame_skip (or the val/test fractions).")

    def prepare_data(self) -> None:
        self.validate()
        target = self.cache_dir
        if is_complete(target):
            return
        size = self.img_size
        with AtomicFolder(target, {"path": str(self.path), "img_size": size, "resize": self.resize,
                                   "crop_size": self.crop_size, "scale": self.scale}) as tmp:
            n, shape = 0, None
            with open(tmp / "frames.raw", "wb") as raw:
                bar = tqdm(total=frame_count(self.path), desc=f"decoding {self.path.name}", unit="frame",
                           leave=False, disable=None)
                for where, img in _raw_frames(self.path):
                    fitted = fit_frame(img, size, self.resize, self.crop_size, where, self.scale)
                    if shape is not None and fitted.shape != shape:
                        raise DataError(f"{where} is {img.shape[1]}x{img.shape[0]} px, unlike the frames before it; "
                                        "in tiles mode every frame must have the same size.")
                    shape = fitted.shape
                    raw.write(fitted.transpose(2, 0, 1).tobytes())
                    n += 1
                    bar.update()
                bar.close()
            header = {"descr": npy_format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (n, 3, *(shape[:2] if shape else (size, size)))}
            with open(tmp / "frames.npy", "wb") as out, open(tmp / "frames.raw", "rb") as raw:
                npy_format.write_array_header_1_0(out, header)
                shutil.copyfileobj(raw, out, 1 << 24)
            (tmp / "frames.raw").unlink()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.validate()
        target = self.cache_dir
        if not is_complete(target):
            self.prepare_data()
        n, _, height, width = np.load(target / "frames.npy", mmap_mode="r").shape
        corners = None
        if self.resize == "tiles":  # training windows every tile_stride px; val/test the tracking tiles
            xs = np.unique(np.r_[np.arange(0, width - self.img_size + 1, self.tile_stride), width - self.img_size])
            ys = np.unique(np.r_[np.arange(0, height - self.img_size + 1, self.tile_stride), height - self.img_size])
            corners = np.stack([g.ravel() for g in np.meshgrid(xs, ys)], axis=1)
            tiles = tile_rects(height, width, self.img_size, self.tile_overlap)[:, :2]
        sizes = {split: floor_fraction(n, f) for split, f in self.fractions.items()}
        sizes["train"] = n - sizes["val"] - sizes["test"]
        offsets = np.arange(self.seq_len) * self.frame_skip
        lo = 0
        for split in SPLITS:
            if sizes[split] < self.span and (split == "train" or sizes[split] > 0):
                self._too_short(n, f"the {split} split", sizes[split])
            step = self.stride if split == "train" else self.span
            starts = np.arange(lo, lo + sizes[split] - self.span + 1, step)
            where = corners if split == "train" or corners is None else tiles
            n_items = len(starts) * (1 if where is None else len(where))
            items = None
            if split != "train" and self.eval_clips is not None and n_items > self.eval_clips:
                items = np.unique(np.round(np.linspace(0, n_items - 1, self.eval_clips)).astype(np.int64))
            self.datasets[split] = VideoClips(target, starts, offsets, where, self.img_size, items)
            lo += sizes[split]
