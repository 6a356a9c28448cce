"""Model-agnostic test-time augmentation: average predictions over input scales and a horizontal flip.

This works for any callable that maps normalised images to logits; it knows nothing about MscaleOCR. MscaleOCR's
*hierarchical* fusion is a different thing that happens inside the model (``model(images, scales=...)``); the two
compose: the reference Cityscapes recipes run the model in 3- or 5-scale hierarchical mode and add the flip here.

How the passes are fused differs between the references, and both are offered:

- ``fusion="softmax"``: mean of the softmax probabilities of all passes. PaddleSeg's ``aug_inference`` up to
  2.7 summed softmax probabilities (same argmax as the mean); the published 86.99 / 87.00 mIoU used it.
- ``fusion="logits"``: mean of the logits. NVIDIA's ``eval_minibatch`` and PaddleSeg 2.8 do this.

Every pass's logits are brought back to the input orientation and size (bilinear, align_corners=False) and added
to one running sum, so memory does not grow with the number of passes.

Every scale resizes the original image. (PaddleSeg's ``aug_inference`` resizes the previous scale's already
resized image instead, a quirk that blurs later scales slightly; it does not matter for the published recipes,
which run at scale 1.0 there and put the scales inside the model.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from attnseg.inference.scales import Rounding, rounded_size
from attnseg.models.outputs import SegmentationOutput, logits_of

Fusion = Literal["softmax", "logits"]
LogitsFn = Callable[[torch.Tensor], "torch.Tensor | SegmentationOutput"]


@dataclass
class TTAResult:
    """Fused scores and the raw output of the reference pass (scale 1.0 if present, not flipped).

    Attributes:
        scores: (N, K, H, W) float32 at the input size: mean probabilities (``fusion="softmax"``) or mean logits.
        reference_output: what `fn` returned for the reference pass (keeps MscaleOCR's per-scale maps for dumps).
        num_passes: forward passes that were fused.
    """

    scores: torch.Tensor
    reference_output: torch.Tensor | SegmentationOutput
    num_passes: int


def tta_passes(scales: Sequence[float], flip: bool) -> list[tuple[float, bool]]:
    """The (scale, flipped) passes in the order they run; the unflipped pass of each scale comes first."""
    if not scales:
        raise ValueError("at least one scale is needed")
    return [(float(scale), flipped) for scale in scales for flipped in ((False, True) if flip else (False,))]


def tta_inference_with_output(
    fn: LogitsFn,
    image: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    fusion: Fusion = "softmax",
    rounding: Rounding = "half_up",
) -> TTAResult:
    """Like `tta_inference`, also returning the reference pass's raw output."""
    if fusion not in ("softmax", "logits"):
        raise ValueError(f"fusion must be 'softmax' or 'logits', got {fusion!r}")
    height, width = image.shape[-2:]
    passes = tta_passes(scales, flip)
    reference_scale = 1.0 if any(scale == 1.0 for scale, _ in passes) else passes[0][0]
    total = None
    reference_output = None
    resized = image
    for scale, flipped in passes:
        if not flipped:  # the flipped pass of a scale reuses that scale's resized image
            size = rounded_size(height, width, scale, rounding)
            resized = image if size == (height, width) else _resize(image, size)
        output = fn(torch.flip(resized, dims=(3,)) if flipped else resized)
        if reference_output is None and scale == reference_scale and not flipped:
            reference_output = output
        logits = logits_of(output).float()
        if flipped:
            logits = torch.flip(logits, dims=(3,))
        if logits.shape[-2:] != (height, width):
            logits = _resize(logits, (height, width))
        contribution = torch.softmax(logits, dim=1) if fusion == "softmax" else logits
        # The first contribution may be the model's own output tensor: accumulate into a copy, never into it.
        total = contribution.clone() if total is None else total.add_(contribution)
    assert total is not None and reference_output is not None
    if len(passes) > 1:
        total = total.div_(len(passes))
    return TTAResult(scores=total, reference_output=reference_output, num_passes=len(passes))


def tta_inference(
    fn: LogitsFn,
    image: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    fusion: Fusion = "softmax",
    rounding: Rounding = "half_up",
) -> torch.Tensor:
    """Scores of `image` averaged over resized and horizontally flipped copies.

    Args:
        fn: maps (N, C, h, w) normalised images to (N, K, h', w') logits (tensor or `SegmentationOutput`); outputs
            of another size are resized to the input size bilinearly.
        image: (N, C, H, W) normalised images.
        scales: resize factors of the input; 1.0 is the input itself.
        flip: add a horizontally flipped pass for every scale (flipped back before fusing).
        fusion: ``"softmax"`` = mean of probabilities, ``"logits"`` = mean of logits (see the module docstring).
        rounding: how a resized side is rounded (`attnseg.inference.scales.rounded_length`).

    Returns:
        (N, K, H, W) float32 fused scores; argmax over dim 1 gives the prediction.
    """
    return tta_inference_with_output(fn, image, scales=scales, flip=flip, fusion=fusion, rounding=rounding).scores


def _resize(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
