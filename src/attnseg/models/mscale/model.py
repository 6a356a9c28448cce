"""HRNet + OCR segmentation models, single-scale (`OCRNet`) and with hierarchical multi-scale attention
(`MscaleOCR`, NVIDIA's `ocrnet.HRNet_Mscale`), and their builders (a table of variants, `HRNET_OCR_VARIANTS`).

The state-dict layout equals NVIDIA/semantic-segmentation's (`backbone.*`, `ocr.*`, `scale_attn.*`), so an NVIDIA
`.pth` loads with `strict=True` after `attnseg.models.mscale.nvidia.convert_nvidia_state_dict` (strips `module.`).

Forward contract (`SegmentationOutput`):

- `MscaleOCR` in training mode: two-scale forward (low scale, then 1.0). `logits`/`aux_logits` are the joint
  (attention-combined) maps at the input size; `scale_logits = {low: p_low (low-scale size), 1.0: p_1x}`,
  `scale_attention = {low: a_low}`. The reference's supervised multi-scale loss upsamples `p_low` bilinearly
  (align_corners=False) to the label size first; the criterion does that resize.
- `MscaleOCR` in eval mode: hierarchical fusion over the `scales` argument of forward (default: the constructor's
  `eval_scales`); per-scale logits (only with ``keep_scale_outputs=True``) and the attention maps that took part,
  each at its scale's size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.models.backbones.hrnet import HRNet, concat_branches, hrnet
from attnseg.models.heads.ocr import OCRHead
from attnseg.models.mscale.fusion import FusedOutputs, ScaleOutputs, hierarchical_fusion, two_scale_fusion
from attnseg.models.outputs import SegmentationOutput

NormLayer = Callable[[int], nn.Module]


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ScaleAttentionHead(nn.Module):
    """Per-pixel attention in (0, 1) from the OCR features: 3x3 conv-BN-ReLU (x2), 1x1 conv, sigmoid.

    Args:
        in_channels: OCR feature channels (512 in the reference).
        bottleneck_channels: hidden channels (``SEGATTN_BOT_CH`` = 256).
        inner_3x3: include the second 3x3 conv (``MSCALE_INNER_3x3``, on in the released models).
        norm_layer: normalisation constructor taking the channel count.
    """

    def __init__(
        self,
        in_channels: int,
        bottleneck_channels: int = 256,
        inner_3x3: bool = True,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ):
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, bottleneck_channels, 3, padding=1, bias=False)
        self.bn0 = norm_layer(bottleneck_channels)
        self.conv1: nn.Module | None = None
        self.bn1: nn.Module | None = None
        if inner_3x3:
            self.conv1 = nn.Conv2d(bottleneck_channels, bottleneck_channels, 3, padding=1, bias=False)
            self.bn1 = norm_layer(bottleneck_channels)
        self.conv2 = nn.Conv2d(bottleneck_channels, 1, 1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.conv0(features)))
        if self.conv1 is not None:
            x = torch.relu(self.bn1(self.conv1(x)))
        return torch.sigmoid(self.conv2(x))


class OCRNet(nn.Module):
    """HRNet + OCR at a single scale.

    Args:
        backbone: an HRNet (its `concat_channels` must equal the OCR head's input channels).
        ocr: the OCR head.
    """

    def __init__(self, backbone: HRNet, ocr: OCRHead):
        super().__init__()
        self.backbone = backbone
        self.ocr = ocr

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Activation checkpointing of the backbone and the OCR head in training (see their methods)."""
        self.backbone.set_grad_checkpointing(enabled)
        self.ocr.set_grad_checkpointing(enabled)

    def forward(self, images: torch.Tensor) -> SegmentationOutput:
        logits, aux_logits, _ = self.ocr(concat_branches(self.backbone(images)))
        size = images.shape[-2:]
        return SegmentationOutput(logits=_upsample(logits, size), aux_logits=_upsample(aux_logits, size))


class MscaleOCR(nn.Module):
    """HRNet + OCR with hierarchical multi-scale attention (Tao et al., arXiv 2005.10821).

    Args:
        backbone: an HRNet.
        ocr: the OCR head on the backbone's concatenated representation.
        scale_attn: attention head on the OCR features.
        eval_scales: scales fused in eval mode when forward gets no ``scales``; must contain 1.0. ``(1.0,)`` gives
            the plain single-scale forward. Read-only afterwards (`eval_scales`): callers pass other scales to
            forward instead of changing the model.
        train_scales: ``(low, 1.0)`` for the reference's two-scale training, or ``(1.0,)`` for single scale.
        resize_recompute_scale_factor: how the input is resized to each scale (`resize_by_scale`): True as NVIDIA
            (samples at the input/output size ratio), False as PaddleSeg (at 1 / scale); they differ only where
            ``side * scale`` is not an integer. A settable attribute.
    """

    # The scales seam (`attnseg.models.fuses_scales`): forward takes `scales` and `keep_scale_outputs`.
    FUSES_SCALES: ClassVar[bool] = True

    def __init__(
        self,
        backbone: HRNet,
        ocr: OCRHead,
        scale_attn: ScaleAttentionHead,
        eval_scales: Sequence[float] = (0.5, 1.0, 2.0),
        train_scales: Sequence[float] = (0.5, 1.0),
        resize_recompute_scale_factor: bool = True,
    ):
        super().__init__()
        self.backbone = backbone
        self.ocr = ocr
        self.scale_attn = scale_attn
        self._eval_scales = tuple(float(s) for s in eval_scales)
        train = sorted(float(s) for s in train_scales)
        if train != [1.0] and not (len(train) == 2 and train[1] == 1.0 and 0.0 < train[0] < 1.0):
            raise ValueError(f"train_scales must be (low, 1.0) with 0 < low < 1, or (1.0,); got {tuple(train_scales)}")
        self.train_scales = tuple(train)
        self.resize_recompute_scale_factor = resize_recompute_scale_factor

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Activation checkpointing in training, at both training scales: the backbone's and the OCR head's units
        (see their methods) keep only their inputs and recompute activations in the backward pass.

        The scale-attention head is not recomputed: its two 3x3 convs cost 58 GMAC per 512x1024 image (15% of the
        W48 forward) for about 0.2 GB of activations.
        """
        self.backbone.set_grad_checkpointing(enabled)
        self.ocr.set_grad_checkpointing(enabled)

    @property
    def eval_scales(self) -> tuple[float, ...]:
        """The scales fused in eval mode when forward is given none (the constructor's `eval_scales`)."""
        return self._eval_scales

    def forward_single_scale(self, images: torch.Tensor) -> ScaleOutputs:
        """The network at one scale (the reference's `_fwd`): logits, aux logits and attention, all upsampled
        bilinearly to the size of `images`."""
        logits, aux_logits, ocr_features = self.ocr(concat_branches(self.backbone(images)))
        attention = self.scale_attn(ocr_features)
        size = images.shape[-2:]
        return ScaleOutputs(_upsample(logits, size), _upsample(aux_logits, size), _upsample(attention, size))

    def forward(
        self, images: torch.Tensor, scales: Sequence[float] | None = None, keep_scale_outputs: bool = False
    ) -> SegmentationOutput:
        """Two-scale training forward (`train_scales`), or hierarchical fusion over `scales` in eval mode.

        Args:
            images: (N, 3, H, W) normalised images.
            scales: eval mode: the scales to fuse, containing 1.0 (None: `eval_scales`). Ignored in training mode.
            keep_scale_outputs: eval mode: also return every scale's logits in `scale_logits` (memory: the 2.0-scale
                logits of a 1024x2048 image alone take 640 MB).
        """
        if self.training:
            fused = self._forward_train(images)
        else:
            fused = hierarchical_fusion(
                self.forward_single_scale, images, self._eval_scales if scales is None else scales,
                keep_scale_outputs=keep_scale_outputs, recompute_scale_factor=self.resize_recompute_scale_factor,
            )
        return SegmentationOutput(fused.logits, fused.aux_logits, fused.scale_logits, fused.scale_attention)

    def _forward_train(self, images: torch.Tensor) -> FusedOutputs:
        if self.train_scales == (1.0,):
            logits, aux_logits, attention = self.forward_single_scale(images)
            # The attention multiplies nothing at a single scale; adding 0 * attention keeps its parameters in the
            # graph so DistributedDataParallel does not report them unused.
            logits = logits + 0.0 * attention
            return FusedOutputs(logits, aux_logits, {1.0: logits}, {})
        return two_scale_fusion(self.forward_single_scale, images, low_scale=self.train_scales[0],
                                recompute_scale_factor=self.resize_recompute_scale_factor)


# --------------------------------------------------------------------------------------------------------------
# Builders: one table of variants, one create function per model class
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HRNetOCRArgs:
    """Constructor arguments of one registered HRNet + OCR variant; `create_model` keywords override them.

    Attributes:
        hrnet: backbone variant (`attnseg.models.backbones.hrnet.hrnet`).
        description: one line, the builder's docstring.
        multiscale: `MscaleOCR` (with the scale-attention head) or single-scale `OCRNet`.
        ocr_mid_channels, ocr_key_channels: OCR head widths.
        attention_channels: hidden width of the scale-attention head (`MscaleOCR` only).
        eval_scales, train_scales, resize_recompute_scale_factor: see `MscaleOCR` (`MscaleOCR` only).
        norm_layer: normalisation constructor taking the channel count.
    """

    hrnet: str
    description: str
    multiscale: bool = True
    ocr_mid_channels: int = 512
    ocr_key_channels: int = 256
    attention_channels: int = 256
    eval_scales: Sequence[float] = (0.5, 1.0, 2.0)
    train_scales: Sequence[float] = (0.5, 1.0)
    norm_layer: NormLayer = nn.BatchNorm2d
    resize_recompute_scale_factor: bool = True


# The keywords each model class takes from `create_model` (the rest of `HRNetOCRArgs` is fixed by the variant).
_MSCALE_KEYWORDS = ("eval_scales", "train_scales", "ocr_mid_channels", "ocr_key_channels", "attention_channels",
                    "norm_layer", "resize_recompute_scale_factor")
_OCRNET_KEYWORDS = ("ocr_mid_channels", "ocr_key_channels", "norm_layer")

HRNET_OCR_VARIANTS: dict[str, HRNetOCRArgs] = {
    "mscale_ocr_hrnet_w48": HRNetOCRArgs(
        "w48", "MscaleOCR with HRNetV2-W48: the architecture of NVIDIA's released Cityscapes/Mapillary checkpoints"),
    "mscale_ocr_hrnet_w32": HRNetOCRArgs("w32", "MscaleOCR with HRNetV2-W32"),
    "mscale_ocr_hrnet_w18": HRNetOCRArgs("w18", "MscaleOCR with HRNetV2-W18"),
    "mscale_ocr_hrnet_w18_small": HRNetOCRArgs(
        "w18_small", "MscaleOCR with HRNetV2-W18-Small-v2 and narrower OCR/attention heads: for CPU demos/tests",
        ocr_mid_channels=256, ocr_key_channels=128, attention_channels=128),
    "mscale_ocr_hrnet_w18_small_v1": HRNetOCRArgs(
        "w18_small_v1", "MscaleOCR with HRNetV2-W18-Small-v1 and narrow heads: the CPU demo's model",
        ocr_mid_channels=128, ocr_key_channels=64, attention_channels=64),
    "ocr_hrnet_w48": HRNetOCRArgs(
        "w48", "single-scale HRNetV2-W48 + OCR (NVIDIA's ocrnet.HRNet; its checkpoints lack scale_attn.*)",
        multiscale=False),
    "ocr_hrnet_w18_small": HRNetOCRArgs(
        "w18_small", "single-scale HRNetV2-W18-Small-v2 + narrow OCR head: the cheapest model of the family",
        multiscale=False, ocr_mid_channels=256, ocr_key_channels=128),
}  # fmt: skip


def _variant_args(variant: str, multiscale: bool, allowed: Sequence[str], overrides: dict) -> HRNetOCRArgs:
    args = HRNET_OCR_VARIANTS[variant]
    if args.multiscale != multiscale:
        raise ValueError(f"{variant!r} is {'an MscaleOCR' if args.multiscale else 'an OCRNet'} variant")
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(f"{variant}() got an unexpected keyword argument {unknown[0]!r}")
    return replace(args, **overrides)


def create_mscale_ocr(variant: str, *, num_classes: int = 19, **overrides) -> MscaleOCR:
    """Build the `MscaleOCR` variant registered as ``variant`` (a key of `HRNET_OCR_VARIANTS`).

    Args:
        variant: registered name, e.g. ``"mscale_ocr_hrnet_w48"``.
        num_classes: output classes.
        **overrides: any of ``eval_scales``, ``train_scales``, ``ocr_mid_channels``, ``ocr_key_channels``,
            ``attention_channels``, ``norm_layer``, ``resize_recompute_scale_factor`` (defaults: the variant's).

    Raises:
        TypeError: a keyword this model does not take.
    """
    args = _variant_args(variant, True, _MSCALE_KEYWORDS, overrides)
    backbone = hrnet(args.hrnet, norm_layer=args.norm_layer)
    ocr = OCRHead(backbone.concat_channels, num_classes, args.ocr_mid_channels, args.ocr_key_channels,
                  norm_layer=args.norm_layer)
    scale_attn = ScaleAttentionHead(args.ocr_mid_channels, args.attention_channels, norm_layer=args.norm_layer)
    return MscaleOCR(backbone, ocr, scale_attn, eval_scales=args.eval_scales, train_scales=args.train_scales,
                     resize_recompute_scale_factor=args.resize_recompute_scale_factor)


def create_ocrnet(variant: str, *, num_classes: int = 19, **overrides) -> OCRNet:
    """Build the single-scale `OCRNet` variant registered as ``variant`` (a key of `HRNET_OCR_VARIANTS`).

    Args:
        variant: registered name, e.g. ``"ocr_hrnet_w48"``.
        num_classes: output classes.
        **overrides: any of ``ocr_mid_channels``, ``ocr_key_channels``, ``norm_layer`` (defaults: the variant's).

    Raises:
        TypeError: a keyword this model does not take.
    """
    args = _variant_args(variant, False, _OCRNET_KEYWORDS, overrides)
    backbone = hrnet(args.hrnet, norm_layer=args.norm_layer)
    ocr = OCRHead(backbone.concat_channels, num_classes, args.ocr_mid_channels, args.ocr_key_channels,
                  norm_layer=args.norm_layer)
    return OCRNet(backbone, ocr)


def _builder(name: str, args: HRNetOCRArgs) -> Callable[..., nn.Module]:
    builder = partial(create_mscale_ocr if args.multiscale else create_ocrnet, name)
    builder.__doc__ = args.description
    return builder


# name -> builder(*, num_classes=..., **overrides): the variant name bound to its class's create function.
MSCALE_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    name: _builder(name, args) for name, args in HRNET_OCR_VARIANTS.items()
}
