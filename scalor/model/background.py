"""Background module (docs/model.md §3.5-§3.8, §4.6): encoder, decoders and the temporal prior."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributions import kl_normal, normal_log_prob, sample_normal
from .encoders import cg, groups_for, log2_int


class BackgroundEncoder(nn.Module):
    """BgEncoder: cat(frame, 1 - A) (B, 4, H, W) -> mean (B, D), raw std (B, D)."""

    def __init__(self, img_size: int, bg_dim: int = 10):
        super().__init__()
        n = log2_int(img_size // 4, "img_size / 4")
        layers: list = []
        ch = 4
        for out in ([16, 32, 64] + [64] * n)[:n]:
            cg(layers, nn.Conv2d(ch, out, 4, 2, 1), out)
            ch = out
        layers.append(nn.Conv2d(ch, 2 * bg_dim, 4, 1, 0))
        self.enc = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw_std = self.enc(x).flatten(1).chunk(2, -1)
        return mean, raw_std


class UpsampleDecoder(nn.Module):
    """BgDecoder: z_bg (B, D) -> background (B, 3, H, W) by 1x1 conv + PixelShuffle stages."""

    def __init__(self, img_size: int, bg_dim: int = 10):
        super().__init__()
        rest = img_size // 4  # the last stage always upsamples by 4
        factors = []
        while rest >= 4:
            factors.append(4)
            rest //= 4
        if rest == 2:
            factors.append(2)
        factors.append(4)
        ladder = [16, 64] + [128 * 2**i for i in range(len(factors))]
        chans = ladder[: len(factors)][::-1]
        layers: list = []
        cg(layers, nn.Conv2d(bg_dim, 256, 1), 256, 16)
        ch = 256
        for r, out in zip(factors, chans):
            cg(layers, nn.Conv2d(ch, out * r * r, 1), out, shuffle=r)
            cg(layers, nn.Conv2d(out, out, 3, 1, 1), out)
            ch = out
        self.dec = nn.Sequential(*layers)
        head: list = []
        cg(head, nn.Conv2d(16, 16, 3, 1, 1), 16)
        head.append(nn.Conv2d(16, 3, 3, 1, 1))
        self.head = nn.Sequential(*head)

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.head(self.dec(z[:, :, None, None])))


class BroadcastDecoder(nn.Module):
    """Spatial-broadcast decoder (SBD): z_bg tiled with 2 coordinate channels, full-res convs."""

    def __init__(self, img_size: int, bg_dim: int = 10, hid: int = 64):
        super().__init__()
        blocks = max(log2_int(img_size, "img_size") - 4, 1)
        layers: list = []
        ch = bg_dim + 2
        for _ in range(blocks):
            cg(layers, nn.Conv2d(ch, hid, 5, 1, 2), hid, groups_for(hid))
            ch = hid
        layers.append(nn.Conv2d(hid, 3, 3, 1, 1))
        self.dec = nn.Sequential(*layers)
        lin = torch.linspace(-1, 1, img_size)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        self.register_buffer("coords", torch.stack([yy, xx])[None], persistent=False)

    def forward(self, z: Tensor) -> Tensor:
        b = z.shape[0]
        h, w = self.coords.shape[-2:]
        x = torch.cat([self.coords.expand(b, -1, -1, -1), z[:, :, None, None].expand(-1, -1, h, w)], 1)
        return torch.sigmoid(self.dec(x))


@dataclass
class BackgroundStep:
    """Background of one frame: bg (B,3,H,W); z_bg (B,D); h (B,Hd) prior state; kl, log_imp (B,). Of T frames
    (:meth:`Background.observe`, :meth:`Background.sequence`): a time axis after the batch axis, h the last state."""

    bg: Tensor
    z_bg: Tensor
    h: Tensor
    kl: Tensor
    log_imp: Tensor

    def frame(self, t: int) -> "BackgroundStep":
        """Frame t of a T-frame step (h stays the last state)."""
        return BackgroundStep(self.bg[:, t], self.z_bg[:, t], self.h, self.kl[:, t], self.log_imp[:, t])

    @staticmethod
    def join(steps: list["BackgroundStep"]) -> "BackgroundStep":
        """T-frame steps one after another -> one step over all their frames."""
        cat = {key: torch.cat([getattr(s, key) for s in steps], 1) for key in ("bg", "z_bg", "kl", "log_imp")}
        return BackgroundStep(h=steps[-1].h, **cat)


class Background(nn.Module):
    """Background encoder, decoder and the GRU prior p(z_bg,t | z_bg,<t) (docs/model.md §3.8, §4.6)."""

    def __init__(self, img_size: int, decoder: str = "upsample", bg_dim: int = 10, prior_hid: int = 32):
        super().__init__()
        self.bg_dim = bg_dim
        self.prior_hid = prior_hid
        self.encoder = BackgroundEncoder(img_size, bg_dim)
        self.decoder = UpsampleDecoder(img_size, bg_dim) if decoder == "upsample" else BroadcastDecoder(img_size, bg_dim)
        self.prior_rnn = nn.GRUCell(bg_dim, prior_hid)
        self.prior_net = nn.Linear(prior_hid, 2 * bg_dim)

    def prior(self, z_prev: Tensor | None, h_prev: Tensor | None, batch: int, ref: Tensor):
        """p(z_bg): N(0, I) at t = 0, else a residual GRU transition. -> (mean, std, h)."""
        if z_prev is None:
            zeros = ref.new_zeros(batch, self.bg_dim)
            return zeros, torch.ones_like(zeros), ref.new_zeros(batch, self.prior_hid)
        h = self.prior_rnn(z_prev, h_prev)
        d_mean, raw_std = self.prior_net(h).chunk(2, -1)
        return d_mean + z_prev, F.softplus(raw_std), h

    def forward(self, frame: Tensor | None, alpha: Tensor, z_prev: Tensor | None, h_prev: Tensor | None,
                deterministic: bool, imagine: bool = False, log_imp: bool = False) -> BackgroundStep:
        """frame (B,3,H,W) or None when imagined, alpha A (B,1,H,W) -> BackgroundStep of that frame."""
        if not imagine:
            return self.observe(frame[:, None], alpha[:, None], z_prev, h_prev, deterministic, log_imp).frame(0)
        b = alpha.shape[0]
        p_mean, p_std, h = self.prior(z_prev, h_prev, b, alpha)
        z = sample_normal(p_mean, p_std, deterministic)
        zero = alpha.new_zeros(b)
        return BackgroundStep(self.decoder(z), z, h, zero, zero)

    def observe(self, frames: Tensor, alpha: Tensor, z_prev: Tensor | None, h_prev: Tensor | None,
                deterministic: bool, log_imp: bool = False) -> BackgroundStep:
        """The background of T observed frames at once: frames (B,T,3,H,W), alpha A (B,T,1,H,W) -> BackgroundStep
        with bg (B,T,3,H,W), z_bg (B,T,D), kl and log_imp (B,T) and h (B,Hd) the prior state after the last frame.

        Frame t's posterior needs only frame t and its alpha, so the encoder and the decoder each run once over the
        B*T frames; only the GRU prior steps through time. The same model as T calls of :meth:`forward` (equal with
        ``deterministic``; sampled, the noise is drawn in another order).
        """
        b, t = frames.shape[:2]
        q_mean, raw_std = self.encoder(torch.cat([frames, 1 - alpha], 2).flatten(0, 1))
        q_mean, q_std = q_mean.view(b, t, -1), F.softplus(raw_std).view(b, t, -1)
        z = sample_normal(q_mean, q_std, deterministic)
        p_mean, p_std, h = [], [], h_prev
        for k in range(t):
            mean_k, std_k, h = self.prior(z[:, k - 1] if k else z_prev, h, b, frames)
            p_mean.append(mean_k)
            p_std.append(std_k)
        p_mean, p_std = torch.stack(p_mean, 1), torch.stack(p_std, 1)
        kl = kl_normal(q_mean, q_std, p_mean, p_std).sum(-1)
        li = frames.new_zeros(b, t)
        if log_imp:
            li = (normal_log_prob(z, p_mean, p_std) - normal_log_prob(z, q_mean, q_std)).sum(-1)
        bg = self.decoder(z.flatten(0, 1))
        return BackgroundStep(bg.view(b, t, *bg.shape[1:]), z, h, kl, li)

    def sequence(self, frames: Tensor, alpha: Tensor, n_obs: int, z_prev: Tensor | None, h_prev: Tensor | None,
                 deterministic: bool, log_imp: bool = False) -> BackgroundStep:
        """Backgrounds of T frames (B,T,3,H,W) behind alpha (B,T,1,H,W), the first n_obs observed (in one batch,
        :meth:`observe`) and the rest imagined from the prior, frame by frame -> BackgroundStep over the T frames."""
        steps = []
        if n_obs > 0:
            steps.append(self.observe(frames[:, :n_obs], alpha[:, :n_obs], z_prev, h_prev, deterministic, log_imp))
            z_prev, h_prev = steps[-1].z_bg[:, -1], steps[-1].h
        for t in range(n_obs, frames.shape[1]):
            step = self(None, alpha[:, t], z_prev, h_prev, deterministic, imagine=True, log_imp=log_imp)
            steps.append(BackgroundStep(step.bg[:, None], step.z_bg[:, None], step.h, step.kl[:, None],
                                        step.log_imp[:, None]))
            z_prev, h_prev = step.z_bg, step.h
        return BackgroundStep.join(steps)
