"""Class probabilities and confidence maps of fused scores, and their 8-bit encoding.

Confidence is the top class probability of a pixel after the recipe's scale / flip / window fusion: the fused
probabilities themselves for ``fusion="softmax"``, the softmax of the fused logits otherwise (a single pass and
sliding windows give logits). One encoding, ``round(255 * p)`` as uint8, is shared by every map written in [0, 1]:
`attnseg predict --confidence`, `attnseg eval --dump` (``confidence/``, ``scales/*_attn_*``) and the ``_prob.png``
files of `attnseg autolabel` (the format of NVIDIA's released auto-labels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def probabilities_of(scores: torch.Tensor, are_probabilities: bool) -> torch.Tensor:
    """(N, K, H, W) float32 class probabilities of fused `scores` (softmax over K unless they already are)."""
    scores = scores.float()
    return scores if are_probabilities else torch.softmax(scores, dim=1)


def confidence_of(scores: torch.Tensor, are_probabilities: bool, size: Sequence[int] | None = None) -> torch.Tensor:
    """(N, H, W) float32 top class probability of fused `scores`.

    Args:
        scores: (N, K, h, w) fused scores (`attnseg.inference.evaluate.BatchScores.scores`).
        are_probabilities: whether `scores` are probabilities already.
        size: (H, W) to resize the probabilities to first (bilinear, as `scores_to_labels` resizes the scores for
            the labels), or None.
    """
    if not are_probabilities and (size is None or tuple(scores.shape[-2:]) == tuple(size)):
        return _top_softmax(scores.float())
    probabilities = probabilities_of(scores, are_probabilities)
    if size is not None and tuple(probabilities.shape[-2:]) != tuple(size):
        probabilities = F.interpolate(probabilities, size=tuple(size), mode="bilinear", align_corners=False)
    return probabilities.amax(dim=1)


_ROWS_PER_BLOCK = 16


def _top_softmax(logits: torch.Tensor) -> torch.Tensor:
    """(N, H, W) max softmax of (N, K, H, W) float32 logits, as ``1 / sum_k exp(l_k - max_l)``.

    Computed 16 rows at a time in one reused buffer: the (N, K, H, W) temporary of the whole-map expression (160 MB
    for 19 x 1024 x 2048) costs its page faults and two trips through memory; by blocks the work stays in cache
    (182 -> 107 ms at that size, 2 threads), with the same result to the last bit. The maximum is ``amax``:
    ``max(dim=1)`` also finds the indices, which took two thirds of the time (107 -> 33 ms).
    """
    batch, classes, height, width = logits.shape
    confidence = torch.empty(batch, height, width, dtype=logits.dtype, device=logits.device)
    buffer = torch.empty(batch, classes, min(_ROWS_PER_BLOCK, height), width, dtype=logits.dtype, device=logits.device)
    for row in range(0, height, _ROWS_PER_BLOCK):
        block = logits[:, :, row : row + _ROWS_PER_BLOCK]
        shifted = buffer[:, :, : block.shape[2]]
        torch.sub(block, block.amax(dim=1, keepdim=True), out=shifted).exp_()
        torch.sum(shifted, dim=1, out=confidence[:, row : row + _ROWS_PER_BLOCK]).reciprocal_()
    return confidence


def unit_to_uint8(values: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 ``round(255 * v)`` of values in [0, 1] (clipped first): confidence and attention PNGs."""
    if torch.is_tensor(values):
        values = values.detach().float().cpu().numpy()
    return np.clip(np.rint(np.asarray(values, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def log_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is `probabilities` (their log, floored at the smallest normal float32).

    An exported graph that outputs softmax is turned into logits this way, so scale / flip / window fusion and
    confidence treat it like any other model instead of taking the softmax of probabilities.
    """
    return torch.log(probabilities.float().clamp_min(torch.finfo(torch.float32).tiny))
