"""The one output contract every segmentation model in attnseg returns, in training and in evaluation.

Losses live outside the models: a criterion reads these fields by name (see `attnseg.losses.criterion`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils import _pytree as pytree


@dataclass
class SegmentationOutput:
    """Named outputs of a segmentation model.

    Attributes:
        logits: class scores at the input resolution, shape (N, K, H, W). For a multi-scale model this is
            the fused prediction (the "joint" prediction of hierarchical attention).
        aux_logits: auxiliary head scores at the input resolution (OCR soft object regions, PSANet's FCN
            head), or None for a model without one.
        scale_logits: per-scale class scores keyed by scale (e.g. ``{0.5: ..., 1.0: ...}``), each at the
            resolution of that scale's resized input, for deep supervision and for dumping.
        scale_attention: per-scale attention maps (N, 1, h, w) keyed by scale, values in (0, 1).
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor | None = None
    scale_logits: dict[float, torch.Tensor] = field(default_factory=dict)
    scale_attention: dict[float, torch.Tensor] = field(default_factory=dict)


# DistributedDataParallel and torch.export walk outputs as pytrees; registering the dataclass lets both see
# every tensor inside it (DDP needs that to find which parameters took part in the forward).
pytree.register_dataclass(SegmentationOutput)


def logits_of(output: torch.Tensor | SegmentationOutput) -> torch.Tensor:
    """The class scores of a network output, which may be a bare tensor or a `SegmentationOutput`."""
    return output.logits if isinstance(output, SegmentationOutput) else output
