"""Discovery (docs/model.md §3.9, §4.3): per-cell proposals, accept-reject against what propagation
explains, and the cap on the number of tracked objects."""

from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributions import (bernoulli_log_prob, kl_bernoulli, kl_normal, normal_log_prob, prob_to_logit,
                            relaxed_bernoulli_logit, sample_normal)
from .encoders import Decode, Encode, cg, log2_int
from .render import (BoxCoder, Windows, gather_windows, mask_overlaps, render_windows, scatter_windows_amax,
                     window_masks)

PRES_LOGIT_FACTOR = 8.8


def keep_most_present(z_pres: Tensor, rank_by: Tensor, budget: Tensor) -> Tensor:
    """The cap: (B,K) bool, True for the (at most) budget (B,) most present cells of z_pres (B,K), ranked by
    rank_by (B,K), their presences' logits (before the sigmoid, so presences saturated at exactly 1.0 are still
    told apart); cells of presence 0 are never kept, and equal logits keep raster order. The reference keeps
    values strictly above the next-largest one, which drops every cell where presences tie; a stable sort on
    the presences alone would keep the first ones in raster order (a frame's top rows)."""
    present = z_pres > 0
    order = torch.sort(torch.where(present, rank_by, torch.finfo(rank_by.dtype).min), dim=-1, descending=True,
                       stable=True).indices
    in_budget = torch.arange(z_pres.shape[1], device=order.device) < budget[:, None]
    return torch.zeros_like(in_budget).scatter(1, order, in_budget) & present


@dataclass
class DiscoveryStep:
    """Discovery at one frame, K = Gh * Gw cells in raster order.

    z_what (B,K,64); z_where decoded (B,K,4); z_depth (B,K,1); z_pres (B,K) after rejection and cap;
    z_pres_relaxed (B,K) before them; accept (B,K) bool; windows: rendered [alpha*o, alpha]
    (B,K,4,wh,ww); kl_* and log_imp (B,).
    """

    z_what: Tensor
    z_where: Tensor
    z_depth: Tensor
    z_pres: Tensor
    z_pres_relaxed: Tensor
    accept: Tensor
    windows: Windows
    kl_what: Tensor
    kl_where: Tensor
    kl_depth: Tensor
    kl_pres: Tensor
    log_imp: Tensor


def _head(img_size: int, out: int, hid: int) -> nn.Sequential:
    """Per-cell 1x1 heads: two layers at H >= 128, one below."""
    if img_size >= 128:
        layers: list = []
        cg(layers, nn.Conv2d(64, hid, 1), hid, 8)
        layers.append(nn.Conv2d(hid, out, 1))
        return nn.Sequential(*layers)
    return nn.Sequential(nn.Conv2d(64, out, 1))


class ProposalNet(nn.Module):
    """ProposalCore: features (B,64,Gh,Gw) and explained alpha (B,1,H,W) -> per-cell raw outputs."""

    def __init__(self, img_size: int, num_cell_h: int, num_cell_w: int, mask_dim: int = 32):
        super().__init__()
        side = max(num_cell_h, num_cell_w)
        n = log2_int(img_size // side, "img_size / grid")
        layers: list = []
        ch = 1
        for i in range(1, n + 1):
            out = [16, 32, 64][min(i, 3) - 1]
            cg(layers, nn.Conv2d(ch, out, 4, 2, 1), out)
            ch = out
            if i in (2, 3) or 3 < i < n:
                cg(layers, nn.Conv2d(ch, ch, 3, 1, 1), ch)
        cg(layers, nn.Conv2d(ch, mask_dim, 1), mask_dim, 8)
        if num_cell_h != num_cell_w:
            layers.append(nn.AvgPool2d((side // num_cell_h, side // num_cell_w)))
        self.mask_encoder = nn.Sequential(*layers)
        fus: list = []
        cg(fus, nn.Conv2d(64 + mask_dim, 64, 1), 64, 16)
        cg(fus, nn.Conv2d(64, 64, 1), 64, 16)
        self.fusion = nn.Sequential(*fus)
        self.where_head = _head(img_size, 8, 64)
        self.pres_head = _head(img_size, 1, 64)
        self.depth_head = _head(img_size, 2, 32)

    def forward(self, feats: Tensor, alpha_prop: Tensor):
        """-> pres logit (B,K), depth mean/raw std (B,K,1), where mean/raw std (B,K,4)."""
        c = self.fusion(torch.cat([feats, self.mask_encoder(alpha_prop)], 1))
        flat = lambda x: x.flatten(2).transpose(1, 2)  # (B, C, Gh, Gw) -> (B, K, C)  # noqa: E731
        logit = PRES_LOGIT_FACTOR * torch.tanh(flat(self.pres_head(c))[..., 0])
        depth = flat(self.depth_head(c))
        where = flat(self.where_head(c))
        return logit, depth[..., :1], depth[..., 1:], where[..., :4], where[..., 4:]


class Discovery(nn.Module):
    """Proposes an object in every cell, rejects what propagation already explains, caps the count."""

    def __init__(self, img_size: int, num_cell_h: int, num_cell_w: int, boxes: BoxCoder, glimpse_size: int,
                 win_hw: tuple[int, int], max_num_obj: int, explained_ratio_threshold: float = 0.3,
                 gen_disc_pres_probs: float = 0.1, kl_weight_pre_rejection: bool = True, z_what_dim: int = 64,
                 center_range: float = 1.0, reject_duplicates: bool = False, duplicate_min_iou: float = 0.0):
        super().__init__()
        self.proposal = ProposalNet(img_size, num_cell_h, num_cell_w)
        self.img_hw = (img_size, img_size)
        self.grid = (num_cell_h, num_cell_w)
        self.boxes = boxes
        self.glimpse_size = glimpse_size
        self.win_hw = win_hw
        self.max_num_obj = max_num_obj
        self.explained_ratio_threshold = explained_ratio_threshold
        self.gen_disc_pres_probs = gen_disc_pres_probs
        self.kl_weight_pre_rejection = kl_weight_pre_rejection
        self.z_what_dim = z_what_dim
        self.center_range = center_range
        self.reject_duplicates = reject_duplicates
        self.duplicate_min_iou = duplicate_min_iou
        rows, cols = torch.meshgrid(torch.arange(num_cell_h), torch.arange(num_cell_w), indexing="ij")
        self.register_buffer("cell_xy", torch.stack([cols.flatten(), rows.flatten()], -1).float(), persistent=False)

    @property
    def num_cells(self) -> int:
        return self.grid[0] * self.grid[1]

    def decode_where(self, raw: Tensor) -> Tensor:
        """Raw (size, ratio, x, y) logits (B,K,4) -> boxes (sx, sy, tx, ty) (B,K,4)."""
        sx, sy = self.boxes.scale(raw[..., 0], raw[..., 1])
        gh, gw = self.grid
        tx = 2.0 / gw * (self.cell_xy[:, 0] + 0.5 + self.center_range * torch.tanh(raw[..., 2])) - 1
        ty = 2.0 / gh * (self.cell_xy[:, 1] + 0.5 + self.center_range * torch.tanh(raw[..., 3])) - 1
        return torch.stack([sx, sy, tx, ty], -1)

    def _duplicates(self, win: Windows, mask: Tensor, area: Tensor, full: Tensor | None, strength: Tensor,
                    rank_by: Tensor | None = None) -> Tensor:
        """(B,K) bool: proposals that a more present proposal of the same frame explains. mask (B,K,wh,ww),
        area (B,K) its pixel counts, full (B,K,H*W) the masks on full canvases (needed with duplicate_min_iou),
        strength (B,K) (a proposal of strength 0 covers nothing), ranked by rank_by (B,K) (default: strength; the
        presences' logits tell saturated presences apart as the cap's do); ties go to the earlier cell.

        duplicate_min_iou = 0: the masks of all stronger proposals together cover at least
        ``explained_ratio_threshold`` of the proposal's mask (one scatter-max of ranks over the frame, no K x K).
        duplicate_min_iou > 0: one stronger proposal alone covers that much of it and their masks' IoU is at least
        duplicate_min_iou, so a copy (IoU near 1) goes while an object inside a stronger proposal that draws it and
        a neighbour (IoU about 0.5 or less) stays; this compares all K x K pairs of masks (one batched matmul).
        """
        min_iou = self.duplicate_min_iou
        k = strength.shape[1]
        key = strength if rank_by is None else torch.where(strength > 0, rank_by, torch.finfo(rank_by.dtype).min)
        order = torch.sort(key, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(k, 0, -1, device=order.device).expand_as(order))
        if min_iou <= 0:  # rank: K for the strongest proposal, 1 for the weakest
            on = mask & (strength > 0)[..., None, None]
            top = scatter_windows_amax(win, torch.where(on, rank[..., None, None].to(win.data.dtype), 0.0),
                                       self.img_hw)
            seen = gather_windows(win, top[:, None], self.img_hw)[:, :, 0]  # (B, K, wh, ww)
            covered = (mask & (seen > rank[..., None, None])).flatten(2).sum(-1)
            return covered >= self.explained_ratio_threshold * area
        stronger = (rank[:, None, :] > rank[:, :, None]) & (strength > 0)[:, None, :]
        inter, iou = mask_overlaps(full, full)  # one K x K pass
        return (stronger & self._explained_by_one(inter, iou, area, min_iou, self.explained_ratio_threshold)).any(-1)

    @staticmethod
    def _explained_by_one(inter: Tensor, iou: Tensor, area: Tensor, min_iou: float, ratio: float) -> Tensor:
        """Shared pixels inter (B,K,M) and mask IoU iou (B,K,M) of proposals k and masks m (``mask_overlaps``),
        proposal areas (B,K) -> (B,K,M) bool: mask m alone covers ``ratio`` of proposal k's mask and their IoU
        is at least min_iou."""
        return (inter >= ratio * area[:, :, None]) & (iou >= min_iou)

    def forward(self, feats: Tensor | None, frame: Tensor | None, alpha_prop: Tensor, lengths: Tensor,
                z_pres_prior: float, tau: float, reject: bool, encoder: Encode,
                decoder: Decode, deterministic: bool, imagine: bool = False,
                log_imp: bool = False, skip_below: float = 0.0, dedup: bool = True,
                static: bool = False) -> DiscoveryStep:
        """feats (B,64,Gh,Gw), frame (B,3,H,W) (both None when imagined), alpha_prop (B,1,H,W)
        detached and clamped, lengths (B,) objects tracked before this frame -> DiscoveryStep.

        skip_below > 0 (an approximation for inference): cells whose relaxed presence is below it are
        switched off and neither encoded nor decoded (one host sync for the active count). dedup=False skips the
        duplicate test of this call (``reject_duplicates`` then acts as if off).

        With gradients (training), the decoder's gradient reaches only the proposals that survive rejection and
        the cap: the others draw with presence 0, so theirs is exactly zero. So every proposal is decoded without
        gradients for the accept-reject test, and only the survivors are decoded again with gradients (and
        recomputed in backward with ``checkpoint_decoder``); exact, one host sync for their count. static=True
        (fixed slots: no host syncs) decodes every proposal with gradients instead."""
        b, k = alpha_prop.shape[0], self.num_cells
        zeros = alpha_prop.new_zeros(b)
        if imagine:
            logit = prob_to_logit(alpha_prop.new_full((b, k), self.gen_disc_pres_probs))
            z_depth = sample_normal(alpha_prop.new_zeros(b, k, 1), alpha_prop.new_ones(b, k, 1), deterministic)
            raw_where = sample_normal(alpha_prop.new_zeros(b, k, 4), alpha_prop.new_ones(b, k, 4), deterministic)
            z_what = sample_normal(alpha_prop.new_zeros(b, k, self.z_what_dim),
                                   alpha_prop.new_ones(b, k, self.z_what_dim), deterministic)
        else:
            logit, d_mean, d_raw, w_mean, w_raw = self.proposal(feats, alpha_prop)
            d_std, w_std = F.softplus(d_raw), F.softplus(w_raw)
            z_depth = sample_normal(d_mean, d_std, deterministic)
            raw_where = sample_normal(w_mean, w_std, deterministic)
        pres_logit = relaxed_bernoulli_logit(logit, tau, deterministic)
        z_pres_relaxed = torch.sigmoid(pres_logit)
        z_where = self.decode_where(raw_where)
        s = self.glimpse_size
        active = None
        if skip_below > 0:
            on = z_pres_relaxed >= skip_below
            active = on.flatten().nonzero()[:, 0]
            z_pres_relaxed = z_pres_relaxed * on
        if not imagine:
            if active is None:
                e_mean, e_raw = encoder(frame, z_where)
            else:  # skipped cells: zeros (their KL weights are 0); an empty batch is never run (it fails)
                e_mean = e_raw = frame.new_zeros(b * k, self.z_what_dim)
                if active.numel():
                    on_mean, on_raw = encoder(frame, z_where, active)
                    e_mean, e_raw = e_mean.index_copy(0, active, on_mean), e_raw.index_copy(0, active, on_raw)
            e_mean, e_std = e_mean.view(b, k, -1), F.softplus(e_raw).view(b, k, -1)
            z_what = sample_normal(e_mean, e_std, deterministic)
        kept_only = active is None and not static and torch.is_grad_enabled() and z_what.requires_grad
        if kept_only:  # for the accept-reject test, alpha only; the survivors are decoded again below, and the
            with torch.no_grad():  # others draw with presence 0, so their colour is never seen
                glimpse = decoder(z_what.flatten(0, 1), mask_only=True)
        elif active is None:
            glimpse = decoder(z_what.flatten(0, 1))
        else:  # a skipped cell is its whole box (alpha 1, no colour) in the accept-reject test below; its presence
            # is 0, so it draws nothing, but over a tracked object or a stronger proposal it is rejected and its
            # presence KL pulls towards absence as the exact path's would
            glimpse = z_what.new_zeros(b * k, 4, s, s)
            glimpse[:, 3] = 1.0
            if active.numel():
                glimpse = glimpse.index_copy(0, active, decoder(z_what.flatten(0, 1)[active]))
        glimpse = glimpse.view(b, k, 4, s, s)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not kept_only):
            win = render_windows(glimpse, z_where, self.win_hw, self.img_hw)

        # Accept-reject: a proposal whose binarised mask is mostly covered by propagated objects (and, with
        # reject_duplicates, by a more present proposal of the same frame); with duplicate_min_iou one such
        # proposal alone must cover it and overlap it with that mask IoU.
        dedup = self.reject_duplicates and dedup and not imagine
        checked = reject or dedup
        accept = torch.ones(b, k, dtype=torch.bool, device=alpha_prop.device)
        if checked:
            mask = (win.data[:, :, 3] > 0.3) & win.valid  # (B, K, wh, ww)
            area = mask.flatten(2).sum(-1) + 1e-15
            pairwise = dedup and self.duplicate_min_iou > 0
            full = window_masks(win, mask, self.img_hw).to(area.dtype) if pairwise else None  # (B, K, H*W)
        if reject:
            covered = mask & (gather_windows(win, alpha_prop, self.img_hw)[:, :, 0] > 0.1)
            accept = covered.flatten(2).sum(-1) < self.explained_ratio_threshold * area
        if dedup:
            accept = accept & ~self._duplicates(win, mask, area, full, z_pres_relaxed.detach() * accept,
                                                pres_logit.detach())
        z_pres = z_pres_relaxed * accept

        # Cap: only the max_num_obj - lengths most present cells survive.
        budget = (self.max_num_obj - lengths).clamp(min=0)
        z_pres = z_pres * keep_most_present(z_pres.detach(), pres_logit.detach(), budget)
        if kept_only:  # the survivors' windows with gradients, the others' as rendered (their gradient is 0)
            kept = (z_pres.detach() != 0).flatten().nonzero()[:, 0]
            if kept.numel():
                again = render_windows(decoder(z_what.flatten(0, 1)[kept])[None], z_where.flatten(0, 1)[kept][None],
                                       self.win_hw, self.img_hw).data[0]
                win = Windows(win.data.flatten(0, 1).index_copy(0, kept, again).view_as(win.data), win.origin,
                              win.valid)

        p = z_pres_prior * accept + 1e-8 * (~accept) if checked else torch.full_like(logit, z_pres_prior)
        if imagine:
            kls = (zeros, zeros, zeros, zeros)
        else:
            w = z_pres_relaxed if self.kl_weight_pre_rejection else z_pres
            kls = (
                (w * kl_normal(e_mean, e_std, 0.0, 1.0).sum(-1)).sum(-1),
                (w * kl_normal(w_mean, w_std, 0.0, 1.0).sum(-1)).sum(-1),
                (w * kl_normal(d_mean, d_std, 0.0, 1.0).sum(-1)).sum(-1),
                kl_bernoulli(logit, p).sum(-1),
            )
        li = zeros
        if log_imp and not imagine:
            zb = (z_pres_relaxed > 0.5).float()
            lr = lambda x, m, sd: (normal_log_prob(x, 0.0, 1.0) - normal_log_prob(x, m, sd)).sum(-1)  # noqa: E731
            zp = (z_pres > 0.5).float()
            li = (zb * (lr(z_what, e_mean, e_std) + lr(z_depth, d_mean, d_std) + lr(raw_where, w_mean, w_std))
                  + bernoulli_log_prob(zp, p) - bernoulli_log_prob(zp, torch.sigmoid(logit))).sum(-1)
        return DiscoveryStep(z_what, z_where, z_depth, z_pres, z_pres_relaxed, accept, win, *kls, li)
