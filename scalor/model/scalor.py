"""SCALOR (docs/model.md §4): the loop over time of propagation, discovery, compositing, background,
likelihood and compaction into the next :class:`ObjectState`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..schedules import Schedule
from .background import Background
from .config import SCALORConfig
from .discovery import Discovery, DiscoveryStep
from .execution import ExecutionOptions
from .distributions import EPS, clamp_st, normal_log_prob
from .encoders import GlimpseDecoder, GlimpseEncoder, ImageEncoder
from .propagation import Propagation, PropagationStep
from .render import (BoxCoder, Windows, boxes_to_xyxy, extract, gather_windows, mask_boxes, scatter_windows, scatter_windows_amax,
                     window_size)
from .state import Carry, ObjectState, SequenceOutput

CURRICULUM_ALPHA = 0.9  # docs/model.md §4.5


@dataclass
class _Composite:
    """Per-frame canvases: alpha sum, importance sum and importance-weighted colour sum."""

    alpha: Tensor  # (B, 1, H, W)
    imp: Tensor  # (B, 1, H, W)
    colour: Tensor  # (B, 3, H, W)


class SCALOR(nn.Module):
    """Generative world model with scalable object representations.

    Built from a :class:`SCALORConfig` (``model.config``; :meth:`from_config` builds one from a mapping of
    options). forward(video (B,T,3,H,W) in [0,1], schedule) -> SequenceOutput. Layers are derived from
    (img_size, num_cell_h, num_cell_w, glimpse_size); at the reference's sizes the parameter names
    and counts match it (docs/model.md §3.12).
    """

    def __init__(self, config: SCALORConfig):
        super().__init__()
        if not isinstance(config, SCALORConfig):
            raise TypeError(f"SCALOR takes a SCALORConfig, not a {type(config).__name__}; SCALOR.from_config builds "
                            "one from a mapping of options.")
        c = self.config = config
        self.img_hw = (c.img_size, c.img_size)
        self.grid = (c.num_cell_h, c.num_cell_w)
        self.glimpse_size = c.glimpse_size
        self.max_num_obj = c.max_num_obj
        self.z_what_dim = c.z_what_dim
        self.sigma = c.sigma
        self.z_pres_disc_threshold = c.z_pres_disc_threshold
        self.no_background = c.no_background
        self.box_source = c.box_source
        boxes = BoxCoder(c.size_anc, c.var_s, c.ratio_anc, c.var_anc)
        self.win_hw = window_size(*boxes.max_scale, c.glimpse_size, self.img_hw)

        self.image_encoder = ImageEncoder(c.img_size, c.num_cell_h, c.num_cell_w, c.conv_lstm)
        self.glimpse_encoder = GlimpseEncoder(c.glimpse_size, c.z_what_dim)
        self.glimpse_decoder = GlimpseDecoder(c.glimpse_size, c.img_size, c.z_what_dim)
        self.propagation = Propagation(c.img_size, c.num_cell_h, c.num_cell_w, boxes, c.glimpse_size, self.win_hw,
                                       c.double_softplus_what_std, c.z_what_dim)
        self.discovery = Discovery(c.img_size, c.num_cell_h, c.num_cell_w, boxes, c.glimpse_size, self.win_hw,
                                   c.max_num_obj, c.explained_ratio_threshold, c.gen_disc_pres_probs,
                                   c.kl_weight_pre_rejection, c.z_what_dim, center_range=c.center_range,
                                   reject_duplicates=c.reject_duplicates, duplicate_min_iou=c.duplicate_min_iou)
        self.background = None if c.no_background else Background(c.img_size, c.bg_decoder)
        # How the network is run (recomputation in backward, weight layout, slot budget, torch.compile, the
        # inference skip threshold): not part of the model config; the defaults until the execution group's
        # options are applied (:meth:`ExecutionOptions.apply`, which sets checkpoint_decoder, checkpoint_encoder,
        # channels_last, fixed_slots, compile, skip_glimpse_below and the torch.compile cache _compiled).
        # checkpoint_*=auto: recompute the glimpse networks in backward from 32 px glimpses on, where their
        # activations are what fills memory; 16 px activations are small and recomputing them costs 15% of a step
        ExecutionOptions().apply(self)

    @classmethod
    def from_config(cls, config: SCALORConfig | Mapping | None = None, /, **options: Any) -> SCALOR:
        """The model of ``config`` (a :class:`SCALORConfig`, or a mapping of options: a config node, a checkpoint's
        saved ``hyper_parameters['model']``; ``_target_`` and other ``_`` keys left out) with ``options`` on top
        (keywords: how Hydra's instantiate calls conf/model's ``_target_``). Options not given take their defaults;
        a key that is no option, or a value the model cannot run, is a ConfigError of one line."""
        base = config.to_dict() if isinstance(config, SCALORConfig) else dict(config or {})
        return cls(SCALORConfig.from_mapping({**base, **options}))

    # ------------------------------------------------------------------ helpers
    def _net(self, name: str):
        """The glimpse network ``name`` (encoder forward or decoder glimpse), torch.compile'd with ``compile``."""
        fn = self.glimpse_encoder.forward if name == "encoder" else self.glimpse_decoder.glimpse
        if not self.compile:
            return fn
        if name not in self._compiled:
            self._compiled[name] = torch.compile(fn, dynamic=True)
        return self._compiled[name]

    def _decode(self, z_what: Tensor, mask_only: bool = False) -> Tensor:
        """(n, z_what_dim) -> glimpses (n, 4, S, S) (premultiplied colour, alpha); with ``checkpoint_decoder`` the
        decoder is recomputed in backward and only z_what is kept (exact, less memory). mask_only: alpha only,
        colour 0 (never compiled or recomputed)."""
        if mask_only:
            return self.glimpse_decoder.glimpse(z_what, mask_only=True)
        if self.checkpoint_decoder and torch.is_grad_enabled() and z_what.requires_grad:
            return checkpoint(self._net("decoder"), z_what, use_reentrant=False)
        return self._net("decoder")(z_what)

    def _encode(self, frame: Tensor, z_where: Tensor, active: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Glimpses of frame (B,3,H,W) at boxes (B,M,4), encoded -> (mean, raw std), each (B*M, z_what_dim) or, with
        ``active`` (indices into B*M), (len(active), z_what_dim). With ``checkpoint_encoder`` extraction and encoder are
        recomputed in backward and only the frame and boxes are kept (exact, less memory)."""
        if self.checkpoint_encoder and torch.is_grad_enabled():
            return checkpoint(self._encode_now, frame, z_where, active, use_reentrant=False)
        return self._encode_now(frame, z_where, active)

    def _encode_now(self, frame: Tensor, z_where: Tensor, active: Tensor | None) -> tuple[Tensor, Tensor]:
        glimpses = extract(frame, z_where, (self.glimpse_size, self.glimpse_size)).flatten(0, 1)
        return self._net("encoder")(glimpses if active is None else glimpses[active])

    def initial_carry(self, batch: int, device, dtype=torch.float32) -> Carry:
        """Nothing tracked yet: one empty slot per element, IDs starting at 1."""
        return Carry(ObjectState.empty(batch, device, dtype, z_what_dim=self.z_what_dim), None, None, None,
                     torch.ones(batch, dtype=torch.long, device=device))

    def pixel_sigma(self, schedule: Schedule) -> float:
        """The pixel likelihood's std for this step: the schedule's when it has one, else ``model.sigma``."""
        return self.sigma if schedule.sigma is None else schedule.sigma

    def _canvases(self, win: Windows, z_pres: Tensor, z_depth: Tensor) -> _Composite:
        """Scatter one object group into canvases, from one alpha render per object (exact).

        alpha_i = z_i * render(a), importance_i = z_i * sigmoid(-d_i) * render(a), colour_i =
        z_i * render(a * o); the canvases hold sum(alpha_i), sum(importance_i), sum(importance_i * colour_i).
        """
        ra = win.data[:, :, 3:4]
        imp_w = (z_pres * torch.sigmoid(-z_depth[..., 0]))[..., None, None, None]
        z = z_pres[..., None, None, None]
        values = torch.cat([z * ra, imp_w * ra, imp_w * ra * z * win.data[:, :, :3]], 2)
        canvas = scatter_windows(win, values, self.img_hw)
        return _Composite(canvas[:, :1], canvas[:, 1:2], canvas[:, 2:])

    def _new_ids(self, disc_pres: Tensor, next_id: Tensor) -> Tensor:
        """(B, K) IDs for cells that start a track (next unused IDs in raster order), 0 elsewhere."""
        start = disc_pres > self.z_pres_disc_threshold
        return torch.where(start, next_id[:, None] + start.long().cumsum(1) - 1, 0)

    def _composite(self, prop: _Composite | None, disc: _Composite, schedule: Schedule) -> tuple[Tensor, Tensor]:
        """Foreground (B,3,H,W) and total alpha A (B,1,H,W) (docs/model.md §4.4-§4.5)."""
        imp, colour, alpha = disc.imp, disc.colour, disc.alpha
        if schedule.bg_alpha_curriculum:  # every discovery alpha canvas is the constant 0.9
            alpha = torch.full_like(alpha, CURRICULUM_ALPHA * self.discovery.num_cells)
        if prop is not None:
            imp, colour, alpha = imp + prop.imp, colour + prop.colour, alpha + prop.alpha
        return colour / (imp + EPS), clamp_st(alpha)

    def _segmentation(self, groups: list[tuple[Windows, Tensor, Tensor, Tensor]]) -> Tensor:
        """(B, H, W) int64 ID of the most important object with alpha > 0.3 per pixel (0: none)."""
        keys = []
        for win, z, d, ids in groups:
            ra = win.data[:, :, 3]
            imp = (z * torch.sigmoid(-d[..., 0]))[..., None, None] * ra
            keys.append(torch.where(z[..., None, None] * ra > 0.3, imp, torch.full_like(imp, -1.0)))
        best = None
        for win, key in zip((g[0] for g in groups), keys):
            m = scatter_windows_amax(win, key, self.img_hw)
            best = m if best is None else torch.maximum(best, m)
        seg = torch.zeros_like(best, dtype=torch.long)
        for (win, _, _, ids), key in zip(groups, keys):
            top = gather_windows(win, best[:, None], self.img_hw)[:, :, 0]
            win_ids = torch.where((key >= 0) & (key == top), ids[..., None, None].to(key.dtype), torch.zeros_like(key))
            seg = torch.maximum(seg, scatter_windows_amax(win, win_ids, self.img_hw).clamp(min=0).long())
        return seg

    def _compact(self, state: ObjectState, prop: PropagationStep | None, disc: DiscoveryStep, next_id: Tensor,
                 detach: bool, fixed: bool = False) -> tuple[ObjectState, Tensor, Tensor, int, Tensor]:
        """Keep surviving tracked objects (previous order) then new ones (raster order), by one gather.

        Returns the next state, the kept count (B,), the updated next_id (B,), the slot count to
        propagate (the largest kept count; the whole budget with ``fixed``, the resolved ``fixed_slots``) and the
        gather order (B, N_new) into [prop slots, disc cells]. One host sync unless ``fixed``: the new slot
        count (docs/model.md §4.7 step 3).
        """
        b, k = disc.z_pres.shape
        keep_disc = disc.z_pres > self.z_pres_disc_threshold
        zk = lambda d: disc.z_what.new_zeros(b, k, d)  # noqa: E731
        cand = dict(z_what=disc.z_what, z_where=disc.z_where, z_where_bias=zk(4), z_depth=disc.z_depth,
                    z_pres=disc.z_pres[..., None], h=zk(state.h.shape[-1]), prior_h=zk(state.prior_h.shape[-1]),
                    prior_c=zk(state.prior_c.shape[-1]), c_abs=zk(1), ids=self._new_ids(disc.z_pres, next_id))
        keep = keep_disc
        if prop is not None:
            old = dict(z_what=prop.z_what, z_where=prop.z_where, z_where_bias=prop.z_where_bias,
                       z_depth=prop.z_depth, z_pres=prop.z_pres[..., None], h=prop.h, prior_h=prop.prior_h,
                       prior_c=prop.prior_c, c_abs=prop.c_abs, ids=state.ids)
            cand = {key: torch.cat([old[key], cand[key]], 1) for key in cand}
            keep = torch.cat([prop.z_pres > 0, keep_disc], 1)
        count = keep.sum(1)
        if fixed:  # static shapes, no host sync: always the whole budget (padding is masked)
            n_kept = n_new = min(self.max_num_obj, keep.shape[1])
        else:
            n_kept = int(count.max())
            n_new = max(n_kept, 1)
        order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :n_new]
        take = lambda x: x.gather(1, order.view(b, n_new, *([1] * (x.dim() - 2))).expand(b, n_new, *x.shape[2:]))  # noqa: E731
        new = ObjectState(**{key: take(val) for key, val in cand.items()}, mask=take(keep))
        if detach:
            new = new.detach()
        return new, count, next_id + keep_disc.sum(1), n_kept, order

    # ------------------------------------------------------------------ forward
    def forward(self, video: Tensor, schedule: Schedule = Schedule(), carry: Carry | None = None,
                observe_frames: int | None = None, visuals: bool = False, log_imp: bool = False,
                track_only: bool = False, deterministic: bool = False) -> SequenceOutput:
        """One pass over the frames in order.

        video (B,T,3,H,W) in [0,1]. carry continues an earlier window of the same sequences.
        observe_frames: None for inference; k >= 0 to infer frames t < k and imagine the rest from
        the priors (generation; video frames t >= k are then only used for the likelihood).
        log_imp: also return the importance log-ratios of the NLL estimate (docs/model.md §4.10).
        track_only: boxes, IDs and counts only (tracking inference): no compositing, background or
        likelihood; recon is then empty (B, 0, 3, H, W) and log_like, kl_bg are zero.
        deterministic: posterior means and u = 0.5 presence instead of samples (docs/model.md §4.11).
        How tracks are reported from passes like this one (offline, streaming): :mod:`scalor.tracking.trackers`.
        """
        if visuals and track_only:
            raise ValueError("visuals need the composited frames: call with track_only=False")
        b, t_len = video.shape[:2]
        det = bool(deterministic)
        if carry is None:
            carry = self.initial_carry(b, video.device, video.dtype)
        n_obs = t_len if observe_frames is None else min(observe_frames, t_len)
        feats, lstm = (self.image_encoder(video[:, :n_obs], carry.lstm) if n_obs > 0 else (None, carry.lstm))
        state, z_bg, h_bg, next_id = carry.objects, carry.z_bg, carry.h_bg, carry.next_id
        n_alive = int(state.mask.sum(1).max()) if state.mask.numel() else 0
        fixed_slots = video.is_cuda if self.fixed_slots == "auto" else self.fixed_slots
        terms = {key: [] for key in ("log_like", "kl_what", "kl_where", "kl_depth", "kl_pres", "kl_bg", "log_imp")}
        recon, counts, boxes, ids, presence, fgs, alphas = [], [], [], [], [], [], []
        vis = {key: [] for key in ("bg", "fg", "alpha", "seg", "disc_boxes", "disc_pres", "prop_boxes",
                                   "prop_pres")} if visuals else None
        zeros_b = video.new_zeros(b)
        for t in range(t_len):
            imagine = t >= n_obs
            frame = None if imagine else video[:, t]
            f_t = None if imagine else feats[:, t]
            lengths = state.mask.sum(1)

            prop = None
            if n_alive > 0:
                prop = self.propagation(state, f_t, frame, schedule.tau, self._encode, self._decode, det,
                                        imagine, log_imp)
                prop_c = self._canvases(prop.windows, prop.z_pres, prop.z_depth)
                alpha_prop = clamp_st(prop_c.alpha).detach()
            else:
                alpha_prop = video.new_zeros(b, 1, *self.img_hw)
            disc = self.discovery(f_t, frame, alpha_prop, lengths, schedule.z_pres_prior, schedule.tau,
                                  reject=prop is not None, dedup=schedule.reject_duplicates or not self.training,
                                  encoder=self._encode, decoder=self._decode, deterministic=det,
                                  imagine=imagine, log_imp=log_imp,
                                  skip_below=0.0 if self.training else self.skip_glimpse_below,
                                  static=fixed_slots)
            for key in ("kl_what", "kl_where", "kl_depth", "kl_pres"):
                terms[key].append(getattr(disc, key) + (getattr(prop, key) if prop is not None else 0))
            terms["log_imp"].append(disc.log_imp + (prop.log_imp if prop is not None else 0))
            if not track_only:  # track-only: boxes and IDs only, no compositing, background or likelihood
                disc_c = self._canvases(disc.windows, disc.z_pres, disc.z_depth)
                fg, alpha = self._composite(prop_c if prop is not None else None, disc_c, schedule)
                fgs.append(fg)
                alphas.append(alpha)

            if visuals:
                groups = [(disc.windows, disc.z_pres, disc.z_depth, self._new_ids(disc.z_pres, next_id))]
                if prop is not None:
                    groups.insert(0, (prop.windows, prop.z_pres, prop.z_depth, state.ids))
                vis["fg"].append(fg.detach())
                vis["alpha"].append(alpha.detach())
                vis["seg"].append(self._segmentation([tuple(x.detach() if torch.is_tensor(x) else x for x in g)
                                                      for g in groups]))
                vis["disc_boxes"].append(boxes_to_xyxy(disc.z_where).detach())
                vis["disc_pres"].append(disc.z_pres.detach())
                vis["prop_boxes"].append(boxes_to_xyxy(prop.z_where).detach() if prop is not None
                                         else video.new_zeros(b, 1, 4))
                vis["prop_pres"].append(prop.z_pres.detach() if prop is not None else video.new_zeros(b, 1))

            state, count, next_id, n_alive, order = self._compact(state, prop, disc, next_id, schedule.detach,
                                                                  fixed_slots)
            counts.append(count)
            ids.append(torch.where(state.mask, state.ids, -1))
            pres = (state.z_pres[..., 0] * state.mask).detach()
            if self.box_source == "mask":  # tight boxes of what each object draws; drawing nothing: no detection
                groups = ([prop.windows] if prop is not None else []) + [disc.windows]
                drawn = [mask_boxes(win, self.img_hw) for win in groups]
                box_all = torch.cat([d[0] for d in drawn], 1)
                box = box_all.gather(1, order[..., None].expand(-1, -1, 4))
                pres = pres * torch.cat([d[1] for d in drawn], 1).gather(1, order)
            else:
                box = boxes_to_xyxy(state.z_where).detach()
            boxes.append(box * state.mask[..., None])
            presence.append(pres)

        # The background after the loop: nothing the objects do depends on it, so its encoder and decoder run once
        # over all observed frames (Background.sequence); without one, a frame is its foreground.
        terms["log_like"] = terms["kl_bg"] = [zeros_b] * t_len
        if not track_only:
            bg = None
            if self.background is not None:
                bg = self.background.sequence(video, torch.stack(alphas, 1), n_obs, z_bg, h_bg, det, log_imp)
                z_bg, h_bg = bg.z_bg[:, -1], bg.h
                terms["kl_bg"] = list(bg.kl.unbind(1))
                terms["log_imp"] = [li + li_bg for li, li_bg in zip(terms["log_imp"], bg.log_imp.unbind(1))]
            terms["log_like"] = []
            sigma = self.pixel_sigma(schedule)
            for t, (fg, alpha) in enumerate(zip(fgs, alphas)):
                recon.append(fg if bg is None else fg + (1 - alpha) * bg.bg[:, t])
                terms["log_like"].append(normal_log_prob(video[:, t], recon[t], sigma).flatten(1).sum(1))
                if visuals:
                    vis["bg"].append(torch.zeros_like(fg) if bg is None else bg.bg[:, t].detach())
        mean_t = {key: torch.stack(val, 1).mean(1) for key, val in terms.items() if key != "log_imp"}
        out_vis = None
        recon = torch.stack(recon, 1) if recon else video.new_zeros(b, 0, *video.shape[2:])
        if visuals:
            out_vis = {key: _pad_stack(val, 0) for key, val in vis.items()}
            out_vis["recon"] = recon.detach()
        return SequenceOutput(
            recon=recon, **mean_t, log_imp=torch.stack(terms["log_imp"], 1).sum(1),
            counts=torch.stack(counts, 1), boxes=_pad_stack(boxes, 0.0), ids=_pad_stack(ids, -1),
            presence=_pad_stack(presence, 0.0),
            carry=Carry(state, lstm, z_bg, h_bg, next_id), visuals=out_vis,
        )


    @torch.no_grad()
    def importance_nll(self, video: Tensor, schedule: Schedule, samples: int) -> Tensor:
        """(B,) importance-weighted NLL estimate in nats per sequence of video (B,T,3,H,W) from ``samples``
        sampled passes (docs/model.md §4.10).

        Each sample's log weight is T * log_like + log_imp; NLL = -(logsumexp_K - log K).
        """
        k = int(samples)
        log_w = []
        for _ in range(k):
            out = self(video, schedule, log_imp=True)
            log_w.append(video.shape[1] * out.log_like + out.log_imp)
        return -(torch.logsumexp(torch.stack(log_w), 0) - math.log(k))


def _pad_stack(items: list[Tensor], fill) -> Tensor:
    """Stack (B, n_t, ...) tensors over time, padding dim 1 to the largest n_t -> (B, T, n, ...)."""
    if items[0].dim() < 2 or all(x.shape[1:] == items[0].shape[1:] for x in items):
        return torch.stack(items, 1)
    n = max(x.shape[1] for x in items)
    padded = [torch.cat([x, x.new_full((x.shape[0], n - x.shape[1], *x.shape[2:]), fill)], 1) for x in items]
    return torch.stack(padded, 1)
