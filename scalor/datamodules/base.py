"""Shared DataModule machinery: loaders and the batch contract (docs/model.md §7.1), atomic on-disk caches,
image I/O with one-line errors, and the moving-sprites scene engine behind the generated sets (dSprites, MNIST).

Batches are dicts: ``video`` float32 (B, T, 3, H, W) in [0, 1]; with ground truth also ``boxes`` float32
(B, T, N, 4) as normalised (x1, y1, x2, y2) and ``ids`` int64 (B, T, N), -1 (and a zero box) for padding;
generated sets add ``hidden`` float32 (B, T, N), the fraction of each object's pixels that objects in front of
it paint over (0 for padding).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import lightning as L
import numpy as np
import torch
from numpy.lib.format import open_memmap
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from scalor.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


# --------------------------------------------------------------------------------------------------------------
# DataModule base and datasets
# --------------------------------------------------------------------------------------------------------------


class BaseDataModule(L.LightningDataModule):
    """Train/val/test loaders over ``self.datasets`` (split name -> Dataset yielding contract dicts).

    Subclasses fill ``self.datasets`` in ``setup`` and implement ``validate`` (cheap input checks, no generation).
    """

    has_ground_truth: bool = False

    def __init__(self, img_size: int, seq_len: int, batch_size: int, num_workers: int = 0,
                 pin_memory: bool | None = None) -> None:
        super().__init__()
        self.img_size = int(img_size)
        self.seq_len = int(seq_len)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.datasets: dict[str, Dataset] = {}

    def check_settings(self) -> None:
        """ConfigError for impossible settings. Constructors never raise (Hydra would wrap the error), so
        ``validate`` calls this first."""
        require(self.img_size >= 8, f"data.img_size={self.img_size} is too small; use at least 8 (e.g. 64 or 128).")
        require(self.seq_len >= 1, f"data.seq_len={self.seq_len} must be at least 1.")
        require(self.batch_size >= 1, f"data.batch_size={self.batch_size} must be at least 1.")
        require(self.num_workers >= 0, f"data.num_workers={self.num_workers} must be 0 or more.")

    def validate(self) -> None:
        """Cheap startup checks of settings, paths, headers and first frames (ConfigError/DataError); generates
        nothing. ``prepare_data`` and ``setup`` run it too."""
        raise NotImplementedError

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")


def require(ok: bool, message: str, error: type[Exception] = ConfigError) -> None:
    """Raise ``error(message)`` unless ``ok``."""
    if not ok:
        raise error(message)


def to_video_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, 3, H, W) -> float32 (T, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(frames, dtype=np.uint8)).float().div_(255.0)


class MemmapDataset(Dataset):
    """A dataset over the ``*.npy`` files of a cache folder, memory-mapped lazily in each (worker) process."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._arrays: dict[str, np.ndarray] | None = None

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """File stem -> read-only memory map."""
        if self._arrays is None:
            self._arrays = {p.stem: np.load(p, mmap_mode="r") for p in sorted(self.folder.glob("*.npy"))}
        return self._arrays

    def __getstate__(self) -> dict:  # workers re-open the memory maps instead of pickling their contents
        return {**self.__dict__, "_arrays": None}


class CachedSequences(MemmapDataset):
    """Generated sequences: ``video.npy`` uint8 (S, T, 3, H, W), ``boxes.npy`` float32 (S, T, N, 4),
    ``ids.npy`` int64 (S, T, N) and ``hidden.npy`` float32 (S, T, N) (all but the video optional)."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__(folder)
        self._len = len(self.arrays["video"])

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        a = self.arrays
        item = {"video": to_video_tensor(a["video"][i])}
        if "boxes" in a:
            item["boxes"] = torch.from_numpy(np.array(a["boxes"][i], dtype=np.float32))
            item["ids"] = torch.from_numpy(np.array(a["ids"][i], dtype=np.int64))
        if "hidden" in a:
            item["hidden"] = torch.from_numpy(np.array(a["hidden"][i], dtype=np.float32))
        return item


# --------------------------------------------------------------------------------------------------------------
# Atomic caches
# --------------------------------------------------------------------------------------------------------------


def config_hash(config: dict) -> str:
    """Short stable hash of a JSON-able generation config (names the cache, so changed settings regenerate)."""
    blob = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def is_complete(folder: Path) -> bool:
    """A cache folder is complete iff its meta.json exists: folders only appear by an atomic rename after a full
    write, meta.json last."""
    return (folder / "meta.json").is_file()


class AtomicFolder:
    """Build a folder under a temporary sibling name; on success ``os.replace`` it to ``target``, on error delete it.

    If another process finished the same target first, its copy is kept and ours discarded.
    """

    def __init__(self, target: str | Path, meta: dict) -> None:
        self.target = Path(target)
        self.meta = meta
        self.tmp = self.target.parent / f".{self.target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        try:
            self.tmp.mkdir(parents=True)
        except OSError as err:
            raise DataError(f"cannot create the data cache in {self.target.parent} ({err.strerror}); "
                            "set data.root to a writable folder.") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            (self.tmp / "meta.json").write_text(json.dumps(self.meta, indent=1, sort_keys=True, default=str))
            try:
                os.replace(self.tmp, self.target)
            except OSError:
                if not is_complete(self.target):
                    shutil.rmtree(self.tmp, ignore_errors=True)
                    raise
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False


def check_writable_root(root: str | Path, key: str = "data.root") -> Path:
    """The cache root must be a folder (or creatable under a writable parent)."""
    root = Path(root).expanduser()
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe == root and not root.is_dir():
        raise DataError(f"{key}={root} exists but is not a folder; point {key} at a folder for the generated data.")
    if not os.access(probe, os.W_OK):
        raise DataError(f"{key}={root} is not writable ({probe} is read-only); set {key} to a writable folder.")
    return root


def progress(iterable: Iterable, total: int, desc: str) -> Iterator:
    """A tqdm progress bar (silent when output is not a terminal)."""
    return iter(tqdm(iterable, total=total, desc=desc, unit="seq", dynamic_ncols=True, leave=False, disable=None))


# --------------------------------------------------------------------------------------------------------------
# Image I/O
# --------------------------------------------------------------------------------------------------------------


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically: frame2 < frame10."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_images(folder: str | Path, key: str, numeric: bool) -> list[Path]:
    """Image files directly inside ``folder``, sorted by integer stem (``numeric``) or naturally.

    Raises DataError for a missing or empty folder and, with ``numeric``, for stems that are not integers.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{key}={folder} does not exist or is not a folder; point {key} at the folder of frames.")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file()]
    if not files:
        raise DataError(f"{key}={folder} holds no image files ({', '.join(IMAGE_EXTS)}); "
                        f"point {key} at the folder that holds the frames.")
    if not numeric:
        return sorted(files, key=lambda p: natural_key(p.name))
    bad = sorted(p.name for p in files if not re.fullmatch(r"\d+", p.stem))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"frame names in {key}={folder} must be integers such as 000123.png, but '{bad[0]}'{more} "
                        "is not; rename the frames to their frame numbers.")
    files.sort(key=lambda p: int(p.stem))
    for a, b in zip(files, files[1:]):
        if int(a.stem) == int(b.stem):
            raise DataError(f"frames '{a.name}' and '{b.name}' in {key}={folder} have the same frame number; "
                            "remove one of them.")
    return files


_TAILS = {".png": b"IEND\xaeB`\x82", ".jpg": b"\xff\xd9", ".jpeg": b"\xff\xd9"}


def image_is_complete(path: Path, data: bytes | None = None) -> bool:
    """Cheap truncation check of a PNG/JPEG file from its last bytes (``data``: the file's content, if read
    already); other formats pass."""
    tail = _TAILS.get(path.suffix.lower())
    if tail is None:
        return True
    if data is not None:
        return tail in data[-64:]
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64))
            return tail in f.read()
    except OSError:
        return False


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3); DataError naming the file if it is unreadable or truncated."""
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None or not image_is_complete(path, data[-64:].tobytes()):
        raise DataError(f"cannot read image {path}: the file is unreadable or truncated; "
                        "re-extract that frame or delete it.")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """(h, w, C) -> (size, size, C); area averaging when shrinking (like PIL's antialiased bilinear), else linear."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def crop(img: np.ndarray, left: int, top: int, side: int, where: str, key: str) -> np.ndarray:
    """The square ``img[top:top+side, left:left+side]``; DataError if the frame is too small for it."""
    h, w = img.shape[:2]
    if top < 0 or left < 0 or top + side > h or left + side > w:
        raise DataError(f"{where} is {w}x{h} px, too small for a {side} px crop at ({left}, {top}); "
                        f"lower {key} or use larger frames.")
    return img[top:top + side, left:left + side]


# --------------------------------------------------------------------------------------------------------------
# Moving-sprites scenes
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Sprite:
    """An object's appearance: ``rgb`` uint8 (h, w, 3) and ``mask`` bool (h, w), the pixels it draws."""

    rgb: np.ndarray
    mask: np.ndarray
    label: int = -1  # shape index (dSprites) or source digit index (MNIST)


def tight(rgb: np.ndarray, mask: np.ndarray, label: int) -> Sprite:
    """Crop a sprite to the bounding box of its mask (the mask must not be empty)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    r, c = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    return Sprite(np.ascontiguousarray(rgb[r, c]), np.ascontiguousarray(mask[r, c]), label)


def random_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) uint8 saturated colours, never dark: HSV hue uniform, saturation 0.6-1, value 0.75-1."""
    hsv = np.stack([rng.uniform(0, 180, n), rng.uniform(153, 255, n), rng.uniform(191, 255, n)], -1)
    return cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]


class MovingTexture:
    """A smooth periodic colour texture (a sum of random low-frequency waves) translated at constant velocity."""

    def __init__(self, rng: np.random.Generator, size: int, speed: float, waves: int = 5) -> None:
        freq = rng.integers(-4, 5, size=(3, waves, 2))
        freq[..., 0] = np.where((freq == 0).all(-1), 1, freq[..., 0])
        phase = rng.uniform(0, 2 * np.pi, (3, waves, 1, 1))
        amp = rng.uniform(0.5, 1.0, (3, waves, 1, 1))
        grid = np.arange(size) / size
        arg = 2 * np.pi * (freq[..., 0, None, None] * grid[None, None, None, :]
                           + freq[..., 1, None, None] * grid[None, None, :, None]) + phase
        tex = (amp * np.cos(arg)).sum(1)  # (3, size, size)
        lo, hi = tex.min((1, 2), keepdims=True), tex.max((1, 2), keepdims=True)
        self.texture = (40 + 120 * (tex - lo) / np.maximum(hi - lo, 1e-6)).astype(np.uint8).transpose(1, 2, 0)
        angle = rng.uniform(0, 2 * np.pi)
        self.velocity = speed * np.array([np.cos(angle), np.sin(angle)])

    def frame(self, t: int) -> np.ndarray:
        """(size, size, 3) uint8 texture shifted by t steps of the velocity (wrapping around)."""
        dx, dy = np.floor(t * self.velocity + 0.5).astype(int)
        return np.roll(self.texture, (dy, dx), axis=(0, 1))


@dataclass
class Scene:
    """One generated sequence: sprites, integer top-left corners ``(T, n, 2)`` as (x, y), birth frames ``(n,)``,
    and ``depth`` (paint order, back to front). Ground truth is computed from the drawn pixels."""

    sprites: list[Sprite]
    corners: np.ndarray
    births: np.ndarray
    depth: np.ndarray
    img_size: int
    background: MovingTexture | None = None

    def render(self, t: int, only: Sequence[int] | None = None, with_background: bool = True
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame t as uint8 (H, W, 3), boxes float32 (n, 4) normalised (x1, y1, x2, y2) of each object's own
        drawn pixels (whether occluded or not) and visible bool (n,) (some pixel inside the frame)."""
        size, n = self.img_size, len(self.sprites)
        if with_background and self.background is not None:
            canvas = self.background.frame(t).copy()
        else:
            canvas = np.zeros((size, size, 3), np.uint8)
        boxes, visible = np.zeros((n, 4), np.float32), np.zeros(n, bool)
        keep = None if only is None else set(only)
        for k in self.depth:
            if keep is not None and k not in keep:
                continue
            placed = self._placement(t, k)
            if placed is None:
                continue
            (x0, y0, x1, y1), window, mask = placed
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            canvas[y0:y1, x0:x1][mask] = self.sprites[k].rgb[window][mask]
            boxes[k] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
            visible[k] = True
        return canvas, boxes / size, visible

    def hidden(self, t: int) -> np.ndarray:
        """float (n,): the fraction of each object's drawn pixels in frame t that objects in front of it paint
        over (0 for an object that is not in the frame)."""
        owner = np.full((self.img_size, self.img_size), -1)
        drawn = {}
        for k in self.depth:
            placed = self._placement(t, k)
            if placed is not None:
                (x0, y0, x1, y1), _, mask = placed
                drawn[k] = (slice(y0, y1), slice(x0, x1), mask)
                owner[y0:y1, x0:x1][mask] = k
        out = np.zeros(len(self.sprites))
        for k, (rows, cols, mask) in drawn.items():
            out[k] = 1.0 - (owner[rows, cols][mask] == k).mean()
        return out

    def _placement(self, t: int, k: int) -> tuple[tuple[int, int, int, int], tuple[slice, slice], np.ndarray] | None:
        """Where object k is drawn in frame t: its (x0, y0, x1, y1) in the frame, the matching window of its
        sprite and the sprite mask there; None before its birth or when no pixel of it is in the frame."""
        if t < self.births[k]:
            return None
        sprite, (x, y), size = self.sprites[k], self.corners[t, k], self.img_size
        h, w = sprite.mask.shape
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, size), min(y + h, size)
        if x0 >= x1 or y0 >= y1:
            return None
        window = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
        mask = sprite.mask[window]
        return ((x0, y0, x1, y1), window, mask) if mask.any() else None


def simulate_motion(rng: np.random.Generator, sizes: np.ndarray, births: np.ndarray, from_border: np.ndarray,
                    bounces: np.ndarray, n_frames: int, img_size: int, speed_range: tuple[float, float]
                    ) -> np.ndarray:
    """Constant-velocity trajectories, vectorised over objects; returns integer top-left corners (T, n, 2) (x, y).

    sizes (n, 2) are (w, h). Objects start anywhere inside the frame, or, with ``from_border``, straddling a random
    border (at least one column/row visible) heading inwards. An axis bounces (for ``bounces`` objects) only once
    the object has been fully inside along it, so entering objects come in and non-bouncing ones fly out.
    """
    n = len(sizes)
    limit = (img_size - sizes).astype(np.float64)  # largest top-left coordinate that keeps the object inside
    pos = rng.uniform(0, 1, (n, 2)) * limit
    speed = rng.uniform(*speed_range, n)
    angle = rng.uniform(0, 2 * np.pi, n)
    vel = speed[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)

    side = rng.integers(0, 4, n)  # 0 left, 1 right, 2 top, 3 bottom
    axis, inward = side // 2, np.where(side % 2 == 0, 1.0, -1.0)
    tilt = rng.uniform(-np.pi / 3, np.pi / 3, n)
    rows = np.flatnonzero(from_border)
    ax = axis[rows]
    extent = sizes[rows, ax].astype(np.float64)
    overlap = rng.uniform(1, np.maximum(extent, 1.0))  # visible pixels along the entry axis at birth
    pos[rows, ax] = np.where(inward[rows] > 0, overlap - extent, img_size - overlap)
    vel[rows, ax] = inward[rows] * speed[rows] * np.cos(tilt[rows])
    vel[rows, 1 - ax] = speed[rows] * np.sin(tilt[rows])
    armed = np.ones((n, 2), bool)
    armed[rows, ax] = False

    corners = np.empty((n_frames, n, 2), np.int64)
    for t in range(n_frames):
        corners[t] = np.floor(pos + 0.5)
        moving = (births <= t)[:, None]
        pos = np.where(moving, pos + vel, pos)
        armed |= moving & (pos >= 0) & (pos <= limit)
        bounce = armed & bounces[:, None]
        low, high = bounce & (pos < 0), bounce & (pos > limit)
        pos = np.where(low, -pos, np.where(high, 2 * limit - pos, pos))
        vel = np.where(low | high, -vel, vel)
        pos = np.where(bounce, np.clip(pos, 0, limit), pos)
    return corners


class SpriteSceneDataModule(BaseDataModule):
    """Generated moving-sprite videos with exact ground truth, written once by ``prepare_data`` into
    ``root/<name>-<config hash>/<split>/`` and read back memory-mapped.

    Objects enter in waves at ``entry_frames`` (``min_objects``-``max_objects`` each): the wave at frame 0 starts
    inside the frame, later waves slide in from a border (``entry='border'``) or appear inside (``'inside'``).
    They move at constant velocity, bounce off the borders or, with probability ``exit_prob``, fly out; depth
    order is random and fixed. Ground truth exists exactly while some pixel of the object is inside the frame.
    Subclasses provide ``make_sprite`` and add their own keys to ``generation_config``.
    """

    has_ground_truth = True
    name = "sprites"
    GENERATOR_VERSION = 2  # 2: hidden.npy (the hidden fraction of every object)

    def __init__(self, root: str, img_size: int = 64, seq_len: int = 10, batch_size: int = 16,
                 num_workers: int = 0, pin_memory: bool | None = None, num_train: int = 1000, num_val: int = 50,
                 num_test: int = 100, seed: int = 0, min_objects: int = 1, max_objects: int = 5,
                 entry_frames: Sequence[int] = (0,), entry: str = "border", exit_prob: float = 0.0,
                 min_size: int = 6, max_size: int = 12, min_speed: float = 1.0, max_speed: float = 3.0,
                 background: str = "black", bg_speed: float = 1.0) -> None:
        super().__init__(img_size, seq_len, batch_size, num_workers, pin_memory)
        self.root = Path(str(root)).expanduser()
        self.counts = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.seed = int(seed)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.entry_frames = sorted(int(t) for t in entry_frames)
        self.entry = str(entry)
        self.exit_prob = float(exit_prob)
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.speed_range = (float(min_speed), float(max_speed))
        self.background = str(background)
        self.bg_speed = float(bg_speed)

    # -- configuration -----------------------------------------------------------------------------------------

    def check_settings(self) -> None:
        super().check_settings()
        for split, count in self.counts.items():
            require(count >= 1, f"data.num_{split}={count} must be at least 1.")
        require(1 <= self.min_objects <= self.max_objects,
                f"data.min_objects={self.min_objects} and data.max_objects={self.max_objects} must satisfy "
                "1 <= min_objects <= max_objects.")
        require(1 <= self.min_size <= self.max_size <= self.img_size,
                f"data.min_size={self.min_size} and data.max_size={self.max_size} must satisfy "
                f"1 <= min_size <= max_size <= data.img_size={self.img_size}.")
        require(0 <= self.speed_range[0] <= self.speed_range[1],
                f"data.min_speed={self.speed_range[0]} and data.max_speed={self.speed_range[1]} must satisfy "
                "0 <= min_speed <= max_speed.")
        require(len(self.entry_frames) >= 1 and self.entry_frames[0] == 0 and self.entry_frames[-1] < self.seq_len
                and len(set(self.entry_frames)) == len(self.entry_frames),
                f"data.entry_frames={self.entry_frames} must be distinct frames in [0, data.seq_len={self.seq_len}) "
                "and include 0.")
        require(self.entry in ("border", "inside"), f"data.entry={self.entry!r} must be 'border' or 'inside'.")
        require(0.0 <= self.exit_prob <= 1.0, f"data.exit_prob={self.exit_prob} must lie in [0, 1].")
        require(self.background in ("black", "complex"),
                f"data.background={self.background!r} must be 'black' or 'complex'.")

    @property
    def max_num_objects(self) -> int:
        """N, the slot count of ``boxes``/``ids``: the most objects a sequence can hold."""
        return self.max_objects * len(self.entry_frames)

    def generation_config(self) -> dict:
        """Every setting that changes the generated data (hashed into the cache name)."""
        return {"generator": f"{type(self).__name__}/{self.GENERATOR_VERSION}", "img_size": self.img_size,
                "seq_len": self.seq_len, "counts": self.counts, "seed": self.seed,
                "objects": [self.min_objects, self.max_objects], "entry_frames": self.entry_frames,
                "entry": self.entry, "exit_prob": self.exit_prob, "sizes": [self.min_size, self.max_size],
                "speeds": list(self.speed_range), "background": self.background, "bg_speed": self.bg_speed}

    @property
    def cache_dir(self) -> Path:
        return self.root / f"{self.name}-{config_hash(self.generation_config())}"

    # -- generation ---------------------------------------------------------------------------------------------

    def make_sprite(self, rng: np.random.Generator, split: str) -> Sprite:
        """A random object appearance for ``split`` (side within [min_size, max_size])."""
        raise NotImplementedError

    def make_scene(self, split: str, index: int) -> Scene:
        """Sequence ``index`` of ``split``: a pure function of (seed, split, index), whatever the dataset sizes."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(SPLITS.index(split), index)))
        waves = rng.integers(self.min_objects, self.max_objects + 1, len(self.entry_frames))
        births = np.repeat(self.entry_frames, waves)
        sprites = [self.make_sprite(rng, split) for _ in births]
        sizes = np.array([s.mask.shape[::-1] for s in sprites], np.int64)
        from_border = (births > 0) & (self.entry == "border")
        bounces = rng.random(len(births)) >= self.exit_prob
        corners = simulate_motion(rng, sizes, births, from_border, bounces, self.seq_len, self.img_size,
                                  self.speed_range)
        texture = MovingTexture(rng, self.img_size, self.bg_speed) if self.background == "complex" else None
        return Scene(sprites, corners, births, rng.permutation(len(births)), self.img_size, texture)

    def _write_split(self, split: str) -> None:
        count, T, N, S = self.counts[split], self.seq_len, self.max_num_objects, self.img_size
        target = self.cache_dir / split
        meta = {"split": split, "count": count, "config": self.generation_config()}
        with AtomicFolder(target, meta) as tmp:
            video = open_memmap(tmp / "video.npy", "w+", np.uint8, (count, T, 3, S, S))
            boxes = open_memmap(tmp / "boxes.npy", "w+", np.float32, (count, T, N, 4))
            ids = open_memmap(tmp / "ids.npy", "w+", np.int64, (count, T, N))
            labels = open_memmap(tmp / "labels.npy", "w+", np.int64, (count, N))
            hidden = open_memmap(tmp / "hidden.npy", "w+", np.float32, (count, T, N))
            for i in progress(range(count), count, f"{self.name} {split}"):
                scene = self.make_scene(split, i)
                n = len(scene.sprites)
                ids[i], labels[i] = -1, -1
                labels[i, :n] = [s.label for s in scene.sprites]
                for t in range(T):
                    frame, boxes[i, t, :n], visible = scene.render(t)
                    video[i, t] = frame.transpose(2, 0, 1)
                    ids[i, t, :n] = np.where(visible, np.arange(n), -1)
                    hidden[i, t, :n] = scene.hidden(t)
            for array in (video, boxes, ids, labels, hidden):
                array.flush()
            del video, boxes, ids, labels, hidden

    def validate(self) -> None:
        self.check_settings()
        check_writable_root(self.root)

    def prepare_data(self) -> None:
        self.validate()
        for split in SPLITS:
            if not is_complete(self.cache_dir / split):
                self._write_split(split)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.validate()
        if not all(is_complete(self.cache_dir / split) for split in SPLITS):
            self.prepare_data()
        self.datasets = {split: CachedSequences(self.cache_dir / split) for split in SPLITS}


def floor_fraction(n: int, fraction: float) -> int:
    """floor(n * fraction), robust to float error (e.g. 70 * 0.1 -> 7)."""
    return int(math.floor(n * fraction + 1e-9))
