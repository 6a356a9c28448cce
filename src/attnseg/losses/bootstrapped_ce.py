"""Hard-pixel-mining cross entropies: PaddleSeg's BootstrappedCrossEntropyLoss and OhemCrossEntropyLoss.

Both keep only the pixels the model gets most wrong. Both are written without a host synchronisation: the
reference's data-dependent branch is evaluated for both sides and selected with ``torch.where``.
"""

from __future__ import annotations

import torch
from torch import nn

from attnseg.losses._common import IGNORE_INDEX, check_shapes, class_weight_buffer, full_precision, pixel_cross_entropy


class BootstrappedCrossEntropyLoss(nn.Module):
    """PaddleSeg ``BootstrappedCrossEntropyLoss(min_K, loss_th)`` (the CityscapesSOTA recipe's CE).

    Per image, with the per-pixel losses sorted in decreasing order (ignored pixels have loss 0 and stay in the
    list): if the loss at position ``min_K`` (0-based, i.e. the (K+1)-th largest) exceeds ``loss_th``, the
    image loss is the mean of all pixel losses above ``loss_th``; otherwise it is the mean of the ``min_K``
    largest losses, which includes zero losses of ignored pixels when fewer than ``min_K`` pixels are valid.
    The result is the mean over images.

    ``min_K`` is an absolute pixel count: the config's 100000 was chosen for 2048x1024 crops (~5 % of them).
    An image with at most ``min_K`` pixels (where the reference fails with an index error) takes the mean of all
    its pixel losses.

    Args:
        min_K: number of hardest pixels kept at least.
        loss_th: pixel-loss threshold.
        weight: optional per-class weights (a pixel's loss is ``weight[y] * nll``).
        ignore_index: label value whose pixels have loss 0.
    """

    def __init__(
        self,
        min_K: int,  # noqa: N803 (PaddleSeg's config name)
        loss_th: float,
        weight: torch.Tensor | list[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if min_K < 1:
            raise ValueError(f"min_K must be >= 1, got {min_K}")
        self.min_K = int(min_K)
        self.loss_th = float(loss_th)
        self.ignore_index = ignore_index
        self.register_buffer("weight", class_weight_buffer(weight), persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of logits (N, K, H, W) against labels (N, H, W)."""
        check_shapes(logits, labels)
        with full_precision(logits):
            losses = pixel_cross_entropy(logits.float(), labels, self.weight, self.ignore_index).flatten(1)
            num_pixels = losses.shape[1]
            keep = min(self.min_K, num_pixels)
            top_k_mean = losses.topk(keep, dim=1).values.mean(dim=1)
            if self.min_K >= num_pixels:
                return top_k_mean.mean()
            above = losses > self.loss_th
            count_above = above.sum(dim=1)
            above_mean = (losses * above).sum(dim=1) / count_above.clamp_min(1)
            # sorted[min_K] > th  <=>  more than min_K losses exceed th
            per_image = torch.where(count_above > self.min_K, above_mean, top_k_mean)
            return per_image.mean()


class OhemCrossEntropyLoss(nn.Module):
    """PaddleSeg ``OhemCrossEntropyLoss`` (online hard example mining, as in mmseg's OHEM sampler).

    When more than ``min_kept`` pixels are valid, only pixels whose softmax probability of the true class is
    below a threshold are kept; the threshold is ``thresh``, raised to the ``min_kept``-th smallest true-class
    probability when that is larger (so at least about ``min_kept`` pixels survive; the comparison is strict,
    as in the reference). The loss is ``mean(loss * kept) / (mean(kept) + 1e-5)`` over all pixels of the batch.
    As in the reference, ``min_kept = 0`` turns mining off (every valid pixel is kept), it does not mean
    "threshold only".

    Args:
        thresh: probability threshold (0.7).
        min_kept: minimum number of pixels kept over the batch (10000).
        weight: optional per-class weights (a pixel's loss is ``weight[y] * nll``; not renormalised).
        ignore_index: label value whose pixels are never kept.
    """

    eps = 1e-5

    def __init__(
        self,
        thresh: float = 0.7,
        min_kept: int = 10000,
        weight: torch.Tensor | list[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if min_kept < 0:
            raise ValueError(f"min_kept must be >= 0, got {min_kept}")
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self.ignore_index = ignore_index
        self.register_buffer("weight", class_weight_buffer(weight), persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of logits (N, K, H, W) against labels (N, H, W)."""
        check_shapes(logits, labels)
        with full_precision(logits):
            logits = logits.float()
            valid = labels != self.ignore_index
            safe_labels = torch.where(valid, labels.long(), 0)
            kept = valid if self.min_kept == 0 else self._mined(logits, safe_labels, valid)
            losses = pixel_cross_entropy(logits, safe_labels, self.weight, self.ignore_index) * kept
            return losses.mean() / (kept.float().mean() + self.eps)

    @torch.no_grad()
    def _mined(self, logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Valid pixels kept by mining (called only with min_kept > 0: the reference mines only then)."""
        true_prob = logits.softmax(dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        true_prob = torch.where(valid, true_prob, 2.0).flatten()  # ignored pixels sort last
        kth = true_prob.kthvalue(min(true_prob.numel(), self.min_kept)).values
        threshold = torch.clamp_min(kth, self.thresh)
        mining = valid.sum() > self.min_kept
        return valid & ~(mining & (true_prob >= threshold).view_as(valid))
