"""The FCN classifier head used as PSANet's main classifier and as its auxiliary head on stage 3."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]


class ConvNormAct(nn.Sequential):
    """Conv (no bias) -> norm -> ReLU, with ``same`` padding for odd kernels. Keys: ``conv``, ``bn``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, norm_layer: NormLayer = nn.BatchNorm2d
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = norm_layer(out_channels)
        self.act = nn.ReLU(inplace=True)


class FCNHead(nn.Module):
    """3x3 conv-BN-ReLU, dropout, 1x1 classifier (PaddleSeg ``AuxLayer``, semseg ``cls``/``aux``).

    Args:
        in_channels: input feature channels.
        hidden_channels: width of the 3x3 conv (512 for PSANet's main head, 256 for its auxiliary head).
        num_classes: output channels.
        dropout: drop probability before the classifier.
        dropout_layer: ``nn.Dropout`` (element-wise, PaddleSeg) or ``nn.Dropout2d`` (channel-wise, semseg).
        norm_layer: normalization, called with a channel count.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        num_classes: int,
        dropout: float = 0.1,
        dropout_layer: type[nn.Module] = nn.Dropout2d,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, hidden_channels, 3, norm_layer)
        self.dropout = dropout_layer(dropout)
        self.classifier = nn.Conv2d(hidden_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))
