"""Image encoder (per-frame CNN + ConvLSTM), glimpse encoder and glimpse decoder (docs/model.md §3.1-§3.4).

Layer stacks are derived from (image size, grid, glimpse size). Every block is
conv -> [PixelShuffle] -> CELU -> GroupNorm, in ``nn.Sequential`` order, so the parameter names
line up with the reference's (index for index) at its sizes.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# The glimpse networks as the model stages call them (SCALOR._encode, SCALOR._decode):
# Encode: frame (B,3,H,W), boxes z_where (B,M,4), optional active indices -> (mean, raw std), each (B*M, D);
# Decode: z_what (n, D) -> glimpses (n, 4, S, S) (alpha-premultiplied colour, then alpha; with mask_only=True
# colour 0, for what reads only alpha).
Encode = Callable[[Tensor, Tensor, Optional[Tensor]], tuple[Tensor, Tensor]]
Decode = Callable[..., Tensor]


def groups_for(channels: int) -> int:
    """The reference's GroupNorm group counts: 16 ch -> 4, 32/64 -> 8, >= 128 -> 16."""
    return 4 if channels <= 16 else 8 if channels <= 64 else 16


def cg(layers: list, conv: nn.Module, out_ch: int, groups: int | None = None, shuffle: int = 0) -> None:
    """Append conv -> [PixelShuffle] -> CELU -> GroupNorm to ``layers``."""
    layers.append(conv)
    if shuffle:
        layers.append(nn.PixelShuffle(shuffle))
    layers += [nn.CELU(), nn.GroupNorm(groups or groups_for(out_ch), out_ch)]


def log2_int(x: int, what: str) -> int:
    n = int(round(math.log2(x))) if x > 0 else -1
    if n < 0 or 2**n != x:
        raise ValueError(f"{what} must be a power of two, got {x}")
    return n


class ImageCNN(nn.Module):
    """Per-frame encoder: trunk, lateral block, fusion. (n, 3, H, W) -> (n, 64, Gh, Gw)."""

    def __init__(self, img_size: int, num_cell_h: int, num_cell_w: int):
        super().__init__()
        side = max(num_cell_h, num_cell_w)
        n = log2_int(img_size // side, "img_size / grid") if img_size % side == 0 else -1
        layers: list = []
        ch = 3
        for i, out in enumerate([16, 32, 64][:n]):  # fixed first stages, each with a 3x3 after
            cg(layers, nn.Conv2d(ch, out, 4, 2, 1), out)
            cg(layers, nn.Conv2d(out, out, 3, 1, 1), out)
            ch = out
        extra = max(n - 3, 0)
        if extra >= 1 and img_size >= 128:
            for _ in range(extra - 1):
                cg(layers, nn.Conv2d(ch, 64, 4, 2, 1), 64)
                cg(layers, nn.Conv2d(64, 64, 3, 1, 1), 64)
                ch = 64
            cg(layers, nn.Conv2d(ch, 128, 4, 2, 1), 128)
            ch = 128
        else:
            for _ in range(extra):
                cg(layers, nn.Conv2d(ch, 64, 4, 2, 1), 64)
                ch = 64
        cg(layers, nn.Conv2d(ch, 64, 1), 64, 16)
        self.trunk = nn.Sequential(*layers)
        lat: list = []
        cg(lat, nn.Conv2d(64, 64, 3, 1, 1), 64)
        cg(lat, nn.Conv2d(64, 64, 3, 1, 1), 64)
        self.lateral = nn.Sequential(*lat)
        fus: list = []
        cg(fus, nn.Conv2d(128, 64, 3, 1, 1), 64)
        self.fusion = nn.Sequential(*fus)
        rect = num_cell_h != num_cell_w
        self.pool = nn.AvgPool2d((side // num_cell_h, side // num_cell_w)) if rect else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        t0 = self.trunk(x)
        return self.pool(self.fusion(torch.cat([t0, self.lateral(t0)], 1)))


class ConvLSTMCell(nn.Module):
    """ConvLSTM cell with peepholes (docs/model.md §3.2); the output gate peeks at c_{t-1}."""

    def __init__(self, in_ch: int, hid: int, grid_hw: tuple[int, int]):
        super().__init__()
        self.conv_x = nn.Conv2d(in_ch, 4 * hid, 3, 1, 1)
        self.conv_h = nn.Conv2d(hid, 4 * hid, 3, 1, 1, bias=False)
        self.peep_i = nn.Parameter(torch.zeros(1, hid, *grid_hw))
        self.peep_f = nn.Parameter(torch.zeros(1, hid, *grid_hw))
        self.peep_o = nn.Parameter(torch.zeros(1, hid, *grid_hw))

    def forward(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """(B,Cin,Gh,Gw), (B,hid,Gh,Gw) x2 -> new (h, c)."""
        xi, xf, xo, xg = self.conv_x(x).chunk(4, 1)
        hi, hf, ho, hg = self.conv_h(h).chunk(4, 1)
        i = torch.sigmoid(xi + hi + c * self.peep_i)
        f = torch.sigmoid(xf + hf + c * self.peep_f)
        c_new = f * c + i * torch.tanh(xg + hg)
        o = torch.sigmoid(xo + ho + c * self.peep_o)
        return o * torch.tanh(c_new), c_new


class ImageEncoder(nn.Module):
    """Features of every frame: CNN, then optionally a 2-layer ConvLSTM over time.

    forward: video (B, T, 3, H, W), lstm state or None -> features (B, T, 64, Gh, Gw), new state.
    """

    def __init__(self, img_size: int, num_cell_h: int, num_cell_w: int, conv_lstm: bool = True, hid: int = 64):
        super().__init__()
        self.cnn = ImageCNN(img_size, num_cell_h, num_cell_w)
        self.hid = hid
        grid = (num_cell_h, num_cell_w)
        self.cells = nn.ModuleList([ConvLSTMCell(64, hid, grid), ConvLSTMCell(hid, hid, grid)]) if conv_lstm else None

    def forward(self, video: Tensor, state: list | None = None) -> tuple[Tensor, list | None]:
        b, t = video.shape[:2]
        feats = self.cnn(video.flatten(0, 1))
        feats = feats.view(b, t, *feats.shape[1:])
        if self.cells is None:
            return feats, None
        if state is None:
            z = feats.new_zeros(b, self.hid, *feats.shape[-2:])
            state = [(z, z) for _ in self.cells]
        seq = feats.unbind(1)
        new_state = []
        for cell, (h, c) in zip(self.cells, state):
            out = []
            for x in seq:
                h, c = cell(x, h, c)
                out.append(h)
            seq = out
            new_state.append((h, c))
        return torch.stack(seq, 1), new_state


class GlimpseEncoder(nn.Module):
    """ZWhatEnc: glimpse (n, 3, S, S) -> (mean (n, D), raw std (n, D)), D = z_what_dim; softplus is the caller's."""

    def __init__(self, glimpse_size: int, z_what_dim: int = 64, enc_dim: int = 128):
        super().__init__()
        n = log2_int(glimpse_size // 4, "glimpse_size / 4")
        layers: list = []
        ch = 3
        for out in [16, 32, 64, 128, 128, 128][:n]:
            cg(layers, nn.Conv2d(ch, out, 4, 2, 1), out)
            ch = out
        if ch < enc_dim:
            cg(layers, nn.Conv2d(ch, ch, 3, 1, 1), ch)
        cg(layers, nn.Conv2d(ch, enc_dim, 4, 1, 0), enc_dim)
        self.cnn = nn.Sequential(*layers)
        self.head = nn.Linear(enc_dim, 2 * z_what_dim)

    def forward(self, glimpse: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw_std = self.head(self.cnn(glimpse).flatten(1)).chunk(2, -1)
        return mean, raw_std


def _head(img_size: int, out: int) -> nn.Sequential:
    """Decoder heads: two convs at H >= 128, one below (docs/model.md §3.4)."""
    if img_size >= 128:
        layers: list = []
        cg(layers, nn.Conv2d(16, 8, 3, 1, 1), 8, 4)
        layers.append(nn.Conv2d(8, out, 3, 1, 1))
        return nn.Sequential(*layers)
    return nn.Sequential(nn.Conv2d(16, out, 3, 1, 1))


class GlimpseDecoder(nn.Module):
    """GlimpseDec: z_what (n, D) -> appearance (n, 3, S, S), alpha (n, 1, S, S), both sigmoid."""

    def __init__(self, glimpse_size: int, img_size: int, z_what_dim: int = 64):
        super().__init__()
        n = log2_int(glimpse_size, "glimpse_size")
        big = glimpse_size >= 64
        factors = ([4, 4] + [2] * (n - 4)) if big else ([4] + [2] * (n - 2))
        chans = [64] * (len(factors) - 2) + [32, 16]
        layers: list = []
        cg(layers, nn.Conv2d(z_what_dim, 128, 1), 128, 16)
        ch = 128
        for i, (r, out) in enumerate(zip(factors, chans)):
            cg(layers, nn.Conv2d(ch, out * r * r, 1), out, shuffle=r)
            ch = out
            if big and i < len(factors) - 1:
                cg(layers, nn.Conv2d(ch, ch, 3, 1, 1), ch)
        if not big:
            cg(layers, nn.Conv2d(ch, ch, 3, 1, 1), ch)
        self.trunk = nn.Sequential(*layers)
        self.appearance = _head(img_size, 3)
        self.alpha = _head(img_size, 1)

    def forward(self, z_what: Tensor) -> tuple[Tensor, Tensor]:
        x = self.trunk(z_what[:, :, None, None])
        if len(self.appearance) > 1:  # two-conv heads (H >= 128): stacking them measured no faster
            return torch.sigmoid(self.appearance(x)), torch.sigmoid(self.alpha(x))
        y = torch.sigmoid(self._stacked_heads(x))
        return y[:, :3], y[:, 3:]

    def _stacked_heads(self, x: Tensor) -> Tensor:
        """The one-conv heads as one convolution: (n, 16, S, S) -> logits (n, 4, S, S), colour then alpha.

        ``appearance(x)`` and ``alpha(x)`` concatenated, with their weights stacked so that ``x`` is read once
        (8-13% less decoder time forward and backward, docs/benchmarks.md).
        """
        a, b = self.appearance[0], self.alpha[0]  # torch.cat keeps the weights' layout (NHWC with channels_last)
        return F.conv2d(x, torch.cat([a.weight, b.weight]), torch.cat([a.bias, b.bias]), padding=a.padding)

    def glimpse(self, z_what: Tensor, mask_only: bool = False) -> Tensor:
        """(n, D) -> (n, 4, S, S): alpha-premultiplied appearance o * a, then alpha a (what is rendered).
        mask_only: colour 0 and the appearance head not run, for what reads only alpha (discovery's accept-reject
        test) or draws with presence 0."""
        if not mask_only:
            o, a = self(z_what)
            return torch.cat([o * a, a], 1)
        a = torch.sigmoid(self.alpha(self.trunk(z_what[:, :, None, None])))
        return F.pad(a, (0, 0, 0, 0, 3, 0))  # three zero colour channels before alpha
