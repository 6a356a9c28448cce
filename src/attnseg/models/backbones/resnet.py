"""Dilated ResNet backbones with a deep 3-conv stem, in the two variants PSANet's references use.

- ``vd`` (PaddleSeg ``ResNet_vd``, "bag of tricks" ResNet-D): stem convs 32/32/64, and a shortcut that
  average-pools (2x2, ceil mode) before its stride-1 1x1 conv where a block downsamples.
- ``v1c`` (hszhao/semseg ``resnet50_v2``/deep_base): stem convs 64/64/128, shortcut = strided 1x1 conv.

Both put the stride on the 3x3 conv of a bottleneck and give every block of a dilated stage the stage's
dilation (padding = dilation). `stage_strides_and_dilations` turns an output stride into per-stage
(stride, dilation). `forward` returns the four stage outputs; `out_channels` and `strides` describe them.

Module names are ours (``stem.conv1``, ``layer3.0.conv2``, ``layer3.0.downsample.conv``...); the reference
layouts map onto them with `paddle_resnet_key` and `semseg_resnet_key`.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from attnseg.models.state_dicts import PADDLE_BN_LEAVES, add_missing_batches_tracked, as_tensor

NormLayer = Callable[[int], nn.Module]

STEM_REDUCTION = 4  # stride-2 conv + stride-2 max pool before the first stage
STAGE_BASE_STRIDES = (1, 2, 2, 2)


def stage_strides_and_dilations(output_stride: int) -> tuple[tuple[int, int], ...]:
    """Per-stage (stride, dilation) of a 4-stage ResNet so that its last stage sits at `output_stride`.

    A stage whose stride would take the feature map below 1/output_stride keeps stride 1 and multiplies the
    dilation by that stride instead: 32 -> no dilation, 16 -> stage 4 dilated 2, 8 -> stages 3/4 dilated 2/4.

    Args:
        output_stride: 8, 16 or 32.
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    reduction, dilation = STEM_REDUCTION, 1
    plan = []
    for stride in STAGE_BASE_STRIDES:
        if reduction * stride > output_stride:
            dilation *= stride
            stride = 1
        reduction *= stride
        plan.append((stride, dilation))
    return tuple(plan)


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    padding = dilation * (kernel_size - 1) // 2
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, bias=False)


def _shortcut(in_channels: int, out_channels: int, stride: int, avg_down: bool, norm_layer: NormLayer) -> nn.Module:
    if avg_down and stride > 1:
        # ResNet-D: pool first so the 1x1 conv sees every pixel (count_include_pad=False = Paddle's exclusive mode).
        layers = [
            ("pool", nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)),
            ("conv", _conv(in_channels, out_channels, 1)),
        ]
    else:
        layers = [("conv", _conv(in_channels, out_channels, 1, stride))]
    layers.append(("bn", norm_layer(out_channels)))
    return nn.Sequential(OrderedDict(layers))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation) -> 1x1 (x4 channels), residual add, ReLU."""

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, width, 1)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv(width, width, 3, stride, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = _conv(width, width * self.expansion, 1)
        self.bn3 = norm_layer(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class BasicBlock(nn.Module):
    """3x3 (stride, dilation) -> 3x3 (dilation), residual add, ReLU (ResNet-18/34, and the narrow test model)."""

    expansion = 1

    def __init__(
        self,
        in_channels: int,
        width: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, width, 3, stride, dilation)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv(width, width, 3, 1, dilation)
        self.bn2 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + shortcut)


class DeepStem(nn.Module):
    """Three 3x3 conv-BN-ReLU (the first with stride 2) and a 3x3 stride-2 max pool: 1/4 resolution."""

    def __init__(self, channels: Sequence[int], in_channels: int = 3, norm_layer: NormLayer = nn.BatchNorm2d) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = _conv(in_channels, c1, 3, stride=2)
        self.bn1 = norm_layer(c1)
        self.conv2 = _conv(c1, c2, 3)
        self.bn2 = norm_layer(c2)
        self.conv3 = _conv(c2, c3, 3)
        self.bn3 = norm_layer(c3)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.out_channels = c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        return self.pool(x)


class ResNet(nn.Module):
    """Deep-stem ResNet returning the outputs of its four stages.

    Args:
        block: `Bottleneck` or `BasicBlock`.
        depths: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        widths: inner width per stage (output channels are width * block.expansion).
        stem_channels: the three stem conv widths: (32, 32, 64) for ``vd``, (64, 64, 128) for ``v1c``.
        output_stride: 8, 16 or 32 (see `stage_strides_and_dilations`).
        avg_down: ResNet-D shortcut (avg-pool + 1x1) instead of a strided 1x1 conv.
        multi_grid: per-block dilation multipliers of the last stage (DeepLab's multi-grid); the references
            use none (all ones).
        norm_layer: called with a channel count; nn.BatchNorm2d by default (SyncBatchNorm is applied by the
            training entry point, not here).
        in_channels: image channels.

    Attributes:
        out_channels: channels of the four outputs.
        strides: resolution divisor of the four outputs.
    """

    def __init__(
        self,
        block: type[Bottleneck] | type[BasicBlock],
        depths: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_channels: Sequence[int] = (32, 32, 64),
        output_stride: int = 8,
        avg_down: bool = True,
        multi_grid: Sequence[int] | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(widths) != 4:
            raise ValueError(f"ResNet needs 4 stage depths and widths, got {depths} and {widths}")
        multi_grid = tuple(multi_grid) if multi_grid is not None else (1,) * depths[3]
        if len(multi_grid) != depths[3]:
            raise ValueError(f"multi_grid needs one entry per last-stage block ({depths[3]}), got {multi_grid}")
        self.stem = DeepStem(stem_channels, in_channels, norm_layer)
        channels, reduction = self.stem.out_channels, STEM_REDUCTION
        out_channels, strides = [], []
        for index, ((stride, dilation), depth, width) in enumerate(
            zip(stage_strides_and_dilations(output_stride), depths, widths)
        ):
            grid = multi_grid if index == 3 else (1,) * depth
            blocks = []
            for block_index in range(depth):
                block_stride = stride if block_index == 0 else 1
                downsample = None
                if block_index == 0 and (stride != 1 or channels != width * block.expansion):
                    downsample = _shortcut(channels, width * block.expansion, stride, avg_down, norm_layer)
                blocks.append(
                    block(channels, width, block_stride, dilation * grid[block_index], downsample, norm_layer)
                )
                channels = width * block.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            reduction *= stride
            out_channels.append(channels)
            strides.append(reduction)
        self.out_channels: tuple[int, ...] = tuple(out_channels)
        self.strides: tuple[int, ...] = tuple(strides)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


RESNET_LAYOUTS: dict[int, tuple[type[Bottleneck] | type[BasicBlock], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def resnet_vd(depth: int = 50, **kwargs) -> ResNet:
    """PaddleSeg ``ResNet{depth}_vd``: stem 32/32/64, average-pool shortcuts. kwargs go to `ResNet`."""
    block, depths = RESNET_LAYOUTS[depth]
    return ResNet(block, depths, stem_channels=(32, 32, 64), avg_down=True, **kwargs)


def resnet_v1c(depth: int = 50, **kwargs) -> ResNet:
    """semseg's deep-base ResNet (``resnet50_v2``): stem 64/64/128, strided 1x1 conv shortcuts."""
    block, depths = RESNET_LAYOUTS[depth]
    return ResNet(block, depths, stem_channels=(64, 64, 128), avg_down=False, **kwargs)


# --------------------------------------------------------------------------------------------------------
# Reference layouts -> ours
# --------------------------------------------------------------------------------------------------------
_PADDLE_STEM = re.compile(r"conv1_(\d)\.(_conv|_batch_norm)\.(\w+)$")
_PADDLE_BLOCK = re.compile(r"bb_(\d+)_(\d+)\.(conv\d|short)\.(_conv|_batch_norm)\.(\w+)$")
_SEMSEG_STEM = re.compile(r"(conv|bn)(\d)\.(\w+)$")
_SEMSEG_DOWNSAMPLE = re.compile(r"(layer\d\.\d+)\.downsample\.([01])\.(\w+)$")


def _paddle_leaf(kind: str, leaf: str, key: str) -> str:
    if kind == "_conv":
        if leaf != "weight":
            raise KeyError(f"unexpected Paddle conv parameter {key!r}")
        return "weight"
    if leaf not in PADDLE_BN_LEAVES:
        raise KeyError(f"unexpected Paddle batch-norm parameter {key!r}")
    return PADDLE_BN_LEAVES[leaf]


def paddle_resnet_key(key: str) -> str:
    """Map one PaddleSeg ``ResNet_vd`` key (no ``backbone.`` prefix) to our `ResNet` key.

    ``conv1_2._batch_norm._mean`` -> ``stem.bn2.running_mean``;
    ``bb_2_0.conv1._conv.weight`` -> ``layer3.0.conv2.weight`` (Paddle counts block convs from 0);
    ``bb_1_0.short._batch_norm.weight`` -> ``layer2.0.downsample.bn.weight``.
    """
    if match := _PADDLE_STEM.match(key):
        index, kind, leaf = match.groups()
        module = f"stem.conv{index}" if kind == "_conv" else f"stem.bn{index}"
        return f"{module}.{_paddle_leaf(kind, leaf, key)}"
    if match := _PADDLE_BLOCK.match(key):
        stage, block, conv, kind, leaf = match.groups()
        prefix = f"layer{int(stage) + 1}.{block}"
        if conv == "short":
            module = f"{prefix}.downsample.{'conv' if kind == '_conv' else 'bn'}"
        else:
            number = int(conv[4:]) + 1
            module = f"{prefix}.{'conv' if kind == '_conv' else 'bn'}{number}"
        return f"{module}.{_paddle_leaf(kind, leaf, key)}"
    raise KeyError(f"not a PaddleSeg ResNet_vd key: {key!r}")


def semseg_resnet_key(key: str) -> str:
    """Map one semseg ImageNet ResNet key (``resnet50_v2.pth`` layout) to our `ResNet` key.

    ``conv2.weight`` -> ``stem.conv2.weight``; ``layer1.0.downsample.1.running_var`` ->
    ``layer1.0.downsample.bn.running_var``; block keys (``layer3.5.bn2.weight``) are unchanged.
    """
    if match := _SEMSEG_STEM.match(key):
        kind, index, leaf = match.groups()
        return f"stem.{kind}{index}.{leaf}"
    if match := _SEMSEG_DOWNSAMPLE.match(key):
        block, index, leaf = match.groups()
        return f"{block}.downsample.{'conv' if index == '0' else 'bn'}.{leaf}"
    if re.match(r"layer\d\.\d+\.(conv|bn)\d\.\w+$", key):
        return key
    raise KeyError(f"not a semseg ResNet key: {key!r}")


_CLASSIFIER_PREFIXES = ("fc.", "fc_0.", "out.")


def convert_paddle_resnet_backbone(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """PaddleSeg/PaddleClas ``ResNet*_vd`` ImageNet weights (``.pdparams`` as a dict of arrays) -> `resnet_vd` keys.

    Keys may carry a ``backbone.`` prefix; the ImageNet classifier (``fc``/``out``) is dropped. Any other key
    that is not a backbone key raises KeyError. Load the result with ``strict=True`` into `resnet_vd(depth)`.
    """
    state = {}
    for key, value in state_dict.items():
        key = key.removeprefix("backbone.")
        if key.startswith(_CLASSIFIER_PREFIXES):
            continue
        state[paddle_resnet_key(key)] = as_tensor(value)
    return add_missing_batches_tracked(state)


def convert_semseg_resnet_backbone(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """semseg's ImageNet ``resnet50_v2.pth``/``resnet101_v2.pth`` -> `resnet_v1c` keys (``fc`` dropped)."""
    state = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("fc."):
            continue
        state[semseg_resnet_key(key)] = as_tensor(value)
    return add_missing_batches_tracked(state)
