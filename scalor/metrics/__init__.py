"""Evaluation metrics: tracking (MOTA, MOTP, IDF1, ...) and counting, as torchmetrics Metrics."""

from scalor.metrics.counting import CountingMetrics
from scalor.metrics.tracking import MOTMetrics

__all__ = ["CountingMetrics", "MOTMetrics"]
