"""Views of a square video under the symmetries of the square (offline tracking, ``PickTracker.views``).

Discovery proposes one object per grid cell, and two objects that touch are sometimes taken as one. Which pairs
are merged depends on where they fall in their cells, so a mirrored or transposed copy of the same frames is
explained differently. View ``k`` (0-7) of a video mirrors its columns (bit 0: horizontal flip), then its rows
(bit 1: vertical flip), then swaps rows and columns (bit 2: transpose); view 0 is the video itself, views 0-1 the
horizontal pair, 0-3 the four flips and 0-7 all eight symmetries of the square. :func:`unview_boxes` maps boxes
found in a view back to the video's frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

VIEW_COUNTS = (1, 2, 4, 8)


def view(video: Tensor, k: int) -> Tensor:
    """View k of video (..., H, W) with H == W -> (..., H, W)."""
    if k & 1:
        video = video.flip(-1)
    if k & 2:
        video = video.flip(-2)
    if k & 4:
        video = video.transpose(-1, -2)
    return video


def unview_boxes(boxes: Tensor, k: int) -> Tensor:
    """Boxes (..., 4), normalised (x1, y1, x2, y2), found in view k -> the same boxes in the video's frame."""
    if k & 4:
        boxes = boxes[..., [1, 0, 3, 2]]
    x1, y1, x2, y2 = boxes.unbind(-1)
    if k & 1:
        x1, x2 = 1 - x2, 1 - x1
    if k & 2:
        y1, y2 = 1 - y2, 1 - y1
    return torch.stack((x1, y1, x2, y2), -1)
