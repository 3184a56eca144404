"""Backfill (offline tracking, :class:`~scalor.tracking.trackers.BackfillTracker`): tracks that start late are
extended back along a backward pass's tracks.

A filtering tracker discovers an object when it first tells it apart: two sprites that overlap at the first
frame are often taken as one object, and the second is discovered only when they part. A track-only pass over
the frames in reverse order meets the pair apart first. Each forward track that starts after the first frame
is matched, at its first frame, to the backward track whose box overlaps its own most (mutual best, IoU >=
0.5); the forward track then takes that backward track's boxes for the frames before, back to where the
backward track ends or where its box copies (IoU >= ``copy_iou``) another forward track that was tracked
already when the late track started (a backward track that ran onto a neighbour). IDs stay the forward ones.

Tracks are held as rows: :class:`TrackTable` has one row per distinct track ID of the batch (no loops over
batch elements, objects or frames).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scalor.model.state import PRESENCE_THRESHOLD

COPY_IOU = 0.7  # a backward box with this IoU with a forward track tracked already is a copy (the extension stops)
MATCH_IOU = 0.5  # a late track and a backward track match at its first frame from this box IoU on (mutual best)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of broadcast (x1, y1, x2, y2) boxes (..., 4) -> (...); 0 where both are empty."""
    lt, rb = torch.maximum(a[..., :2], b[..., :2]), torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


@dataclass
class TrackTable:
    """Tracks of a batch, a row per distinct ID: ids (U,) the row's track ID (-1: no track), boxes (B, U, T, 4),
    presence (B, U, T) (0 where the row's track is not reported in that frame)."""

    ids: Tensor
    boxes: Tensor
    presence: Tensor

    @property
    def reported(self) -> Tensor:
        """(B, U, T) bool."""
        return self.presence > PRESENCE_THRESHOLD

    @staticmethod
    def from_slots(boxes: Tensor, ids: Tensor, presence: Tensor) -> "TrackTable":
        """From per-frame slots: boxes (B, T, N, 4), ids (B, T, N) (-1: padding), presence (B, T, N). Objects at
        or below the reporting threshold are left out."""
        b, t_len, n = ids.shape
        keep = (presence > PRESENCE_THRESHOLD) & (ids >= 0)
        row_ids, rows = torch.unique(torch.where(keep, ids, -1), return_inverse=True)  # rows (B, T, N)
        u = row_ids.numel()
        index = (rows * t_len + torch.arange(t_len, device=ids.device)[:, None]).flatten(1)  # (B, T*N)
        pres = presence.new_zeros(b, u * t_len).scatter_add(1, index, (presence * keep).flatten(1))
        box = boxes.new_zeros(b, u * t_len, 4).scatter_add(
            1, index[..., None].expand(-1, -1, 4), (boxes * keep[..., None]).flatten(1, 2))
        return TrackTable(row_ids, box.view(b, u, t_len, 4), pres.view(b, u, t_len))

    def to_slots(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per-frame slots, a slot per row: boxes (B, T, U, 4), ids (B, T, U) (-1 where not reported), presence
        (B, T, U)."""
        ids = torch.where(self.reported, self.ids[:, None], -1).transpose(1, 2)
        return self.boxes.transpose(1, 2), ids, self.presence.transpose(1, 2)

    def flip(self) -> "TrackTable":
        """The same tracks with time reversed."""
        return TrackTable(self.ids, self.boxes.flip(2), self.presence.flip(2))

    @staticmethod
    def choose(first: "TrackTable", second: "TrackTable", take_second: Tensor) -> "TrackTable":
        """Per batch element, the tracks of one of two tables of the same batch: take_second (B,) bool. The
        rows of both are kept (I + J rows), those of the table not taken unreported, so IDs never mix."""
        keep = torch.stack([~take_second, take_second])  # (2, B)
        presence = [table.presence * keep[k, :, None, None] for k, table in enumerate((first, second))]
        return TrackTable(torch.cat([first.ids, second.ids]), torch.cat([first.boxes, second.boxes], 1),
                          torch.cat(presence, 1))


def backfill(forward: TrackTable, backward: TrackTable, match_iou: float = MATCH_IOU,
             copy_iou: float = COPY_IOU) -> tuple[TrackTable, Tensor]:
    """Extend the forward tracks that start after frame 0 back along the backward pass's tracks (module doc).

    forward (B, I, T rows), backward (B, J, T rows; frames in forward order). Returns the extended forward table
    and the extended entries (B, I, T) bool."""
    pf, pb = forward.reported, backward.reported
    b, i_len, t_len = pf.shape
    j_len = pb.shape[1]
    if i_len == 0 or j_len == 0:
        return forward, torch.zeros_like(pf)
    frames = torch.arange(t_len, device=pf.device)
    start = torch.where(pf, frames, t_len).amin(-1)  # (B, I): first reported frame; T if never
    late = (start > 0) & (start < t_len)
    at = start.clamp(max=t_len - 1)

    # match each late track to a backward track at its first frame (mutual best box IoU >= match_iou)
    box0 = forward.boxes.gather(2, at[:, :, None, None].expand(-1, -1, 1, 4))  # (B, I, 1, 4)
    back0 = backward.boxes.transpose(1, 2).gather(1, at[:, :, None, None].expand(-1, -1, j_len, 4))  # (B, I, J, 4)
    on0 = pb.transpose(1, 2).gather(1, at[:, :, None].expand(-1, -1, j_len))  # (B, I, J)
    iou0 = torch.where(on0 & late[:, :, None], box_iou(box0, back0), torch.zeros_like(on0, dtype=box0.dtype))
    best_iou, best_j = iou0.max(2)  # (B, I)
    best_i = iou0.argmax(1)  # (B, J)
    matched = (best_i.gather(1, best_j) == torch.arange(i_len, device=pf.device)) & (best_iou >= match_iou)

    # the matched backward track's boxes, frame by frame (B, I, T, ·)
    cand_box = backward.boxes.gather(1, best_j[:, :, None, None].expand(-1, -1, t_len, 4))
    cand_pres = backward.presence.gather(1, best_j[:, :, None].expand(-1, -1, t_len))
    # copies: IoU >= copy_iou with another forward track reported then and at the late track's first frame
    tracked_then = pf.transpose(1, 2).gather(1, at[:, :, None].expand(-1, -1, i_len))  # (B, I, I')
    tracked_then = tracked_then & ~torch.eye(i_len, dtype=torch.bool, device=pf.device)
    others = tracked_then[..., None] & pf[:, None]  # (B, I, I', T)
    copy = ((box_iou(cand_box[:, :, None], forward.boxes[:, None]) >= copy_iou) & others).any(2)  # (B, I, T)

    before = frames < start[..., None]  # (B, I, T)
    usable = torch.where(before, (cand_pres > PRESENCE_THRESHOLD) & ~copy, torch.ones_like(before))
    unbroken = usable.flip(-1).cumprod(-1).flip(-1).bool()  # usable in every frame from t to the first frame
    extend = before & unbroken & matched[..., None]
    table = TrackTable(forward.ids, torch.where(extend[..., None], cand_box, forward.boxes),
                       torch.where(extend, cand_pres, forward.presence))
    return table, extend
