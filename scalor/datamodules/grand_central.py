"""Grand Central Station frames, read as the reference does (docs/model.md §6; ``data=grand_central``).

Frames are the images directly inside ``data.root``, named by their integer frame number and sorted numerically.
The last ``test_fraction`` (10%) are the test split. Each item is a square crop of side ``crop_size`` at one of 8
positions, ``seq_len`` frames ``frame_skip`` apart, resized to ``img_size``. With r = crop_size the crop corners
(left, top) are (r/2, 0), (3r/2, 0), (0, r), (r, r), (2r, r), (0, r/2), (r, r/2), (2r, r/2), which for the public
720x480 frames and crop_size=240 are the reference's (it uses r = frame height / 2). Frames must be at least
3r wide and 2r tall. There is no ground truth: batches hold only ``video``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from scalor.datamodules.base import (BaseDataModule, crop, floor_fraction, image_is_complete, list_images,
                                     read_image, require, resize_square, to_video_tensor)
from scalor.errors import DataError


def crop_corners(r: int) -> list[tuple[int, int]]:
    """The reference's 8 (left, top) crop corners for crop side r."""
    return [(r // 2, 0), (r // 2 + r, 0), (0, r), (r, r), (2 * r, r), (0, r // 2), (r, r // 2), (2 * r, r // 2)]


def clip_starts(n_frames: int, seq_len: int, frame_skip: int, test: bool) -> np.ndarray:
    """First-frame indices of the clips of one crop position, as the reference indexes them.

    With span = seq_len * frame_skip (80 in the reference): train starts at every frame of the first
    n - span + 1; test cuts the frames into blocks of span frames, each holding frame_skip interleaved,
    non-overlapping clips, and keeps (n - span + 1) // seq_len of them.
    """
    span = seq_len * frame_skip
    if not test:
        return np.arange(max(n_frames - span + 1, 0))
    j = np.arange(max((n_frames - span + 1) // seq_len, 0))
    return (j // frame_skip) * span + j % frame_skip


class GrandCentralClips(Dataset):
    """Clips (crop position, start) over a list of frame files; frames are read and resized on access."""

    def __init__(self, files: list[Path], starts: np.ndarray, corners: list[tuple[int, int]], crop_size: int,
                 seq_len: int, frame_skip: int, img_size: int) -> None:
        self.files, self.starts, self.corners = files, starts, corners
        self.crop_size, self.img_size = crop_size, img_size
        self.offsets = np.arange(seq_len) * frame_skip

    def __len__(self) -> int:
        return len(self.corners) * len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        left, top = self.corners[i // len(self.starts)]
        start = self.starts[i % len(self.starts)]
        frames = [resize_square(crop(read_image(self.files[start + k]), left, top, self.crop_size,
                                     f"frame {self.files[start + k]}", "data.crop_size"), self.img_size)
                  for k in self.offsets]
        return {"video": to_video_tensor(np.stack(frames).transpose(0, 3, 1, 2))}


class GrandCentralDataModule(BaseDataModule):
    """Grand Central Station: train = first 90% of the frames, test = last 10%, val = ``num_val`` evenly spaced
    test clips (the reference has no validation split). ``check_frames`` verifies, in ``setup``, that no
    PNG/JPEG frame is truncated (reads the last bytes of each file; cheap)."""

    has_ground_truth = False

    def __init__(self, root: str, img_size: int = 128, seq_len: int = 10, batch_size: int = 20,
                 num_workers: int = 0, pin_memory: bool | None = None, frame_skip: int = 8, crop_size: int = 240,
                 test_fraction: float = 0.1, num_val: int = 64, check_frames: bool = True) -> None:
        super().__init__(img_size, seq_len, batch_size, num_workers, pin_memory)
        self.root = Path(str(root)).expanduser()
        self.frame_skip, self.crop_size = int(frame_skip), int(crop_size)
        self.test_fraction, self.num_val, self.check_frames = float(test_fraction), int(num_val), bool(check_frames)

    def check_settings(self) -> None:
        super().check_settings()
        require(self.frame_skip >= 1, f"data.frame_skip={self.frame_skip} must be at least 1.")
        require(self.crop_size >= 2, f"data.crop_size={self.crop_size} must be at least 2.")
        require(0 < self.test_fraction < 1, f"data.test_fraction={self.test_fraction} must lie in (0, 1).")
        require(self.num_val >= 1, f"data.num_val={self.num_val} must be at least 1.")

    def _frames(self) -> tuple[list[Path], int]:
        files = list_images(self.root, "data.root", numeric=True)
        return files, floor_fraction(len(files), self.test_fraction)

    def validate(self) -> None:
        self.check_settings()
        files, n_test = self._frames()
        span = self.seq_len * self.frame_skip
        for split, n, need in (("train", len(files) - n_test, span), ("test", n_test, span + self.seq_len - 1)):
            if n < need:
                raise DataError(
                    f"data.root={self.root} has {len(files)} frames, so the {split} split has {n}, fewer than the "
                    f"{need} that one sequence of data.seq_len={self.seq_len} frames data.frame_skip="
                    f"{self.frame_skip} apart needs there; add frames or lower data.seq_len/data.frame_skip.")
        r = self.crop_size
        for path in (files[0], files[-1]):
            h, w = read_image(path).shape[:2]
            if w < 3 * r or h < 2 * r:
                raise DataError(f"frame {path} is {w}x{h} px, smaller than the {3 * r}x{2 * r} that the 8 crops of "
                                f"data.crop_size={r} need; lower data.crop_size (at most {min(w // 3, h // 2)}).")

    def prepare_data(self) -> None:
        self.validate()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.validate()
        files, n_test = self._frames()
        if self.check_frames:
            bad = next((p for p in files if not image_is_complete(p)), None)
            if bad is not None:
                raise DataError(f"cannot read image {bad}: the file is truncated; re-extract that frame or delete it.")
        train, test = files[:-n_test], files[-n_test:]
        args = (crop_corners(self.crop_size), self.crop_size, self.seq_len, self.frame_skip, self.img_size)
        test_set = GrandCentralClips(test, clip_starts(len(test), self.seq_len, self.frame_skip, True), *args)
        val_items = np.unique(np.linspace(0, len(test_set) - 1, min(self.num_val, len(test_set))).round().astype(int))
        self.datasets = {
            "train": GrandCentralClips(train, clip_starts(len(train), self.seq_len, self.frame_skip, False), *args),
            "val": torch.utils.data.Subset(test_set, val_items.tolist()),
            "test": test_set,
        }
