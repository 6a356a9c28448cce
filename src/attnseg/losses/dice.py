"""Soft Dice losses of PaddleSeg: the 2.8 formula and the Feb-2021 formula of the CityscapesSOTA release.

Label mutation in the reference. PaddleSeg 2.8's ``DiceLoss.forward`` writes ``labels[labels == ignore] = 0``
into the caller's label tensor. CityscapesSOTA's ``loss_computation`` passes one label tensor to all eight
losses (Dice x4, then BootstrappedCE x4), so the first Dice call turns every ignored pixel into class 0 for
the seven losses after it: the other Dice terms and all BootstrappedCE terms then train "road" on the ignored
pixels. The golden ``train/loss_terms_as_run`` records that behaviour; ``train/loss_terms_fresh_labels`` the
intended one. :class:`DiceLoss` leaves the caller's labels alone unless ``overwrite_ignored_labels=True``,
which exists only to reproduce the as-run numbers (see ``paddle_cityscapes_sota_criterion``).

Which formula produced the published 87.0 mIoU: the CityscapesSOTA model was trained in Feb 2021 with the
PaddleSeg 2.0 Dice (:class:`LegacyDiceLoss`), which had no label mutation (it masked with a comparison).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.losses._common import IGNORE_INDEX, check_shapes, class_weight_buffer, full_precision


class DiceLoss(nn.Module):
    """PaddleSeg 2.8 ``DiceLoss``: per-image, per-class soft Dice with Laplace smoothing.

    For class c and image n over the non-ignored pixels: ``d = 1 - (2 * sum(p * y) + s) / (sum(p + y) + s + 1e-8)``
    with p the softmax probability and y the one-hot label; averaged over images, optionally multiplied by the
    class weight, then summed over classes and divided by K.

    Args:
        weight: optional per-class weights (length K).
        ignore_index: label value that takes no part in the loss.
        smooth: the Laplace smoothing s (1.0 in PaddleSeg).
        overwrite_ignored_labels: reproduce the reference's side effect of writing 0 into the caller's label
            tensor at ignored pixels (in place). Off by default; only for matching the CityscapesSOTA as-run
            loss, where later losses then see those pixels as class 0.
    """

    eps = 1e-8

    def __init__(
        self,
        weight: torch.Tensor | list[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
        smooth: float = 1.0,
        overwrite_ignored_labels: bool = False,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.overwrite_ignored_labels = overwrite_ignored_labels
        self.register_buffer("weight", class_weight_buffer(weight), persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of logits (N, K, H, W) against labels (N, H, W)."""
        check_shapes(logits, labels)
        num_classes = logits.shape[1]
        if self.weight is not None and self.weight.numel() != num_classes:
            raise ValueError(f"DiceLoss has {self.weight.numel()} class weights but logits have {num_classes} classes")
        with full_precision(logits):
            valid = labels != self.ignore_index
            safe_labels = torch.where(valid, labels.long(), 0)
            if self.overwrite_ignored_labels:
                labels[~valid] = 0
            mask = valid.unsqueeze(1).float()
            one_hot = F.one_hot(safe_labels, num_classes).permute(0, 3, 1, 2).float() * mask
            probs = F.softmax(logits.float(), dim=1) * mask

            intersection = (probs * one_hot).flatten(2).sum(dim=2)  # (N, K)
            cardinality = (probs + one_hot).flatten(2).sum(dim=2)
            per_class = 1.0 - (2.0 * intersection + self.smooth) / (cardinality + self.smooth + self.eps)
            per_class = per_class.mean(dim=0)
            if self.weight is not None:
                per_class = per_class * self.weight.to(per_class.device)
            return per_class.sum() / num_classes


class LegacyDiceLoss(nn.Module):
    """PaddleSeg 2.0 ``DiceLoss`` (the formula of the Feb-2021 CityscapesSOTA release that reached 87.0).

    Differences from :class:`DiceLoss`: the *logits* are zeroed at ignored pixels before the softmax, so those
    pixels contribute a uniform 1/K to every class's cardinality (not removed from it); the sums run over the
    whole batch (one Dice per class, not per image); no smoothing, ``eps = 1e-5``; the loss is
    ``1 - mean_c 2 * I_c / (C_c + eps)``.

    Args:
        ignore_index: label value whose pixels get a zero logit vector and no one-hot label.
    """

    eps = 1e-5

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of logits (N, K, H, W) against labels (N, H, W)."""
        check_shapes(logits, labels)
        num_classes = logits.shape[1]
        with full_precision(logits):
            valid = (labels != self.ignore_index).unsqueeze(1)
            probs = F.softmax(logits.float() * valid, dim=1)
            labels = labels.long()
            in_range = (labels >= 0) & (labels < num_classes)
            one_hot = F.one_hot(torch.where(in_range, labels, 0), num_classes).permute(0, 3, 1, 2).float()
            one_hot = one_hot * in_range.unsqueeze(1)
            intersection = (probs * one_hot).sum(dim=(0, 2, 3))
            cardinality = (probs + one_hot).sum(dim=(0, 2, 3))
            return 1.0 - (2.0 * intersection / (cardinality + self.eps)).mean()
