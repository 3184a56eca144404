"""Typed containers for SCALOR's carried state and per-sequence outputs.

Every object tensor is padded to N slots per batch element; ``mask`` marks valid slots, which
always come first in the order the reference keeps (survivors in their previous order, then new
objects in cell raster order).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional

import torch
from torch import Tensor


PRESENCE_THRESHOLD = 0.5  # an object is reported (tracked, counted, drawn) when its presence exceeds this
                         # (docs/model.md §7.3)


def _map(obj, fn):
    return replace(obj, **{f.name: fn(getattr(obj, f.name)) for f in fields(obj)
                           if isinstance(getattr(obj, f.name), Tensor)})


@dataclass
class ObjectState:
    """Tracked objects after a frame, docs/model.md §4.0. Shapes: (B, N, ·); ids/mask (B, N).

    z_where is the decoded box (sx, sy, tx, ty); z_depth the raw Gaussian sample; z_pres the soft
    presence after masking; h the tracker GRU state; prior_h/prior_c the prior LSTM state;
    c_abs the cumulative absence of the stop rule; ids are unique per sequence (int64, 0 = padding).
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
    ids: Tensor
    mask: Tensor

    @property
    def num_slots(self) -> int:
        return self.z_what.shape[1]

    @property
    def lengths(self) -> Tensor:
        """(B,) number of valid slots."""
        return self.mask.sum(1)

    def detach(self) -> "ObjectState":
        return _map(self, lambda t: t.detach())

    @staticmethod
    def empty(batch: int, device, dtype=torch.float32, z_what_dim: int = 64, rnn_dim: int = 128,
              prior_dim: int = 64, slots: int = 1) -> "ObjectState":
        """No objects: ``slots`` all-zero invalid slots per element (the reference's t = 0 state)."""
        z = lambda d: torch.zeros(batch, slots, d, device=device, dtype=dtype)  # noqa: E731
        return ObjectState(
            z_what=z(z_what_dim), z_where=z(4), z_where_bias=z(4), z_depth=z(1), z_pres=z(1),
            h=z(rnn_dim), prior_h=z(prior_dim), prior_c=z(prior_dim), c_abs=z(1),
            ids=torch.zeros(batch, slots, dtype=torch.long, device=device),
            mask=torch.zeros(batch, slots, dtype=torch.bool, device=device),
        )


@dataclass
class Carry:
    """Everything needed to continue a sequence in a later window (streaming tracking).

    objects: tracked objects; lstm: ConvLSTM (h, c) per layer, each (B, C, Gh, Gw), or None;
    z_bg / h_bg: last background latent (B, 10) and background-prior GRU state (B, 32), or None;
    next_id: (B,) int64, the next unused object ID of each sequence.
    """

    objects: ObjectState
    lstm: Optional[list]
    z_bg: Optional[Tensor]
    h_bg: Optional[Tensor]
    next_id: Tensor

    def detach(self) -> "Carry":
        return Carry(
            objects=self.objects.detach(),
            lstm=None if self.lstm is None else [(h.detach(), c.detach()) for h, c in self.lstm],
            z_bg=None if self.z_bg is None else self.z_bg.detach(),
            h_bg=None if self.h_bg is None else self.h_bg.detach(),
            next_id=self.next_id,
        )


@dataclass
class SequenceOutput:
    """What ``SCALOR.forward`` returns for a batch of sequences.

    recon (B, T, 3, H, W). Loss terms (B,), each the mean over frames of the per-frame value
    (docs/model.md §4.7): log_like, kl_what, kl_where, kl_depth, kl_pres, kl_bg. log_imp (B,) is the
    sum over frames of the importance log-ratio (zeros unless asked for). counts (B, T): objects
    tracked after each frame. boxes (B, T, N, 4): normalised (x1, y1, x2, y2) in [0, 1] of the
    tracked objects after each frame; ids (B, T, N) int64 with -1 for padding; presence (B, T, N)
    the soft z_pres (0 for padding). carry: state to continue the sequence. visuals: optional dict
    of (B, T, ...) tensors for drawing (bg, fg, alpha, segmentation ids, discovery/propagation boxes).
    """

    recon: Tensor
    log_like: Tensor
    kl_what: Tensor
    kl_where: Tensor
    kl_depth: Tensor
    kl_pres: Tensor
    kl_bg: Tensor
    log_imp: Tensor
    counts: Tensor
    boxes: Tensor
    ids: Tensor
    presence: Tensor
    carry: Carry
    visuals: Optional[dict] = None

    @property
    def kl(self) -> Tensor:
        """(B,) sum of all KL terms."""
        return self.kl_what + self.kl_where + self.kl_depth + self.kl_pres + self.kl_bg

    @property
    def neg_elbo(self) -> Tensor:
        """(B,) negative ELBO per frame (docs/model.md §4.8); the loss is its batch mean."""
        return -self.log_like + self.kl
