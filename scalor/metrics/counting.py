"""Object-counting metrics as a ``torchmetrics.Metric`` with sum states (exact under DDP)."""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["CountingMetrics"]


class CountingMetrics(Metric):
    """Per-frame exact-count accuracy and mean absolute count error.

    ``update(pred_counts, gt_counts)``: (B, T) each (any equal shapes work; every element is one frame).
    Predicted counts may be fractional (e.g. a sum of presences): ``count_acc`` compares them rounded to
    the nearest integer, ``count_mae`` uses them as given. ``compute()`` returns 0-d float32 tensors
    ``count_acc`` and ``count_mae`` (NaN before any frame was seen) and ``num_frames``.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("num_frames", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("num_exact", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("abs_error", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred_counts: torch.Tensor, gt_counts: torch.Tensor) -> None:
        """Add frames: pred_counts (B, T), gt_counts (B, T)."""
        pred = torch.as_tensor(pred_counts).detach().to(self.abs_error.device, torch.float64)
        gt = torch.as_tensor(gt_counts).detach().to(self.abs_error.device, torch.float64)
        if pred.shape != gt.shape:
            raise ValueError(
                f"pred_counts has shape {tuple(pred.shape)} but gt_counts {tuple(gt.shape)}; they must agree."
            )
        self.num_frames += gt.numel()
        self.num_exact += (torch.round(pred) == gt).sum()
        self.abs_error += (pred - gt).abs().sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """Return {count_acc, count_mae, num_frames} as 0-d float32 tensors."""
        n = self.num_frames.to(torch.float64)
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=n.device)
        acc = torch.where(n > 0, self.num_exact / n.clamp(min=1), nan)
        mae = torch.where(n > 0, self.abs_error / n.clamp(min=1), nan)
        return {"count_acc": acc.float(), "count_mae": mae.float(), "num_frames": n.float()}
