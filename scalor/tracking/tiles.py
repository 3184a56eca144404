"""Whole-frame tracking with a model trained on windows: overlapping tiles, and their tracks joined into one set.

A frame larger than the model's input is scaled (``scale``: footage pixels to model pixels, the scale it was
trained at) and covered by square windows of the model's size that overlap by at least ``overlap`` model pixels
(:func:`tile_positions`). The tiles of a frame are one batch, so each tile keeps its own carried state and track
IDs from window to window. :class:`TileJoiner` turns the tiles' tracks into whole-frame tracks, online, frame by
frame: boxes of different tiles that hold the same object are one object, reported with the box of the tile where
it lies furthest from the tile's inner edges (there it is whole), and a global ID follows every (tile, track) pair
it has been joined with, so an object that walks from one tile into the next keeps its ID.

An overlap at least as large as the largest object means every object lies whole inside some tile.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["TileJoiner", "tile_positions", "tile_rects"]


def tile_positions(length: int, window: int, overlap: int) -> np.ndarray:
    """Starts (n,) int of windows of ``window`` px covering ``length`` px, neighbours overlapping by at least
    ``overlap`` px, the first at 0 and the last at ``length - window``, evenly spread."""
    length, window, overlap = int(length), int(window), int(overlap)
    if length < window:
        raise ValueError(f"a side of {length} px is shorter than the {window} px window")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap={overlap} must be in [0, {window})")
    if length == window:
        return np.zeros(1, np.int64)
    n = math.ceil((length - overlap) / (window - overlap))
    n = max(n, 2)
    return np.round(np.linspace(0, length - window, n)).astype(np.int64)


def tile_rects(height: int, width: int, window: int, overlap: int) -> np.ndarray:
    """(N, 4) int xyxy of the tiles covering a height x width frame, row by row (top to bottom, left to right)."""
    ys, xs = tile_positions(height, window, overlap), tile_positions(width, window, overlap)
    top, left = np.meshgrid(ys, xs, indexing="ij")
    left, top = left.ravel(), top.ravel()
    return np.stack([left, top, left + window, top + window], axis=1)


def _iou_and_cover(box: np.ndarray, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU of box (4,) with others (M, 4) xyxy, and the fraction of box that each of them covers."""
    iw = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = iw * ih
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9), inter / area


class TileJoiner:
    """Online: the tracks of overlapping tiles -> whole-frame tracks with global IDs (module docstring).

    rects: (N, 4) xyxy of the tiles in the frame's pixels; height, width: the frame's size. Two boxes of different
    tiles hold the same object when their IoU is at least ``match`` or the box nearer a tile edge (the one that may
    be cut off there) lies at least ``cover`` inside the other.
    """

    def __init__(self, rects: np.ndarray, height: int, width: int, match: float = 0.5, cover: float = 0.7) -> None:
        self.rects = np.asarray(rects, np.float64)
        # the distance from a box to a tile side counts only where the tile meets another (not the frame's border)
        inner = np.stack([self.rects[:, 0] > 0, self.rects[:, 1] > 0, self.rects[:, 2] < width,
                          self.rects[:, 3] < height], axis=1)
        self.inner = inner
        self.match, self.cover = float(match), float(cover)
        self.global_of: dict[tuple[int, int], int] = {}  # (tile, tile's track ID) -> global ID
        self.next_id = 0

    def margins(self, tiles: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(M,) distance in px of each box (M, 4) from the nearest inner side of its tile (inf: none)."""
        r = self.rects[tiles]
        gaps = np.stack([boxes[:, 0] - r[:, 0], boxes[:, 1] - r[:, 1], r[:, 2] - boxes[:, 2],
                         r[:, 3] - boxes[:, 3]], axis=1)
        return np.where(self.inner[tiles], gaps, np.inf).min(axis=1)

    def __call__(self, boxes: np.ndarray, ids: np.ndarray, scores: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One frame. boxes (N, K, 4) xyxy frame pixels, ids (N, K) each tile's track IDs (-1: no object),
        scores (N, K) -> boxes (M, 4), global ids (M,) int64, scores (M,) of the frame's objects."""
        tiles, slots = np.nonzero(np.asarray(ids) >= 0)
        if len(tiles) == 0:
            return np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0)
        b = np.asarray(boxes, np.float64)[tiles, slots]
        local = np.asarray(ids)[tiles, slots].astype(np.int64)
        s = np.asarray(scores, np.float64)[tiles, slots]
        order = np.lexsort((-s, -self.margins(tiles, b)))  # most interior first, then most present
        reps: list[int] = []  # each object's reporting detection
        members: list[list[int]] = []
        for i in order:
            best, best_overlap = -1, 0.0
            if reps:
                iou, cover = _iou_and_cover(b[i], b[reps])
                same = (iou >= self.match) | (cover >= self.cover)
                for c in np.flatnonzero(same):
                    if tiles[i] in {tiles[j] for j in members[c]}:
                        continue  # one tile's two tracks are two objects
                    overlap = max(iou[c], cover[c])
                    if overlap > best_overlap:
                        best, best_overlap = int(c), overlap
            if best < 0:
                reps.append(int(i))
                members.append([int(i)])
            else:
                members[best].append(int(i))
        out_ids = np.empty(len(reps), np.int64)
        taken: set[int] = set()
        for c, group in enumerate(members):
            known = [self.global_of.get((int(tiles[j]), int(local[j]))) for j in group]
            gid = next((g for g in known if g is not None and g not in taken), None)
            if gid is None:
                gid, self.next_id = self.next_id, self.next_id + 1
            taken.add(gid)
            out_ids[c] = gid
            for j in group:
                self.global_of[(int(tiles[j]), int(local[j]))] = gid
        return b[reps], out_ids, s[reps]
