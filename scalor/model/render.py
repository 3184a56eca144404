"""Spatial transformer (docs/model.md §2.1) and glimpse-local compositing.

Boxes are ``z_where = (sx, sy, tx, ty)`` in normalised [-1, 1] coordinates (x horizontal). Sampling
is bilinear with zero padding and ``align_corners=False``, as in the reference.

Objects are rendered in a small *window* around their box rather than on the full canvas, then
scatter-added into the canvas. This is exact as long as the window covers the box support, which
:func:`window_size` guarantees for every box the parametrisation can produce. ``render_full`` is
the reference's full-canvas path, kept as the test oracle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

_INV_EPS = 1e-9


def _pixel_centres(n: int, device, dtype) -> Tensor:
    """(n,) normalised centres of n pixels, align_corners=False."""
    return (2 * torch.arange(n, device=device, dtype=dtype) + 1) / n - 1


def extract(images: Tensor, boxes: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Glimpses of each box without replicating the image. (B,C,H,W), (B,N,4) -> (B,N,C,h,w)."""
    b, c = images.shape[:2]
    n = boxes.shape[1]
    h, w = out_hw
    u = _pixel_centres(w, images.device, images.dtype)
    v = _pixel_centres(h, images.device, images.dtype)
    sx, sy, tx, ty = boxes.unbind(-1)
    gx = sx[..., None] * u + tx[..., None]  # (B, N, w)
    gy = sy[..., None] * v + ty[..., None]  # (B, N, h)
    grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), -1)
    out = F.grid_sample(images, grid.reshape(b, n * h, w, 2), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.view(b, c, n, h, w).transpose(1, 2)


def render_full(glimpses: Tensor, boxes: Tensor, out_hw: tuple[int, int]) -> Tensor:
    """Reference render onto the full canvas (test oracle). (B,N,C,S,S), (B,N,4) -> (B,N,C,H,W)."""
    b, n, c, s, _ = glimpses.shape
    sx, sy, tx, ty = boxes.reshape(b * n, 4).unbind(-1)
    zero = torch.zeros_like(sx)
    theta = torch.stack([
        torch.stack([1 / (sx + _INV_EPS), zero, -tx / (sx + _INV_EPS)], -1),
        torch.stack([zero, 1 / (sy + _INV_EPS), -ty / (sy + _INV_EPS)], -1),
    ], 1)
    grid = F.affine_grid(theta, [b * n, c, *out_hw], align_corners=False)
    out = F.grid_sample(glimpses.reshape(b * n, c, s, s), grid, mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return out.view(b, n, c, *out_hw)


def window_size(max_sx: float, max_sy: float, glimpse_size: int, img_hw: tuple[int, int]) -> tuple[int, int]:
    """(wh, ww) pixels that cover the support of any box with sx <= max_sx, sy <= max_sy.

    A bilinear render of an S-pixel glimpse is non-zero for |u| < 1 + 1/S, i.e. over
    2 * s * (1 + 1/S) normalised units; 3 extra pixels cover the rounding of the window origin.
    """
    grow = 1 + 1 / glimpse_size
    h, w = img_hw
    wh = min(math.ceil(max_sy * grow * h) + 3, h)
    ww = min(math.ceil(max_sx * grow * w) + 3, w)
    return wh, ww


@dataclass
class Windows:
    """Rendered object windows. data (B, M, C, wh, ww); origin (B, M, 2) int64 (row, col) of the
    window's top-left pixel; valid (B, M, wh, ww) bool, the window pixels inside the image."""

    data: Tensor
    origin: Tensor
    valid: Tensor


def window_origin(boxes: Tensor, win_hw: tuple[int, int], glimpse_size: int, img_hw: tuple[int, int]) -> Tensor:
    """(B, M, 4) boxes -> (B, M, 2) int64 (row, col) of the window's top-left pixel."""
    h, w = img_hw
    grow = 1 + 1 / glimpse_size
    sx, sy, tx, ty = boxes.detach().unbind(-1)
    col = torch.floor(((tx - sx * grow + 1) * w - 1) / 2)
    row = torch.floor(((ty - sy * grow + 1) * h - 1) / 2)
    # Windows of boxes far off-screen (padding) are parked at the corner; their content is zero
    # or masked by the caller.
    col = col.clamp(-win_hw[1], w).long()
    row = row.clamp(-win_hw[0], h).long()
    return torch.stack([row, col], -1)


def render_windows(glimpses: Tensor, boxes: Tensor, win_hw: tuple[int, int], img_hw: tuple[int, int]) -> Windows:
    """Render glimpses into windows around their boxes. (B,M,C,S,S), (B,M,4) -> Windows (B,M,C,wh,ww).

    Window pixel (a, b) holds exactly what ``render_full`` puts at canvas pixel origin + (a, b).
    """
    bsz, m, c, s, _ = glimpses.shape
    h, w = img_hw
    wh, ww = win_hw
    origin = window_origin(boxes, win_hw, s, img_hw)
    rows = origin[..., 0:1] + torch.arange(wh, device=boxes.device)  # (B, M, wh)
    cols = origin[..., 1:2] + torch.arange(ww, device=boxes.device)  # (B, M, ww)
    y = (2 * rows.to(boxes.dtype) + 1) / h - 1
    x = (2 * cols.to(boxes.dtype) + 1) / w - 1
    sx, sy, tx, ty = boxes.unbind(-1)
    gx = x / (sx[..., None] + _INV_EPS) - tx[..., None] / (sx[..., None] + _INV_EPS)
    gy = y / (sy[..., None] + _INV_EPS) - ty[..., None] / (sy[..., None] + _INV_EPS)
    grid = torch.stack(torch.broadcast_tensors(gx[:, :, None, :], gy[:, :, :, None]), -1)
    out = F.grid_sample(glimpses.reshape(bsz * m, c, s, s), grid.reshape(bsz * m, wh, ww, 2),
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    valid = ((rows >= 0) & (rows < h))[..., :, None] & ((cols >= 0) & (cols < w))[..., None, :]
    return Windows(out.view(bsz, m, c, wh, ww), origin, valid)


def _flat_index(win: Windows, img_hw: tuple[int, int]) -> Tensor:
    """(B, M*wh*ww) flat canvas index of every window pixel; pixels outside go to index H*W."""
    h, w = img_hw
    wh, ww = win.valid.shape[-2:]
    rows = win.origin[..., 0:1] + torch.arange(wh, device=win.origin.device)
    cols = win.origin[..., 1:2] + torch.arange(ww, device=win.origin.device)
    idx = rows[..., :, None] * w + cols[..., None, :]
    idx = torch.where(win.valid, idx, torch.full_like(idx, h * w))
    return idx.flatten(1)


def scatter_windows(win: Windows, values: Tensor, img_hw: tuple[int, int]) -> Tensor:
    """Sum window values into canvases. values (B, M, C, wh, ww) on win's windows -> (B, C, H, W)."""
    bsz, m, c, wh, ww = values.shape
    h, w = img_hw
    idx = _flat_index(win, img_hw)[:, None, :].expand(bsz, c, m * wh * ww)
    src = values.permute(0, 2, 1, 3, 4).reshape(bsz, c, m * wh * ww)
    canvas = values.new_zeros(bsz, c, h * w + 1).scatter_add(2, idx, src)
    return canvas[..., : h * w].view(bsz, c, h, w)


def window_masks(win: Windows, mask: Tensor, img_hw: tuple[int, int]) -> Tensor:
    """Each window's mask on its own full canvas. mask (B, M, wh, ww) bool -> (B, M, H*W) bool."""
    bsz, m, wh, ww = mask.shape
    h, w = img_hw
    idx = _flat_index(win, img_hw).view(bsz, m, wh * ww)
    full = mask.new_zeros(bsz, m, h * w + 1).scatter_(2, idx, mask.flatten(2) & win.valid.flatten(2))
    return full[..., : h * w]


def mask_overlaps(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Full-canvas masks a (B, K, P), b (B, M, P) as floats -> shared pixels (B, K, M) and their IoU (B, K, M)."""
    inter = a @ b.transpose(1, 2)
    union = a.sum(-1)[:, :, None] + b.sum(-1)[:, None, :] - inter
    return inter, inter / (union + 1e-15)


def gather_windows(win: Windows, canvas: Tensor, img_hw: tuple[int, int]) -> Tensor:
    """Read a canvas at each window's pixels (0 outside the image). (B,C,H,W) -> (B,M,C,wh,ww)."""
    bsz, c = canvas.shape[:2]
    m, wh, ww = win.valid.shape[1:]
    idx = _flat_index(win, img_hw)[:, None, :].expand(bsz, c, m * wh * ww)
    flat = F.pad(canvas.reshape(bsz, c, -1), (0, 1))
    out = flat.gather(2, idx).view(bsz, c, m, wh, ww)
    return out.permute(0, 2, 1, 3, 4)


def scatter_windows_amax(win: Windows, values: Tensor, img_hw: tuple[int, int]) -> Tensor:
    """Per-pixel maximum over windows. values (B, M, wh, ww) -> (B, H, W); -inf where nothing."""
    bsz = values.shape[0]
    h, w = img_hw
    idx = _flat_index(win, img_hw)
    out = values.new_full((bsz, h * w + 1), float("-inf"))
    out = out.scatter_reduce(1, idx, values.flatten(1), reduce="amax", include_self=True)
    return out[:, : h * w].view(bsz, h, w)


def boxes_to_xyxy(z_where: Tensor) -> Tensor:
    """(…, 4) (sx, sy, tx, ty) in [-1, 1] -> (…, 4) (x1, y1, x2, y2) in [0, 1]."""
    sx, sy, tx, ty = z_where.unbind(-1)
    return torch.stack([(tx - sx + 1) / 2, (ty - sy + 1) / 2, (tx + sx + 1) / 2, (ty + sy + 1) / 2], -1)


@dataclass(frozen=True)
class BoxCoder:
    """Box parametrisation of docs/model.md §2.2: size and ratio anchors with tanh ranges."""

    size_anc: float = 0.1
    var_s: float = 0.03
    ratio_anc: float = 2.5
    var_anc: float = 0.5

    def scale(self, a_size: Tensor, a_ratio: Tensor) -> tuple[Tensor, Tensor]:
        """Raw size/ratio logits (…) -> (sx, sy) (…): s = s0 + var_s tanh, r = r0 + var_r tanh."""
        s = self.size_anc + self.var_s * torch.tanh(a_size)
        r = self.ratio_anc + self.var_anc * torch.tanh(a_ratio)
        return s / r.sqrt(), s * r.sqrt()

    @property
    def max_scale(self) -> tuple[float, float]:
        """Largest (sx, sy) any box can have."""
        s = self.size_anc + self.var_s
        return s / math.sqrt(self.ratio_anc - self.var_anc), s * math.sqrt(self.ratio_anc + self.var_anc)


def mask_boxes(win: Windows, img_hw: tuple[int, int], threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Tight boxes of each object's rendered alpha: (B, M, 4) normalised (x1, y1, x2, y2) of the image pixels
    where the window's alpha channel (its last) exceeds ``threshold``, and (B, M) bool, whether there is any.

    Like ground-truth boxes, they are amodal (what the object draws, occluded or not) and clipped to the
    image. Objects without such a pixel get a zero box.
    """
    h, w = img_hw
    on = (win.data[:, :, -1] > threshold) & win.valid  # (B, M, wh, ww)
    rows, cols = on.any(-1), on.any(-2)  # (B, M, wh), (B, M, ww)
    any_on = rows.any(-1)
    wh, ww = on.shape[-2:]
    first_r = rows.int().argmax(-1)
    last_r = wh - 1 - rows.flip(-1).int().argmax(-1)
    first_c = cols.int().argmax(-1)
    last_c = ww - 1 - cols.flip(-1).int().argmax(-1)
    r0, c0 = win.origin[..., 0], win.origin[..., 1]
    boxes = torch.stack([(c0 + first_c) / w, (r0 + first_r) / h, (c0 + last_c + 1) / w, (r0 + last_r + 1) / h], -1)
    return torch.where(any_on[..., None], boxes.to(win.data.dtype), torch.zeros_like(boxes, dtype=win.data.dtype)), any_on
