"""Segmentation models. Every registered name maps to a builder in `MODEL_BUILDERS`; `create_model` calls it.

Each family keeps a table of its variants' arguments beside its model (`HRNET_OCR_VARIANTS` in `mscale.model`,
`PSANET_VARIANTS` in `psanet`) and one create function per model class; its builders bind a variant name to it.

Model files import only torch and `attnseg.models`; nothing here reads configs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from attnseg.models.outputs import SegmentationOutput, logits_of
from attnseg.models.wrappers import FixedScales, default_scales, fuses_scales, unwrap_model

# name -> builder(num_classes=..., **kwargs). Filled by the model families below.
MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    return sorted(MODEL_BUILDERS)


def create_model(name: str, num_classes: int = 19, **kwargs) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: one of `list_models()`, e.g. ``"mscale_ocr_hrnet_w48"`` or ``"psanet_r50_vd"``.
        num_classes: number of output classes (19 for Cityscapes trainIds).
        **kwargs: keyword arguments of that model's builder (e.g. ``eval_scales`` for MscaleOCR).
    """
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}") from None
    return builder(num_classes=num_classes, **kwargs)


__all__ = [
    "MODEL_BUILDERS",
    "FixedScales",
    "SegmentationOutput",
    "create_model",
    "default_scales",
    "fuses_scales",
    "list_models",
    "logits_of",
    "unwrap_model",
]

# HRNet + OCR family (single-scale and hierarchical multi-scale attention).
from attnseg.models.mscale.model import MSCALE_MODEL_BUILDERS  # noqa: E402

MODEL_BUILDERS.update(MSCALE_MODEL_BUILDERS)

# PSANet family (ResNet + point-wise spatial attention).
from attnseg.models.psanet import PSANET_BUILDERS  # noqa: E402

MODEL_BUILDERS.update(PSANET_BUILDERS)
