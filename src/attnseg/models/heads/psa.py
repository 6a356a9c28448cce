"""Point-wise spatial attention (PSA) module of PSANet (Zhao et al., ECCV 2018).

Per branch (collect and/or distribute): reduce the backbone feature to `mid_channels` with a 1x1 conv,
shrink the grid with ``(h - 1) // shrink + 1`` (bilinear, align_corners=True), predict a mask_h x mask_w
attention window per position (1x1 conv-BN-ReLU then 1x1 conv), scatter the windows into an (H*W, H, W) map
with `psa_mask` (over-complete) or use the prediction as that map directly (compact: mask = the grid), take a
softmax over all H*W entries of each position -- including the zeros outside the window, which keep
weight when the window does not cover the grid -- and aggregate the shrunk features with one batched matmul.
The branches are concatenated (collect first), projected back to `in_channels` (1x1 conv-BN-ReLU), upsampled
to the input grid (align_corners=True) and concatenated after the input: output channels = 2 * in_channels.

PSANet_paddle concatenates distribute before collect; its converter permutes the projection's input
channels instead of this module carrying a second order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.models.heads.fcn import ConvNormAct
from attnseg.models.ops.psamask import COLLECT, DISTRIBUTE, psa_mask

NormLayer = Callable[[int], nn.Module]

PSA_COLLECT, PSA_DISTRIBUTE, PSA_BIDIRECTIONAL = 0, 1, 2


def shrunk_size(size: int, shrink_factor: int) -> int:
    """Grid side after PSA's shrink: ``(size - 1) // shrink + 1`` (keeps the corner pixels, align_corners)."""
    return (size - 1) // shrink_factor + 1


class PointwiseSpatialAttention(nn.Module):
    """The PSA module.

    Args:
        in_channels: backbone feature channels (2048 for ResNet-50/101).
        mid_channels: reduced channels inside the module (512).
        psa_type: 0 collect, 1 distribute, 2 both (bi-direction).
        mask_size: (mask_h, mask_w) attention window, odd sides; for ``compact=True`` the (fixed) shrunk grid.
        shrink_factor: grid shrink before attention (1 = none).
        normalization_factor: divisor of the aggregated features; None means mask_h * mask_w.
        use_softmax: softmax over each position's H*W attention entries.
        compact: predict the (H*W) map directly instead of a window (semseg ``compact``; fixed input size).
        norm_layer: normalization, called with a channel count.
    """

    def __init__(
        self,
        in_channels: int = 2048,
        mid_channels: int = 512,
        psa_type: int = PSA_BIDIRECTIONAL,
        mask_size: tuple[int, int] = (59, 59),
        shrink_factor: int = 2,
        normalization_factor: float | None = 1.0,
        use_softmax: bool = True,
        compact: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if psa_type not in (PSA_COLLECT, PSA_DISTRIBUTE, PSA_BIDIRECTIONAL):
            raise ValueError(f"psa_type must be 0 (collect), 1 (distribute) or 2 (both), got {psa_type}")
        mask_h, mask_w = mask_size
        if not compact and (mask_h % 2 == 0 or mask_w % 2 == 0):
            raise ValueError(f"PSA mask sides must be odd, got {mask_h}x{mask_w}")
        self.psa_type = psa_type
        self.mask_size = (mask_h, mask_w)
        self.shrink_factor = shrink_factor
        self.normalization_factor = float(mask_h * mask_w if normalization_factor is None else normalization_factor)
        self.use_softmax = use_softmax
        self.compact = compact
        self.has_collect = psa_type in (PSA_COLLECT, PSA_BIDIRECTIONAL)
        self.has_distribute = psa_type in (PSA_DISTRIBUTE, PSA_BIDIRECTIONAL)
        for name, present in (("collect", self.has_collect), ("distribute", self.has_distribute)):
            if present:
                self.add_module(f"{name}_reduce", ConvNormAct(in_channels, mid_channels, 1, norm_layer))
                self.add_module(f"{name}_hidden", ConvNormAct(mid_channels, mid_channels, 1, norm_layer))
                self.add_module(f"{name}_logits", nn.Conv2d(mid_channels, mask_h * mask_w, 1, bias=False))
        branches = int(self.has_collect) + int(self.has_distribute)
        self.project = ConvNormAct(mid_channels * branches, in_channels, 1, norm_layer)

    def _shrink(self, x: torch.Tensor) -> torch.Tensor:
        if self.shrink_factor == 1:
            return x
        size = [shrunk_size(s, self.shrink_factor) for s in x.shape[-2:]]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)

    def attention_map(self, logits: torch.Tensor, mode: int) -> torch.Tensor:
        """(N, mask cells, H, W) window logits -> (N, H*W, H, W) attention, softmax-normalized over dim 1."""
        n, _, height, width = logits.shape
        if not self.compact:
            attention = psa_mask(logits, mode, self.mask_size)
        else:
            if (height, width) != self.mask_size:
                raise ValueError(f"compact PSA was built for a {self.mask_size} grid, got {height}x{width}")
            attention = logits
            if mode == DISTRIBUTE:
                attention = attention.reshape(n, height * width, height * width).transpose(1, 2)
                attention = attention.reshape(n, height * width, height, width)
        return attention.softmax(dim=1) if self.use_softmax else attention

    def _branch(self, x: torch.Tensor, name: str, mode: int) -> torch.Tensor:
        features = self._shrink(getattr(self, f"{name}_reduce")(x))
        logits = getattr(self, f"{name}_logits")(getattr(self, f"{name}_hidden")(features))
        attention = self.attention_map(logits, mode)
        n, channels, height, width = features.shape
        positions = height * width
        aggregated = torch.bmm(features.reshape(n, channels, positions), attention.reshape(n, positions, positions))
        return aggregated.reshape(n, channels, height, width) / self.normalization_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = []
        if self.has_collect:
            branches.append(self._branch(x, "collect", COLLECT))
        if self.has_distribute:
            branches.append(self._branch(x, "distribute", DISTRIBUTE))
        y = self.project(torch.cat(branches, dim=1))
        if y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([x, y], dim=1)
