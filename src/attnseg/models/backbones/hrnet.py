"""HRNetV2 backbone (Wang et al., "Deep High-Resolution Representation Learning", arXiv 1908.07919).

Four parallel branches at strides 4, 8, 16 and 32 exchange information after every module. Module and
parameter names follow the NVIDIA/semantic-segmentation (and HRNet-Semantic-Segmentation) checkpoints
(`conv1`, `layer1.0.conv1`, `transition1.0.0`, `stage2.0.branches.0.0.conv1`, `stage2.0.fuse_layers.0.1.0`, ...),
so their weights load after stripping the `module.`/`backbone.` prefixes.

Layout: blocks, then the stage module, then the network, then the width configurations, then the converter of
the ImageNet classification checkpoint at the bottom.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.models.checkpointing import checkpointed
from attnseg.models.state_dicts import as_tensor

NormLayer = Callable[[int], nn.Module]

# Stride of branch i is 4 * 2**i: the stem halves twice, each new branch halves again.
BRANCH_STRIDES: tuple[int, ...] = (4, 8, 16, 32)


def _upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # The NVIDIA variant upsamples bilinearly (align_corners=False) where the original HRNet used nearest.
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18 style)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, norm_layer: NormLayer, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = norm_layer(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = norm_layer(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) with a residual connection (ResNet-50 style)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, norm_layer: NormLayer, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = norm_layer(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = norm_layer(channels)
        self.conv3 = nn.Conv2d(channels, channels * self.expansion, 1, bias=False)
        self.bn3 = norm_layer(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCK_TYPES: dict[str, type[BasicBlock] | type[Bottleneck]] = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}


def make_residual_layer(
    block: type[BasicBlock] | type[Bottleneck], in_channels: int, channels: int, num_blocks: int, norm_layer: NormLayer
) -> nn.Sequential:
    """`num_blocks` blocks; the first gets a 1x1 projection when the channel count changes."""
    out_channels = channels * block.expansion
    downsample = None
    if in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), norm_layer(out_channels))
    blocks = [block(in_channels, channels, norm_layer, downsample)]
    blocks += [block(out_channels, channels, norm_layer) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, norm_layer: NormLayer, relu: bool):
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False), norm_layer(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """One exchange unit: residual blocks per branch, then every branch receives the sum of all branches.

    Branch j reaches branch i through a 1x1 conv + BN + bilinear upsampling when j is coarser (j > i), and through
    i - j strided 3x3 convs when j is finer (only the last conv changes channels and has no ReLU).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: Sequence[int],
        in_channels: Sequence[int],
        channels: Sequence[int],
        norm_layer: NormLayer,
    ):
        super().__init__()
        if not len(num_blocks) == len(in_channels) == len(channels):
            raise ValueError(f"branch counts differ: blocks {num_blocks}, in {in_channels}, channels {channels}")
        self.num_branches = len(channels)
        self.branches = nn.ModuleList(
            make_residual_layer(block, cin, c, n, norm_layer) for cin, c, n in zip(in_channels, channels, num_blocks)
        )
        self.out_channels = [c * block.expansion for c in channels]
        self.fuse_layers = self._make_fuse_layers(self.out_channels, norm_layer) if self.num_branches > 1 else None
        self.relu = nn.ReLU(inplace=True)

    @staticmethod
    def _make_fuse_layers(channels: Sequence[int], norm_layer: NormLayer) -> nn.ModuleList:
        rows = []
        for i, c_i in enumerate(channels):
            row = []
            for j, c_j in enumerate(channels):
                if j > i:
                    row.append(_conv_bn(c_j, c_i, 1, 1, norm_layer, relu=False))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = [_conv_bn(c_j, c_j, 3, 2, norm_layer, relu=True) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(c_j, c_i, 3, 2, norm_layer, relu=False))
                    row.append(nn.Sequential(*steps))
            rows.append(nn.ModuleList(row))
        return nn.ModuleList(rows)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if self.fuse_layers is None:
            return xs
        fused = []
        for i, row in enumerate(self.fuse_layers):
            # Summation order (branch 0 first) follows the reference so float rounding matches it.
            y = xs[0] if i == 0 else row[0](xs[0])
            for j in range(1, self.num_branches):
                if j == i:
                    y = y + xs[j]
                elif j > i:
                    y = y + _upsample_to(row[j](xs[j]), xs[i].shape[-2:])
                else:
                    y = y + row[j](xs[j])
            fused.append(self.relu(y))
        return fused


class _BranchListCall:
    """``module(list(branches))`` as a function of separate tensors, the form checkpoint takes."""

    def __init__(self, module: HighResolutionModule):
        self.module = module

    def __call__(self, *branches: torch.Tensor) -> list[torch.Tensor]:
        return self.module(list(branches))


@dataclass(frozen=True)
class StageConfig:
    """One HRNet stage: `num_modules` exchange units over len(num_channels) branches."""

    num_modules: int
    num_blocks: tuple[int, ...]
    num_channels: tuple[int, ...]
    block: str = "BASIC"


@dataclass(frozen=True)
class HRNetConfig:
    """Widths and depths of an HRNetV2 variant (stage 1 has one branch of bottlenecks)."""

    stage1: StageConfig
    stage2: StageConfig
    stage3: StageConfig
    stage4: StageConfig


class HRNet(nn.Module):
    """HRNetV2 backbone returning the four branch maps (strides 4, 8, 16, 32).

    Args:
        config: stage widths/depths, e.g. `HRNET_CONFIGS["w48"]`.
        norm_layer: normalisation constructor taking the channel count (BatchNorm2d: eps 1e-5, momentum 0.1 as
            the reference; pass `nn.SyncBatchNorm` for multi-GPU training).

    Attributes:
        out_channels: channels of each branch output.
        strides: stride of each branch output relative to the input.
        concat_channels: channels of `concat_branches(outputs)` (720 for W48).
    """

    def __init__(self, config: HRNetConfig, norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.config = config
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = norm_layer(64)
        self.conv2 = nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False)
        self.bn2 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)

        stage1 = config.stage1
        block1 = BLOCK_TYPES[stage1.block]
        self.layer1 = make_residual_layer(block1, 64, stage1.num_channels[0], stage1.num_blocks[0], norm_layer)
        channels = [stage1.num_channels[0] * block1.expansion]

        self.transition1, self.stage2, channels = self._make_transition_and_stage(channels, config.stage2, norm_layer)
        self.transition2, self.stage3, channels = self._make_transition_and_stage(channels, config.stage3, norm_layer)
        self.transition3, self.stage4, channels = self._make_transition_and_stage(channels, config.stage4, norm_layer)

        self.out_channels: list[int] = list(channels)
        self.strides: list[int] = list(BRANCH_STRIDES[: len(channels)])
        self.concat_channels: int = sum(channels)
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Activation checkpointing in training: the stem, stage 1 and every exchange module of stages 2-4 keep only
        their inputs and recompute their activations in the backward pass (`attnseg.models.checkpointing`).

        The unit is one exchange module rather than a whole stage: the peak of the backward pass is the largest unit
        recomputed at once, and a stage of four modules would hold four modules' activations again.
        """
        self.grad_checkpointing = enabled

    @staticmethod
    def _make_transition_and_stage(
        previous: list[int], stage: StageConfig, norm_layer: NormLayer
    ) -> tuple[nn.ModuleList, nn.Sequential, list[int]]:
        block = BLOCK_TYPES[stage.block]
        target = [c * block.expansion for c in stage.num_channels]
        transitions = []
        for i, c_out in enumerate(target):
            if i < len(previous):
                # An existing branch only gets a conv when its width changes.
                same = previous[i] == c_out
                transitions.append(nn.Identity() if same else _conv_bn(previous[i], c_out, 3, 1, norm_layer, True))
            else:
                # A new, coarser branch grows from the coarsest existing one by strided 3x3 convs.
                steps = []
                for k in range(i + 1 - len(previous)):
                    out = c_out if k == i - len(previous) else previous[-1]
                    steps.append(_conv_bn(previous[-1], out, 3, 2, norm_layer, True))
                transitions.append(nn.Sequential(*steps))
        modules = []
        channels = target
        for _ in range(stage.num_modules):
            module = HighResolutionModule(block, stage.num_blocks, channels, stage.num_channels, norm_layer)
            modules.append(module)
            channels = module.out_channels
        return nn.ModuleList(transitions), nn.Sequential(*modules), list(channels)

    @staticmethod
    def _transition(transitions: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
        # New branches are fed from the coarsest output of the previous stage.
        return [t(ys[i] if i < len(ys) else ys[-1]) for i, t in enumerate(transitions)]

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Image (N, 3, H, W) -> branch maps [(N, C_i, ceil(H / s_i), ceil(W / s_i))] for s_i in `strides`."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return self._forward_checkpointed(x)
        ys = [self.layer1(self._stem(x))]
        ys = self.stage2(self._transition(self.transition1, ys))
        ys = self.stage3(self._transition(self.transition2, ys))
        return self.stage4(self._transition(self.transition3, ys))

    def _forward_checkpointed(self, x: torch.Tensor) -> list[torch.Tensor]:
        # The same computation as forward, unit by unit; transitions (a few small convs) are not worth recomputing.
        ys = [checkpointed(self.layer1, checkpointed(self._stem, x, owner=self))]
        for transitions, stage in ((self.transition1, self.stage2), (self.transition2, self.stage3),
                                   (self.transition3, self.stage4)):  # fmt: skip
            ys = self._transition(transitions, ys)
            for module in stage:
                ys = checkpointed(_BranchListCall(module), *ys, owner=module)
        return ys


def concat_branches(features: Sequence[torch.Tensor]) -> torch.Tensor:
    """The HRNetV2 representation: every branch upsampled (bilinear) to branch 0's size, concatenated."""
    size = features[0].shape[-2:]
    return torch.cat([features[0], *(_upsample_to(f, size) for f in features[1:])], dim=1)


def _hrnet_config(
    width: int, stage1_blocks: int, blocks: int, modules: tuple[int, int, int], stage1_channels: int = 64
) -> HRNetConfig:
    widths = tuple(width * 2**i for i in range(4))
    return HRNetConfig(
        stage1=StageConfig(1, (stage1_blocks,), (stage1_channels,), "BOTTLENECK"),
        stage2=StageConfig(modules[0], (blocks,) * 2, widths[:2]),
        stage3=StageConfig(modules[1], (blocks,) * 3, widths[:3]),
        stage4=StageConfig(modules[2], (blocks,) * 4, widths[:4]),
    )


# Published HRNetV2 variants (HRNet-Semantic-Segmentation configs): W18-small-v2 has 2 blocks per branch and
# 1/3/2 modules in stages 2/3/4; the full-size variants have 4 blocks and 1/4/3 modules. W18-small-v1 (despite the
# name, branches 16/32/64/128 wide) has one bottleneck of width 32 in stage 1 and one module per later stage: half
# the training step of v2 on CPU, which is what the demo needs.
HRNET_CONFIGS: dict[str, HRNetConfig] = {
    "w18_small_v1": _hrnet_config(16, stage1_blocks=1, blocks=2, modules=(1, 1, 1), stage1_channels=32),
    "w18_small": _hrnet_config(18, stage1_blocks=2, blocks=2, modules=(1, 3, 2)),
    "w18": _hrnet_config(18, stage1_blocks=4, blocks=4, modules=(1, 4, 3)),
    "w32": _hrnet_config(32, stage1_blocks=4, blocks=4, modules=(1, 4, 3)),
    "w48": _hrnet_config(48, stage1_blocks=4, blocks=4, modules=(1, 4, 3)),
}


def hrnet(variant: str, *, norm_layer: NormLayer = nn.BatchNorm2d) -> HRNet:
    """Build an HRNetV2 backbone by name: ``"w48"``, ``"w32"``, ``"w18"``, ``"w18_small"`` (v2) or
    ``"w18_small_v1"``."""
    try:
        config = HRNET_CONFIGS[variant]
    except KeyError:
        raise ValueError(f"unknown HRNet variant {variant!r}; available: {', '.join(HRNET_CONFIGS)}") from None
    return HRNet(config, norm_layer=norm_layer)


# ---------------------------------------------------------------------------------------------------------
# ImageNet HRNet (HRNet-Image-Classification release), as loaded by NVIDIA's HighResolutionNet
# ---------------------------------------------------------------------------------------------------------
# The classification checkpoint uses the same module names as the segmentation backbone for everything up to
# stage 4; its classification neck (incre_modules, downsamp_modules, final_layer, classifier) has no
# counterpart and is dropped, as NVIDIA's init_weights drops every key its model does not have.
_HRNET_BACKBONE_ROOTS = frozenset(
    {"conv1", "bn1", "conv2", "bn2", "layer1"}
    | {"transition1", "transition2", "transition3", "stage2", "stage3", "stage4"}
)


def is_hrnet_imagenet_layout(keys: Iterable[str]) -> bool:
    """Key signature of a bare HRNet checkpoint: top-level ``stage4.``/``transition1.`` keys (``module.`` ignored)."""
    return any(key.removeprefix("module.").startswith(("stage4.", "transition1.")) for key in keys)


def convert_hrnet_imagenet_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Backbone entries of an ImageNet HRNet-W48 checkpoint under our ``backbone.`` prefix.

    Args:
        state: ``hrnetv2_w48_imagenet_pretrained.pth`` contents (optionally with ``module.``/``model.`` prefixes).

    Returns:
        ``backbone.<key>`` -> tensor for stem, stage-1 bottlenecks, transitions and stages 2-4; the ImageNet
        classification neck is left out. Use for initialisation (`attnseg.weights.load_pretrained`).
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("module.").removeprefix("model.")
        if name.split(".", 1)[0] in _HRNET_BACKBONE_ROOTS:
            converted[f"backbone.{name}"] = as_tensor(value)
    return converted
