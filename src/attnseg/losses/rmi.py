"""Region Mutual Information loss (Zhao et al., NeurIPS 2019), as used by NVIDIA's hierarchical multi-scale
attention recipes (``rmi_loss: true``): ``0.5 * sigmoid BCE + 0.5 * RMI lower bound``.

Each pixel is described by the 3x3 neighbourhood of its (pooled) one-hot label and of its (pooled) sigmoid
probabilities, two 9-dim vectors per class. RMI maximises a lower bound of their mutual information, i.e.
minimises ``0.5 * log det(Cov(Y) - Cov(Y, P) Cov(P)^-1 Cov(Y, P)^T)``, the log-volume of the label vectors
that the prediction vectors leave unexplained. The covariance algebra runs in float64 (the reference casts to
double there); the rest in float32 with autocast off.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.losses._common import IGNORE_INDEX, check_shapes, full_precision

# constants of the reference implementation
PROB_FLOOR = 1e-6  # added to the masked sigmoid probabilities
POSITIVE_DEFINITE_JITTER = 5e-4  # added to the covariance diagonals before inversion / Cholesky
LOG_DIAGONAL_EPS = 1e-8  # added to the Cholesky diagonal before the log

PoolMode = Literal["avg", "max", "interpolate"]


def region_vectors(maps: torch.Tensor, radius: int) -> torch.Tensor:
    """Stacks the ``radius x radius`` neighbourhood of every pixel: (N, C, H, W) -> (N, C, r*r, H', W').

    Only windows that fit entirely inside the map are used (H' = H - r + 1), row-major over the window.
    """
    height, width = maps.shape[-2:]
    out_h, out_w = height - radius + 1, width - radius + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"map {height}x{width} is smaller than the RMI region {radius}x{radius}")
    shifts = [maps[:, :, dy:dy + out_h, dx:dx + out_w] for dy in range(radius) for dx in range(radius)]
    return torch.stack(shifts, dim=2)


def log_det_cholesky(matrix: torch.Tensor) -> torch.Tensor:
    """log det of symmetric positive definite matrices (..., D, D) via Cholesky, as the reference does it."""
    chol = torch.linalg.cholesky(matrix)
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1) + LOG_DIAGONAL_EPS).sum(dim=-1)


class RMILoss(nn.Module):
    """NVIDIA ``RMILoss``: ``bce_weight * BCE + (1 - bce_weight) * RMI`` (or ``BCE + bce_weight * RMI``).

    BCE is the per-class sigmoid binary cross entropy against the one-hot labels, summed over valid pixels and
    classes and divided by (number of valid pixels + 1). RMI is the region mutual-information lower bound,
    computed on 4x4 average-pooled maps (stride 4, padding 2, padded zeros counted) with 3x3 regions, averaged
    over images and summed over classes (each divided by r*r). Ignored pixels have an all-zero one-hot label and
    zero probability.

    Args:
        num_classes: K.
        do_rmi: include the RMI part; False gives the BCE part alone (NVIDIA supervises the aux and per-scale
            outputs that way). ``forward(..., do_rmi=...)`` overrides it per call.
        radius: side of the square region (reference default 3).
        pool: "avg" (reference default), "max" or "interpolate" (nearest labels, align-corners bilinear probs).
        pool_size: pooling kernel = stride (reference default 4); 1 disables pooling.
        bce_weight: the lambda of the reference (0.5).
        combine_convex: True (reference ``lambda_way=1``): ``l * BCE + (1 - l) * RMI``; False:
            ``BCE + l * RMI``.
        ignore_index: label value (any value >= num_classes is treated as ignored, as in the reference).
        rmi_dtype: dtype of the covariance algebra (float64 as in the reference; float32 for devices without
            float64, at some precision cost).
    """

    def __init__(
        self,
        num_classes: int,
        do_rmi: bool = True,
        radius: int = 3,
        pool: PoolMode = "avg",
        pool_size: int = 4,
        bce_weight: float = 0.5,
        combine_convex: bool = True,
        ignore_index: int = IGNORE_INDEX,
        rmi_dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        if radius < 1:
            raise ValueError(f"radius must be >= 1, got {radius}")
        if pool not in ("avg", "max", "interpolate"):
            raise ValueError(f"pool must be 'avg', 'max' or 'interpolate', got {pool!r}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self.num_classes = num_classes
        self.do_rmi = do_rmi
        self.radius = radius
        self.pool = pool
        self.pool_size = pool_size
        self.bce_weight = bce_weight
        self.combine_convex = combine_convex
        self.ignore_index = ignore_index
        self.rmi_dtype = rmi_dtype

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, do_rmi: bool | None = None) -> torch.Tensor:
        """Loss of logits (N, K, H, W) against labels (N, H, W)."""
        check_shapes(logits, labels)
        do_rmi = self.do_rmi if do_rmi is None else do_rmi
        with full_precision(logits):
            logits = logits.float()
            labels = labels.long()
            valid = (labels >= 0) & (labels < self.num_classes)
            one_hot = F.one_hot(torch.where(valid, labels, 0), self.num_classes).permute(0, 3, 1, 2)
            valid_4d = valid.unsqueeze(1).to(logits.dtype)
            one_hot = one_hot.to(logits.dtype) * valid_4d

            bce_sum = F.binary_cross_entropy_with_logits(
                logits, one_hot, weight=valid_4d.expand_as(logits), reduction="sum"
            )
            bce = bce_sum / (valid_4d.sum() + 1.0)
            if not do_rmi:
                return bce

            probs = torch.sigmoid(logits) * valid_4d + PROB_FLOOR
            rmi = self.rmi_lower_bound(one_hot, probs)
            if self.combine_convex:
                return self.bce_weight * bce + (1.0 - self.bce_weight) * rmi
            return bce + self.bce_weight * rmi

    def _pooled(self, one_hot: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.pool_size
        if size == 1:
            return one_hot, probs
        if self.pool == "avg":
            return (F.avg_pool2d(one_hot, size, stride=size, padding=size // 2),
                    F.avg_pool2d(probs, size, stride=size, padding=size // 2))
        if self.pool == "max":
            return (F.max_pool2d(one_hot, size, stride=size, padding=size // 2),
                    F.max_pool2d(probs, size, stride=size, padding=size // 2))
        new_size = (one_hot.shape[-2] // size, one_hot.shape[-1] // size)
        return (F.interpolate(one_hot, size=new_size, mode="nearest"),
                F.interpolate(probs, size=new_size, mode="bilinear", align_corners=True))

    def rmi_lower_bound(self, one_hot: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """The RMI term from one-hot labels and probabilities, both (N, K, H, W) float32."""
        one_hot, probs = self._pooled(one_hot, probs)
        n, k = one_hot.shape[:2]
        dim = self.radius * self.radius
        label_vectors = region_vectors(one_hot, self.radius).reshape(n, k, dim, -1).to(self.rmi_dtype)
        prob_vectors = region_vectors(probs, self.radius).reshape(n, k, dim, -1).to(self.rmi_dtype)

        # covariances up to the 1/num_points factor (left out on purpose, as in the reference: avoids underflow)
        label_vectors = label_vectors - label_vectors.mean(dim=3, keepdim=True)
        prob_vectors = prob_vectors - prob_vectors.mean(dim=3, keepdim=True)
        label_cov = label_vectors @ label_vectors.transpose(2, 3)
        prob_cov = prob_vectors @ prob_vectors.transpose(2, 3)
        cross_cov = label_vectors @ prob_vectors.transpose(2, 3)

        jitter = POSITIVE_DEFINITE_JITTER * torch.eye(dim, dtype=self.rmi_dtype, device=probs.device)
        prob_cov_inv = torch.linalg.inv(prob_cov + jitter)
        residual_cov = label_cov - (cross_cov @ prob_cov_inv) @ cross_cov.transpose(-2, -1)
        rmi_per_image_class = 0.5 * log_det_cholesky(residual_cov + jitter)  # (N, K)

        rmi_per_class = rmi_per_image_class.mean(dim=0).float() / float(dim)
        return rmi_per_class.sum()
