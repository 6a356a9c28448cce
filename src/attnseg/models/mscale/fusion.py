"""Hierarchical multi-scale attention fusion (Tao et al., arXiv 2005.10821), as NVIDIA/semantic-segmentation
computes it (`MscaleOCR.nscale_forward` and `two_scale_forward`).

The functions here take any per-scale forward `image -> (logits, aux_logits, attention)` whose outputs are
already at the size of the image it was given, so the combination logic is testable without a network.

Semantics pinned down by the reference (and its golden data):

- Images are resized by `scale` with bilinear interpolation, align_corners=False and the output size
  `floor(side * scale)` (`recompute_scale_factor=True`), e.g. 67x131 at 0.5 -> 33x65. Samples are taken at the
  ratio input/output size (67/33 rows apart). PaddleSeg's port passes ``scale_factor`` without recomputing:
  same output size, samples 1/scale apart; ``recompute_scale_factor=False`` reproduces it. The two agree
  whenever ``side * scale`` is an integer.
- Scales are processed from the largest to the smallest. The largest scale's prediction starts the fusion; its
  attention is not used. For every further scale s with attention a_s (a sigmoid map from that scale's forward):
  - s >= 1.0: the running prediction is resized (down) to this scale's size, then
    `p = a_s * p_s + (1 - a_s) * p`;
  - s < 1.0: attention is applied at the low resolution, then the product and the attention are resized (up) to
    the running prediction's size: `p = up(a_s * p_s) + (1 - up(a_s)) * p`.
  The aux (soft object region) logits are fused with the same attention, in the same way.
  1.0 must be among the scales, so the result is at the input size whenever the largest scale is >= 1.0.
- Training combines two scales, the low one first (this order is visible in BatchNorm running statistics):
  `joint = up(a_lo * p_lo) + (1 - up(a_lo)) * p_1x`, same for aux; this is numerically the n-scale rule for
  `[low, 1.0]`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F


class ScaleOutputs(NamedTuple):
    """Outputs of the network at one scale, each at the size of that scale's input image."""

    logits: torch.Tensor
    aux_logits: torch.Tensor | None
    attention: torch.Tensor


# A per-scale forward may return ScaleOutputs, any (logits, aux, attention) tuple, or the reference's dict with
# keys cls_out / aux_out / logit_attn.
ScaleForward = Callable[[torch.Tensor], ScaleOutputs | tuple | Mapping[str, torch.Tensor]]


@dataclass
class FusedOutputs:
    """Result of a multi-scale fusion.

    Attributes:
        logits: fused class logits at the 1.0-scale (input) size.
        aux_logits: fused aux logits (None when the per-scale forward has no aux output).
        scale_logits: per-scale class logits, each at its scale's image size (empty unless kept).
        scale_attention: attention maps that took part in the fusion, at their scale's image size.
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor | None
    scale_logits: dict[float, torch.Tensor] = field(default_factory=dict)
    scale_attention: dict[float, torch.Tensor] = field(default_factory=dict)


def interpolate_size(size: Sequence[int], scale: float) -> tuple[int, ...]:
    """Size of an image resized by `scale` the way ``F.interpolate(scale_factor=scale)`` sizes it: the floor of each
    side times the scale (the reference's ResizeX); may be 0 for a tiny side."""
    return tuple(math.floor(float(side) * scale) for side in size)


def resize_by_scale(images: torch.Tensor, scale: float, recompute_scale_factor: bool = True) -> torch.Tensor:
    """Bilinear resize by a factor, output size `interpolate_size(images.shape[-2:], scale)`; identity at 1.0.

    Args:
        images: (N, C, H, W).
        scale: the resize factor.
        recompute_scale_factor: True samples the input at the ratio of input to output size (NVIDIA); False at
            1 / scale (PaddleSeg). Different only where ``side * scale`` is not an integer.
    """
    if scale == 1.0:
        return images  # bilinear resizing to the same size is an exact copy
    # scale_factor (rather than a size) keeps the size arithmetic traceable for export with dynamic shapes.
    return F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False,
                         recompute_scale_factor=recompute_scale_factor)


def resize_as(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of `x` to the spatial size of `reference`."""
    return F.interpolate(x, size=reference.shape[-2:], mode="bilinear", align_corners=False)


def _as_scale_outputs(result: ScaleOutputs | tuple | Mapping[str, torch.Tensor]) -> ScaleOutputs:
    if isinstance(result, Mapping):
        return ScaleOutputs(result["cls_out"], result.get("aux_out"), result["logit_attn"])
    logits, aux_logits, attention = result
    return ScaleOutputs(logits, aux_logits, attention)


def _check_scales(scales: Sequence[float]) -> list[float]:
    if 1.0 not in scales:
        raise ValueError(f"scales {list(scales)} must contain 1.0, the scale the fused prediction is made at")
    if any(s <= 0 for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"scales {list(scales)} must be distinct and positive")
    return sorted((float(s) for s in scales), reverse=True)


def hierarchical_fusion(
    scale_forward: ScaleForward,
    images: torch.Tensor,
    scales: Sequence[float],
    keep_scale_outputs: bool = True,
    recompute_scale_factor: bool = True,
) -> FusedOutputs:
    """Fuse predictions over `scales` with the learned attention, one scale after another.

    Only the running fused maps and the current scale's outputs are alive at any time, so peak memory is that
    of the largest scale's forward plus a few logit maps.

    Args:
        scale_forward: image at one scale -> ScaleOutputs (or tuple / reference dict) at that image's size.
        images: (N, 3, H, W) input at scale 1.0.
        scales: scales to evaluate, containing 1.0, in any order (e.g. ``(0.5, 1.0, 2.0)``).
        keep_scale_outputs: also return every scale's logits (for dumping). The attention maps that entered the
            fusion are always returned (they have one channel).
        recompute_scale_factor: how images are resized to each scale (see `resize_by_scale`).

    Returns:
        FusedOutputs; with ``scales == [1.0]`` the logits are exactly the plain single-scale forward.
    """
    ordered = _check_scales(scales)
    fused: torch.Tensor | None = None
    fused_aux: torch.Tensor | None = None
    result = FusedOutputs(logits=images.new_empty(0), aux_logits=None)
    for scale in ordered:
        scaled = resize_by_scale(images, scale, recompute_scale_factor)
        logits, aux_logits, attention = _as_scale_outputs(scale_forward(scaled))
        if keep_scale_outputs:
            result.scale_logits[scale] = logits
        if fused is None:
            # The largest scale starts the fusion; its attention has nothing to weigh against.
            fused, fused_aux = logits, aux_logits
            continue
        result.scale_attention[scale] = attention
        if scale >= 1.0:
            fused = resize_as(fused, logits)
            fused = attention * logits + (1 - attention) * fused
            if aux_logits is not None:
                fused_aux = resize_as(fused_aux, logits)
                fused_aux = attention * aux_logits + (1 - attention) * fused_aux
        else:
            weighted = resize_as(attention * logits, fused)
            weighted_aux = None if aux_logits is None else resize_as(attention * aux_logits, fused)
            attention = resize_as(attention, fused)
            fused = weighted + (1 - attention) * fused
            if weighted_aux is not None:
                fused_aux = weighted_aux + (1 - attention) * fused_aux
        del logits, aux_logits, attention
    result.logits, result.aux_logits = fused, fused_aux
    return result


def two_scale_fusion(
    scale_forward: ScaleForward, images: torch.Tensor, low_scale: float = 0.5, recompute_scale_factor: bool = True
) -> FusedOutputs:
    """The reference's training-time combination of a low scale with scale 1.0.

    The low scale is run first, then 1.0 (as the reference does; BatchNorm running statistics see that order).
    The 1.0 image is used as given (not resized). Per-scale logits are returned at their own sizes: the
    reference's supervised multi-scale loss upsamples the low-scale logits bilinearly (align_corners=False) to
    the 1.0 size before comparing them with the labels, so a criterion must do the same.

    Args:
        scale_forward: image at one scale -> ScaleOutputs (or tuple / reference dict) at that image's size.
        images: (N, 3, H, W) input at scale 1.0.
        low_scale: the lower scale, < 1.0 (``MSCALE_LO_SCALE`` of the reference, 0.5).
        recompute_scale_factor: how the image is resized to `low_scale` (see `resize_by_scale`).

    Returns:
        FusedOutputs with joint logits/aux, ``scale_logits = {low_scale: p_lo, 1.0: p_1x}`` and
        ``scale_attention = {low_scale: a_lo}``.
    """
    if not 0.0 < low_scale < 1.0:
        raise ValueError(f"low_scale must be in (0, 1), got {low_scale}")
    low_images = resize_by_scale(images, low_scale, recompute_scale_factor)
    low_logits, low_aux, low_attention = _as_scale_outputs(scale_forward(low_images))
    high_logits, high_aux, _ = _as_scale_outputs(scale_forward(images))
    attention = resize_as(low_attention, high_logits)
    joint = resize_as(low_attention * low_logits, high_logits) + (1 - attention) * high_logits
    joint_aux = None
    if low_aux is not None and high_aux is not None:
        joint_aux = resize_as(low_attention * low_aux, high_logits) + (1 - attention) * high_aux
    return FusedOutputs(
        logits=joint,
        aux_logits=joint_aux,
        scale_logits={float(low_scale): low_logits, 1.0: high_logits},
        scale_attention={float(low_scale): low_attention},
    )
