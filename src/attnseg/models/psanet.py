"""PSANet: dilated ResNet + point-wise spatial attention + FCN classifier, with an FCN auxiliary head on stage 3.

Builders (a table of variants, `PSANET_VARIANTS`, and `create_psanet`):
- `psanet_r50_vd`: justld/PSANet_paddle's Cityscapes model (ResNet50_vd OS8, psa_type 2, shrink 2, mask 59x59,
  normalization 1.0, softmax, element-wise dropout, align_corners=False); its released ``.pdparams`` load with
  `convert_paddle_psanet_state_dict`.
- `psanet_r50`, `psanet_r101`: hszhao/semseg's layout (deep-base ResNet v1c, channel dropout,
  align_corners=True); the default 89x89 mask is what semseg derives for its 705x705 Cityscapes crops. Their
  ``.pth`` checkpoints load with `convert_semseg_psanet_state_dict`; `semseg_psanet_build_args` reads the
  builder arguments (depth, mask size, classes) from such a checkpoint.
- `psanet_r18_narrow`: basic-block ResNet-18 at 1/4 width with a 9x9 mask, for tests and demos.

The model returns `SegmentationOutput(logits, aux_logits)` at the input resolution in training and in
evaluation; the 0.4 weight of the auxiliary loss belongs to the criterion.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.models.backbones.resnet import (
    BasicBlock,
    ResNet,
    paddle_resnet_key,
    resnet_v1c,
    resnet_vd,
    semseg_resnet_key,
)
from attnseg.models.heads.fcn import FCNHead
from attnseg.models.heads.psa import PSA_BIDIRECTIONAL, PSA_COLLECT, PSA_DISTRIBUTE, PointwiseSpatialAttention
from attnseg.models.outputs import SegmentationOutput
from attnseg.models.state_dicts import PADDLE_BN_LEAVES, add_missing_batches_tracked, as_tensor

NormLayer = Callable[[int], nn.Module]


class PSANet(nn.Module):
    """Backbone -> PSA (optional) -> FCN head; FCN auxiliary head on the stage before the last.

    Args:
        backbone: a `ResNet` (anything with ``out_channels`` and a 4-feature forward).
        num_classes: output classes.
        psa: the attention module on the last stage (output channels 2 * backbone.out_channels[-1]), or None.
        head_channels: hidden width of the main head (512).
        aux_channels: hidden width of the auxiliary head (256).
        dropout: dropout probability of both heads.
        dropout_layer: ``nn.Dropout`` (PaddleSeg) or ``nn.Dropout2d`` (semseg).
        align_corners: of the final bilinear upsampling to the input size.
        norm_layer: normalization of the heads.
    """

    def __init__(
        self,
        backbone: ResNet,
        num_classes: int,
        psa: nn.Module | None,
        head_channels: int = 512,
        aux_channels: int = 256,
        dropout: float = 0.1,
        dropout_layer: type[nn.Module] = nn.Dropout2d,
        align_corners: bool = False,
        norm_layer: NormLayer = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.psa = psa
        feature_channels = backbone.out_channels[-1] * (2 if psa is not None else 1)
        self.head = FCNHead(feature_channels, head_channels, num_classes, dropout, dropout_layer, norm_layer)
        aux_in = backbone.out_channels[-2]
        self.aux_head = FCNHead(aux_in, aux_channels, num_classes, dropout, dropout_layer, norm_layer)
        self.align_corners = align_corners

    def forward(self, images: torch.Tensor) -> SegmentationOutput:
        features = self.backbone(images)
        x = features[-1] if self.psa is None else self.psa(features[-1])
        size = images.shape[-2:]
        logits = F.interpolate(self.head(x), size=size, mode="bilinear", align_corners=self.align_corners)
        aux = F.interpolate(self.aux_head(features[-2]), size=size, mode="bilinear", align_corners=self.align_corners)
        return SegmentationOutput(logits=logits, aux_logits=aux)


# --------------------------------------------------------------------------------------------------------
# Builders: one table of variants, one create function
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PSANetArgs:
    """Constructor arguments of one registered PSANet variant; `create_model` keywords override the tunable ones.

    Attributes:
        backbone: ``"resnet_vd"`` (PaddleSeg), ``"resnet_v1c"`` (semseg) or ``"resnet18_narrow"`` (tests, demos).
        depth: ResNet depth (50 or 101; ignored by ``resnet18_narrow``).
        description: one line, the builder's docstring.
        tunable: the keywords `create_model` accepts for this variant; the other fields are fixed.
        psa_channels, head_channels, aux_channels: widths of the attention module and of the two heads.
        dropout_layer: ``nn.Dropout`` (PaddleSeg's AuxLayer drops elements) or ``nn.Dropout2d`` (semseg, channels).
        align_corners: of the final bilinear upsampling to the input size.
        output_stride, psa_type, mask_size, shrink_factor, normalization_factor, compact, dropout, norm_layer:
            see `PointwiseSpatialAttention` and `PSANet`.
    """

    backbone: str
    depth: int
    description: str
    tunable: tuple[str, ...]
    mask_size: tuple[int, int]
    psa_channels: int = 512
    head_channels: int = 512
    aux_channels: int = 256
    dropout_layer: type[nn.Module] = nn.Dropout2d
    align_corners: bool = True
    output_stride: int = 8
    psa_type: int = PSA_BIDIRECTIONAL
    shrink_factor: int = 2
    normalization_factor: float | None = 1.0
    compact: bool = False
    dropout: float = 0.1
    norm_layer: NormLayer = nn.BatchNorm2d


_COMMON = ("output_stride", "psa_type", "mask_size", "shrink_factor", "dropout", "norm_layer")

PSANET_VARIANTS: dict[str, PSANetArgs] = {
    "psanet_r50_vd": PSANetArgs(
        "resnet_vd", 50, "PSANet_paddle psanet_resnet50_os8_cityscapes_1024x512_80k (mIoU 79.94 on Cityscapes val)",
        (*_COMMON, "normalization_factor"), mask_size=(59, 59), dropout_layer=nn.Dropout, align_corners=False),
    "psanet_r50": PSANetArgs(
        "resnet_v1c", 50, "semseg cityscapes_psanet50 (mask 89x89 = psa_mask_size((705, 705)))",
        (*_COMMON, "normalization_factor", "compact"), mask_size=(89, 89)),
    "psanet_r101": PSANetArgs(
        "resnet_v1c", 101, "semseg cityscapes_psanet101 (mask 89x89)",
        (*_COMMON, "normalization_factor", "compact"), mask_size=(89, 89)),
    "psanet_r18_narrow": PSANetArgs(
        "resnet18_narrow", 18, "a tiny PSANet for tests and CPU demos: ResNet-18 at 1/4 width, 32-channel PSA",
        _COMMON, mask_size=(9, 9), psa_channels=32, head_channels=64, aux_channels=32, align_corners=False),
}  # fmt: skip


def _psanet_backbone(args: PSANetArgs) -> ResNet:
    if args.backbone == "resnet_vd":
        return resnet_vd(args.depth, output_stride=args.output_stride, norm_layer=args.norm_layer)
    if args.backbone == "resnet_v1c":
        return resnet_v1c(args.depth, output_stride=args.output_stride, norm_layer=args.norm_layer)
    if args.backbone == "resnet18_narrow":
        return ResNet(
            BasicBlock, (2, 2, 2, 2), widths=(16, 32, 64, 128), stem_channels=(16, 16, 32),
            output_stride=args.output_stride, avg_down=True, norm_layer=args.norm_layer,
        )  # fmt: skip
    raise ValueError(f"unknown PSANet backbone {args.backbone!r}")


def create_psanet(variant: str, num_classes: int = 19, **overrides) -> PSANet:
    """Build the PSANet variant registered as ``variant`` (a key of `PSANET_VARIANTS`).

    Args:
        variant: registered name, e.g. ``"psanet_r50_vd"``.
        num_classes: output classes.
        **overrides: the variant's ``tunable`` arguments (defaults: the variant's).

    Raises:
        TypeError: a keyword this variant does not take.
    """
    args = PSANET_VARIANTS[variant]
    unknown = sorted(set(overrides) - set(args.tunable))
    if unknown:
        raise TypeError(f"{variant}() got an unexpected keyword argument {unknown[0]!r}")
    args = replace(args, **overrides)
    backbone = _psanet_backbone(args)
    psa = PointwiseSpatialAttention(
        backbone.out_channels[-1], args.psa_channels, args.psa_type, args.mask_size, args.shrink_factor,
        args.normalization_factor, use_softmax=True, compact=args.compact, norm_layer=args.norm_layer,
    )  # fmt: skip
    return PSANet(backbone, num_classes, psa, args.head_channels, args.aux_channels, args.dropout,
                  args.dropout_layer, args.align_corners, args.norm_layer)


def _builder(name: str, args: PSANetArgs) -> Callable[..., PSANet]:
    builder = partial(create_psanet, name)
    builder.__doc__ = args.description
    return builder


# name -> builder(num_classes=..., **overrides): the variant name bound to `create_psanet`.
PSANET_BUILDERS: dict[str, Callable[..., PSANet]] = {
    name: _builder(name, args) for name, args in PSANET_VARIANTS.items()
}


# --------------------------------------------------------------------------------------------------------
# Checkpoint converters
# --------------------------------------------------------------------------------------------------------
_PADDLE_CONV_BN = {"_conv": "conv", "_batch_norm": "bn"}


def _paddle_conv_bn_key(module: str, kind: str, leaf: str) -> str:
    return f"{module}.{_PADDLE_CONV_BN[kind]}.{'weight' if kind == '_conv' else PADDLE_BN_LEAVES[leaf]}"


def is_paddle_psanet_layout(keys: Iterable[str]) -> bool:
    """Key signature of a PSANet_paddle state dict (given a Paddle layout): ``psa.`` keys."""
    return any(key.startswith("psa.") for key in keys)


def is_semseg_psanet_layout(keys: Iterable[str]) -> bool:
    """Key signature of a hszhao/semseg PSANet: a ``layer0`` stem beside ``psa``/``cls`` (``module.`` ignored)."""
    keys = [key.removeprefix("module.") for key in keys]
    return any(k.startswith("layer0.") for k in keys) and any(k.startswith(("psa.", "cls.")) for k in keys)


def paddle_psanet_key(key: str, psa_type: int = PSA_BIDIRECTIONAL) -> str:
    """Map one PSANet_paddle state-dict key to ours (see `convert_paddle_psanet_state_dict`)."""
    if key.startswith("backbone."):
        return "backbone." + paddle_resnet_key(key.removeprefix("backbone."))
    single = "distribute" if psa_type == PSA_DISTRIBUTE else "collect"
    branches = {"reduce_layer": f"{single}_reduce", "reduce_p": "distribute_reduce", "proj": "project"}
    if match := re.fullmatch(r"psa\.(reduce_layer|reduce_p|proj)\.(_conv|_batch_norm)\.(\w+)", key):
        module, kind, leaf = match.groups()
        return _paddle_conv_bn_key(f"psa.{branches[module]}", kind, leaf)
    if match := re.fullmatch(r"psa\.(attention|attention_p)\.0\.(_conv|_batch_norm)\.(\w+)", key):
        module, kind, leaf = match.groups()
        branch = single if module == "attention" else "distribute"
        return _paddle_conv_bn_key(f"psa.{branch}_hidden", kind, leaf)
    if match := re.fullmatch(r"psa\.(attention|attention_p)\.1\.weight", key):
        branch = single if match.group(1) == "attention" else "distribute"
        return f"psa.{branch}_logits.weight"
    if match := re.fullmatch(r"(head|aux_head)\.conv_bn_relu\.(_conv|_batch_norm)\.(\w+)", key):
        module, kind, leaf = match.groups()
        return _paddle_conv_bn_key(f"{module}.conv", kind, leaf)
    if match := re.fullmatch(r"(head|aux_head)\.conv\.(weight|bias)", key):
        return f"{match.group(1)}.classifier.{match.group(2)}"
    raise KeyError(f"not a PSANet_paddle key: {key!r}")


def _swap_projection_halves(weight: torch.Tensor) -> torch.Tensor:
    """Paddle concatenates [distribute, collect] before the projection; we concatenate [collect, distribute]."""
    distribute, collect = weight.chunk(2, dim=1)
    return torch.cat([collect, distribute], dim=1).contiguous()


def convert_paddle_psanet_state_dict(
    paddle_state: Mapping[str, object], psa_type: int = PSA_BIDIRECTIONAL
) -> dict[str, torch.Tensor]:
    """PSANet_paddle ``model.pdparams`` (a dict of numpy arrays or tensors) -> a `psanet_r50_vd` state dict.

    Renames every key (`paddle_psanet_key`), swaps the two input halves of the projection conv for
    psa_type 2 (see `_swap_projection_halves`) and adds ``num_batches_tracked``. Load with ``strict=True``.

    Args:
        paddle_state: the Paddle state dict, keys such as ``backbone.bb_0_0.conv0._conv.weight``.
        psa_type: the checkpoint's psa_type (2 for the released model); with 0 or 1 Paddle's single branch
            (``reduce_layer``/``attention``) becomes our collect or distribute branch.
    """
    state = {}
    for key, value in paddle_state.items():
        ours = paddle_psanet_key(key, psa_type)
        tensor = as_tensor(value)
        if ours == "psa.project.conv.weight" and psa_type == PSA_BIDIRECTIONAL:
            tensor = _swap_projection_halves(tensor)
        state[ours] = tensor
    return add_missing_batches_tracked(state)


_SEMSEG_SEQ_BN = {"0": "conv", "1": "bn"}
_SEMSEG_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}


def semseg_psanet_key(key: str, psa_type: int = PSA_BIDIRECTIONAL) -> str:
    """Map one semseg PSANet key (without ``module.``) to ours.

    ``layer0.{0,1,3,4,6,7}`` -> ``backbone.stem.{conv1,bn1,conv2,bn2,conv3,bn3}``; ``layerN.*`` -> backbone;
    ``psa.reduce.{0,1}`` / ``psa.attention.{0,1,3}`` (and ``_p``) -> collect/distribute reduce, hidden, logits;
    ``psa.proj`` -> project; ``cls``/``aux`` ``.{0,1,4}`` -> ``head``/``aux_head`` ``conv.conv``, ``conv.bn``,
    ``classifier``.
    """
    single = "distribute" if psa_type == PSA_DISTRIBUTE else "collect"
    if match := re.fullmatch(r"layer0\.(\d)\.(\w+)", key):
        index, leaf = match.groups()
        if index not in _SEMSEG_STEM:
            raise KeyError(f"not a semseg PSANet key: {key!r}")
        return f"backbone.stem.{_SEMSEG_STEM[index]}.{leaf}"
    if re.match(r"layer[1-4]\.", key):
        return "backbone." + semseg_resnet_key(key)
    if match := re.fullmatch(r"psa\.(reduce|reduce_p|proj)\.([01])\.(\w+)", key):
        module, index, leaf = match.groups()
        name = {"reduce": f"{single}_reduce", "reduce_p": "distribute_reduce", "proj": "project"}[module]
        return f"psa.{name}.{_SEMSEG_SEQ_BN[index]}.{leaf}"
    if match := re.fullmatch(r"psa\.(attention|attention_p)\.([013])\.(\w+)", key):
        module, index, leaf = match.groups()
        branch = single if module == "attention" else "distribute"
        if index == "3":
            return f"psa.{branch}_logits.{leaf}"
        return f"psa.{branch}_hidden.{_SEMSEG_SEQ_BN[index]}.{leaf}"
    if match := re.fullmatch(r"(cls|aux)\.([014])\.(\w+)", key):
        module, index, leaf = match.groups()
        head = "head" if module == "cls" else "aux_head"
        if index == "4":
            return f"{head}.classifier.{leaf}"
        return f"{head}.conv.{_SEMSEG_SEQ_BN[index]}.{leaf}"
    raise KeyError(f"not a semseg PSANet key: {key!r}")


def _semseg_state(checkpoint: Mapping[str, object]) -> Mapping[str, object]:
    """semseg saves ``{'epoch', 'state_dict', 'optimizer'}``; accept that or a bare state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise TypeError("semseg checkpoint 'state_dict' is not a mapping")
    return state


def convert_semseg_psanet_state_dict(
    checkpoint: Mapping[str, object], psa_type: int | None = None
) -> dict[str, torch.Tensor]:
    """hszhao/semseg PSANet ``train_epoch_*.pth`` (or its ``state_dict``) -> a `psanet_r50`/`psanet_r101` state dict.

    Keys lose their DataParallel ``module.`` prefix and are renamed with `semseg_psanet_key`; the branch
    order of the projection is already ours. Build the model with `semseg_psanet_build_args`.

    Args:
        checkpoint: the loaded ``.pth`` object or its ``state_dict``.
        psa_type: override; by default 2 if the checkpoint has ``psa.reduce_p`` keys, else 0 (collect).
    """
    state_in = {key.removeprefix("module."): value for key, value in _semseg_state(checkpoint).items()}
    if psa_type is None:
        psa_type = PSA_BIDIRECTIONAL if any(k.startswith("psa.reduce_p.") for k in state_in) else PSA_COLLECT
    state = {semseg_psanet_key(key, psa_type): as_tensor(value) for key, value in state_in.items()}
    return add_missing_batches_tracked(state)


def semseg_psanet_build_args(checkpoint: Mapping[str, object]) -> tuple[str, dict]:
    """Builder name and keyword arguments matching a semseg PSANet checkpoint.

    Reads the depth from the number of ``layer3`` blocks, the classes from ``cls.4.weight`` and the mask
    size from the attention conv (a square window is assumed; semseg's configs use square crops). Not
    detectable: psa_type 1 versus 0 (pass ``psa_type`` yourself) and compact mode.

    Returns:
        (``"psanet_r50"`` or ``"psanet_r101"``, kwargs including ``num_classes`` and ``mask_size``).
    """
    state = {key.removeprefix("module."): value for key, value in _semseg_state(checkpoint).items()}
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"layer3\.(\d+)\.", k))}
    depth = {6: 50, 23: 101}.get(len(blocks))
    if depth is None:
        raise ValueError(f"semseg PSANet checkpoint has {len(blocks)} layer3 blocks; expected 6 (r50) or 23 (r101)")
    cells = int(state["psa.attention.3.weight"].shape[0])
    side = round(cells**0.5)
    if side * side != cells:
        raise ValueError(f"semseg PSANet attention has {cells} outputs, not a square window")
    kwargs = {
        "num_classes": int(state["cls.4.weight"].shape[0]),
        "mask_size": (side, side),
        "psa_type": PSA_BIDIRECTIONAL if "psa.reduce_p.0.weight" in state else PSA_COLLECT,
    }
    return f"psanet_r{depth}", kwargs
