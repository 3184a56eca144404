"""Evaluation metrics: tracking (MOTA, MOTP, IDF1, ...), counting and the error breakdown, as torchmetrics Metrics."""

from scalor.metrics.counting import CountingMetrics
from scalor.metrics.errors import ErrorBreakdown
from scalor.metrics.tracking import MOTMetrics

__all__ = ["CountingMetrics", "ErrorBreakdown", "MOTMetrics"]
