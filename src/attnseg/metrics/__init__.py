"""Segmentation metrics: a device-side confusion matrix and the official Cityscapes benchmark scores.

`attnseg.metrics.cityscapes` (file-based benchmark scoring) is imported on its own; it is not needed for training.
"""

from attnseg.metrics.confusion import (
    ConfusionMatrix,
    SegmentationMetrics,
    format_class_table,
    format_eval_log,
    metrics_from_confusion,
    metrics_to_json,
    paddleseg_metrics,
)

__all__ = [
    "ConfusionMatrix",
    "SegmentationMetrics",
    "format_class_table",
    "format_eval_log",
    "metrics_from_confusion",
    "metrics_to_json",
    "paddleseg_metrics",
]
