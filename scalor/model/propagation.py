"""Propagation (docs/model.md §3.10, §3.11, §4.2): track every carried object into the next frame.

All B x N slots are processed at once; padded slots are masked afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributions import (bernoulli_log_prob, kl_bernoulli, kl_normal, normal_log_prob, prob_to_logit,
                            relaxed_bernoulli, sample_normal)
from .encoders import Decode, Encode, cg
from .render import BoxCoder, Windows, extract, render_windows
from .state import ObjectState

PRES_LOGIT_FACTOR = 8.8
WHERE_UPDATE_SCALE = 0.2
STOP_THRESHOLD = 0.6


def mlp(inp: int, hid: int, out: int) -> nn.Sequential:
    """Lin -> CELU -> Lin."""
    return nn.Sequential(nn.Linear(inp, hid), nn.CELU(), nn.Linear(hid, out))


@dataclass
class PropagationStep:
    """Propagated objects at one frame; shapes (B, N, ·), kl_* and log_imp (B,).

    z_pres is the relaxed presence after the stop rule and the slot mask; windows hold the rendered
    [alpha*o, alpha] (B,N,4,wh,ww).
    """

    z_what: Tensor
    z_where: Tensor
    z_where_bias: Tensor
    z_depth: Tensor
    z_pres: Tensor
    h: Tensor
    prior_h: Tensor
    prior_c: Tensor
    c_abs: Tensor
    windows: Windows
    kl_what: Tensor
    kl_where: Tensor
    kl_depth: Tensor
    kl_pres: Tensor
    log_imp: Tensor


class PropagationPrior(nn.Module):
    """Per-object LSTM prior p(z_t | z_<t) (docs/model.md §3.11)."""

    def __init__(self, z_what_dim: int = 64, inp: int = 128, hid: int = 64):
        super().__init__()
        self.input = nn.Linear(z_what_dim + 4 + 4 + 1 + 1, inp)
        self.rnn = nn.LSTMCell(inp, hid)
        self.what = nn.Linear(hid, 2 * z_what_dim)
        self.where_bias = nn.Linear(hid, 8)
        self.depth = nn.Linear(hid, 2)
        self.pres = nn.Linear(hid, 1)

    def forward(self, s: ObjectState):
        """-> dict of prior (mean, std) for what/where_bias/depth, pres prob (B,N), new (h, c)."""
        lead = s.z_what.shape[:2]
        e = self.input(torch.cat([s.z_what, s.z_where, s.z_where_bias, s.z_depth, s.z_pres], -1))
        h, c = self.rnn(e.flatten(0, 1), (s.prior_h.flatten(0, 1), s.prior_c.flatten(0, 1)))
        h, c = h.view(*lead, -1), c.view(*lead, -1)
        split = lambda x: (x.chunk(2, -1)[0], F.softplus(x.chunk(2, -1)[1]))  # noqa: E731
        pres = torch.sigmoid(self.pres(h)[..., 0] + 5.0)
        return split(self.what(h)), split(self.where_bias(h)), split(self.depth(h)), pres, h, c


class AttentionEncoder(nn.Module):
    """Bilinear attention pooling of the feature map at the previous location -> a (B, N, 128)."""

    def __init__(self, num_cell_h: int, num_cell_w: int, hid: int = 64, out: int = 128):
        super().__init__()
        self.win = (max(num_cell_h // 2, 1), max(num_cell_w // 2, 1))
        layers: list = []
        cg(layers, nn.Conv2d(64, hid, 1), hid, 8)
        self.conv = nn.Sequential(*layers)
        self.linear = nn.Linear(hid * self.win[0] * self.win[1], out)

    def forward(self, feats: Tensor, centre: Tensor) -> Tensor:
        """feats (B,64,Gh,Gw), centre (B,N,2) detached -> (B,N,128)."""
        b, n = centre.shape[:2]
        window = torch.cat([centre.new_full((b, n, 2), 0.5), centre], -1)
        g = extract(feats, window, self.win).flatten(0, 1)
        return self.linear(self.conv(g).flatten(1)).view(b, n, -1)


class Propagation(nn.Module):
    """Tracker GRU and the where/what/depth/presence transitions of docs/model.md §4.2."""

    def __init__(self, img_size: int, num_cell_h: int, num_cell_w: int, boxes: BoxCoder, glimpse_size: int,
                 win_hw: tuple[int, int], double_softplus_what_std: bool = True, z_what_dim: int = 64,
                 rnn_dim: int = 128):
        super().__init__()
        self.img_hw = (img_size, img_size)
        self.boxes = boxes
        self.glimpse_size = glimpse_size
        self.win_hw = win_hw
        self.double_softplus_what_std = double_softplus_what_std
        att = 128
        self.attention = AttentionEncoder(num_cell_h, num_cell_w, out=att)
        self.rnn_input = nn.Linear(4 + 1 + z_what_dim + 4 + att, rnn_dim)
        self.tracker = nn.GRUCell(rnn_dim, rnn_dim)
        self.where_net = mlp(rnn_dim + z_what_dim + 4 + 4 + att, 128, 8)
        self.what_net = mlp(rnn_dim, 64, 2 * z_what_dim)
        self.gate_net = mlp(rnn_dim + att, 64, 2)
        self.depth_net = mlp(rnn_dim + z_what_dim + att, 128, 2)
        self.pres_net = mlp(rnn_dim + 4 + 4 + z_what_dim, 64, 1)
        self.prior = PropagationPrior(z_what_dim)

    def forward(self, s: ObjectState, feats: Tensor | None, frame: Tensor | None, tau: float,
                encoder: Encode, decoder: Decode, deterministic: bool,
                imagine: bool = False, log_imp: bool = False) -> PropagationStep:
        """State with N slots, feats (B,64,Gh,Gw), frame (B,3,H,W) (None when imagined) -> step."""
        b, n = s.z_what.shape[:2]
        mask = s.mask.to(s.z_what.dtype)
        (pw_mean, pw_std), (pb_mean, pb_std), (pd_mean, pd_std), p_pres, prior_h, prior_c = self.prior(s)
        zeros = mask.new_zeros(b)
        if imagine:
            h = s.h
            bias = sample_normal(pb_mean, pb_std, deterministic)
        else:
            a = self.attention(feats, s.z_where[..., 2:].detach())
            r = self.rnn_input(torch.cat([s.z_where, s.z_pres, s.z_what, s.z_where_bias, a], -1))
            h = self.tracker(r.flatten(0, 1), s.h.flatten(0, 1)).view(b, n, -1)
            b_mean, b_raw = self.where_net(torch.cat([h, s.z_what, s.z_where, s.z_where_bias, a], -1)).chunk(2, -1)
            b_std = F.softplus(b_raw - 2.0)
            bias = sample_normal(b_mean, b_std, deterministic)
        sx, sy = self.boxes.scale(bias[..., 0], bias[..., 1])
        centre = (s.z_where[..., 2:] + WHERE_UPDATE_SCALE * torch.tanh(bias[..., 2:])).clamp(-1.05, 1.05)
        z_where = torch.cat([sx[..., None], sy[..., None], centre], -1)

        if imagine:
            z_what = sample_normal(pw_mean, pw_std, deterministic)
            z_depth = sample_normal(pd_mean, pd_std, deterministic)
            logit = prob_to_logit(p_pres.clamp(1e-6, 1 - 1e-6))
        else:
            e_mean, e_raw = encoder(frame, z_where)
            e_mean, e_std = e_mean.view(b, n, -1), F.softplus(e_raw).view(b, n, -1)
            t_mean, t_raw = self.what_net(h).chunk(2, -1)
            forget, inp = torch.sigmoid(self.gate_net(torch.cat([h, a], -1))).chunk(2, -1)
            w_mean = inp * e_mean + forget * t_mean
            w_std = inp * e_std + forget * F.softplus(t_raw)
            if self.double_softplus_what_std:
                w_std = F.softplus(w_std)
            z_what = sample_normal(w_mean, w_std, deterministic)
            d_mean, d_raw = self.depth_net(torch.cat([h, z_what, a], -1)).chunk(2, -1)
            d_std = F.softplus(d_raw)
            z_depth = sample_normal(d_mean, d_std, deterministic)
            raw = self.pres_net(torch.cat([h, z_where, bias, z_what], -1))[..., 0]
            logit = PRES_LOGIT_FACTOR * torch.tanh(raw + 2.0)
        z_relaxed = relaxed_bernoulli(logit, tau, deterministic)

        # Stop rule: an object that accumulated 0.6 of absence is hard-zeroed for good.
        c_abs = s.c_abs + (1 - z_relaxed[..., None]) * mask[..., None]
        z_pres = z_relaxed * (c_abs[..., 0] < STOP_THRESHOLD) * mask

        g = self.glimpse_size
        win = render_windows(decoder(z_what.flatten(0, 1)).view(b, n, 4, g, g), z_where, self.win_hw, self.img_hw)

        if imagine:
            kls = (zeros, zeros, zeros, zeros)
        else:
            w = z_pres  # already masked
            kls = (
                (w * kl_normal(w_mean, w_std, pw_mean, pw_std).sum(-1)).sum(-1),
                (w * kl_normal(b_mean, b_std, pb_mean, pb_std).sum(-1)).sum(-1),
                (w * kl_normal(d_mean, d_std, pd_mean, pd_std).sum(-1)).sum(-1),
                (mask * kl_bernoulli(logit, p_pres)).sum(-1),
            )
        li = zeros
        if log_imp and not imagine:
            zb = (z_pres > 0.5).to(mask.dtype)
            lr = lambda x, pm, ps, qm, qs: (normal_log_prob(x, pm, ps) - normal_log_prob(x, qm, qs)).sum(-1)  # noqa: E731
            li = (mask * (zb * (lr(z_what, pw_mean, pw_std, w_mean, w_std) + lr(z_depth, pd_mean, pd_std, d_mean, d_std)
                                + lr(bias, pb_mean, pb_std, b_mean, b_std))
                          + bernoulli_log_prob(zb, p_pres) - bernoulli_log_prob(zb, torch.sigmoid(logit)))).sum(-1)
        m3 = mask[..., None]
        off_screen = z_where.new_tensor([0.5, 0.5, 2.0, 2.0])
        return PropagationStep(
            z_what=z_what * m3, z_where=torch.where(m3 > 0, z_where, off_screen), z_where_bias=bias * m3,
            z_depth=z_depth * m3, z_pres=z_pres, h=h * m3, prior_h=prior_h, prior_c=prior_c, c_abs=c_abs,
            windows=win, kl_what=kls[0], kl_where=kls[1], kl_depth=kls[2], kl_pres=kls[3], log_imp=li,
        )
