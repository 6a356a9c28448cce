"""PSANet: dilated ResNet + point-wise spatial attention + FCN classifier, with an FCN auxiliary head on stage 3.

Builders:
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
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from attnseg.models.backbones.resnet import (
    BasicBlock,
    ResNet,
    as_tensor,
    add_missing_batches_tracked,
    paddle_resnet_key,
    resnet_v1c,
    resnet_vd,
    semseg_resnet_key,
)
from attnseg.models.heads.fcn import FCNHead
from attnseg.models.heads.psa import PSA_BIDIRECTIONAL, PSA_COLLECT, PSA_DISTRIBUTE, PointwiseSpatialAttention
from attnseg.models.outputs import SegmentationOutput

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
# Builders
# --------------------------------------------------------------------------------------------------------
def psanet_r50_vd(
    num_classes: int = 19,
    *,
    output_stride: int = 8,
    psa_type: int = PSA_BIDIRECTIONAL,
    mask_size: tuple[int, int] = (59, 59),
    shrink_factor: int = 2,
    normalization_factor: float | None = 1.0,
    dropout: float = 0.1,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> PSANet:
    """PSANet_paddle ``psanet_resnet50_os8_cityscapes_1024x512_80k`` (mIoU 79.94 on Cityscapes val)."""
    backbone = resnet_vd(50, output_stride=output_stride, norm_layer=norm_layer)
    psa = PointwiseSpatialAttention(
        backbone.out_channels[-1], 512, psa_type, mask_size, shrink_factor, normalization_factor,
        use_softmax=True, compact=False, norm_layer=norm_layer,
    )
    # PaddleSeg's AuxLayer drops elements (nn.Dropout), semseg drops channels (nn.Dropout2d).
    return PSANet(backbone, num_classes, psa, 512, 256, dropout, nn.Dropout, False, norm_layer)


def _semseg_psanet(
    depth: int,
    num_classes: int,
    output_stride: int,
    psa_type: int,
    mask_size: tuple[int, int],
    shrink_factor: int,
    normalization_factor: float | None,
    compact: bool,
    dropout: float,
    norm_layer: NormLayer,
) -> PSANet:
    backbone = resnet_v1c(depth, output_stride=output_stride, norm_layer=norm_layer)
    psa = PointwiseSpatialAttention(
        backbone.out_channels[-1], 512, psa_type, mask_size, shrink_factor, normalization_factor, True, compact,
        norm_layer,
    )
    return PSANet(backbone, num_classes, psa, 512, 256, dropout, nn.Dropout2d, True, norm_layer)


def psanet_r50(
    num_classes: int = 19,
    *,
    output_stride: int = 8,
    psa_type: int = PSA_BIDIRECTIONAL,
    mask_size: tuple[int, int] = (89, 89),
    shrink_factor: int = 2,
    normalization_factor: float | None = 1.0,
    compact: bool = False,
    dropout: float = 0.1,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> PSANet:
    """semseg ``cityscapes_psanet50`` (mask 89x89 = ``psa_mask_size((705, 705))``)."""
    return _semseg_psanet(
        50, num_classes, output_stride, psa_type, mask_size, shrink_factor, normalization_factor, compact, dropout,
        norm_layer,
    )


def psanet_r101(
    num_classes: int = 19,
    *,
    output_stride: int = 8,
    psa_type: int = PSA_BIDIRECTIONAL,
    mask_size: tuple[int, int] = (89, 89),
    shrink_factor: int = 2,
    normalization_factor: float | None = 1.0,
    compact: bool = False,
    dropout: float = 0.1,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> PSANet:
    """semseg ``cityscapes_psanet101`` (mask 89x89)."""
    return _semseg_psanet(
        101, num_classes, output_stride, psa_type, mask_size, shrink_factor, normalization_factor, compact, dropout,
        norm_layer,
    )


def psanet_r18_narrow(
    num_classes: int = 19,
    *,
    output_stride: int = 8,
    psa_type: int = PSA_BIDIRECTIONAL,
    mask_size: tuple[int, int] = (9, 9),
    shrink_factor: int = 2,
    dropout: float = 0.1,
    norm_layer: NormLayer = nn.BatchNorm2d,
) -> PSANet:
    """A tiny PSANet for tests and CPU demos: ResNet-18 basic blocks at 1/4 width, 32-channel PSA, 9x9 mask."""
    backbone = ResNet(
        BasicBlock, (2, 2, 2, 2), widths=(16, 32, 64, 128), stem_channels=(16, 16, 32), output_stride=output_stride,
        avg_down=True, norm_layer=norm_layer,
    )
    psa = PointwiseSpatialAttention(
        backbone.out_channels[-1], 32, psa_type, mask_size, shrink_factor, 1.0, True, False, norm_layer
    )
    return PSANet(backbone, num_classes, psa, 64, 32, dropout, nn.Dropout2d, align_corners=False, norm_layer=norm_layer)


PSANET_BUILDERS: dict[str, Callable[..., PSANet]] = {
    "psanet_r50_vd": psanet_r50_vd,
    "psanet_r50": psanet_r50,
    "psanet_r101": psanet_r101,
    "psanet_r18_narrow": psanet_r18_narrow,
}


# --------------------------------------------------------------------------------------------------------
# Checkpoint converters
# --------------------------------------------------------------------------------------------------------
_PADDLE_CONV_BN = {"_conv": "conv", "_batch_norm": "bn"}
_PADDLE_BN_LEAF = {"weight": "weight", "bias": "bias", "_mean": "running_mean", "_variance": "running_var"}


def _paddle_conv_bn_key(module: str, kind: str, leaf: str) -> str:
    return f"{module}.{_PADDLE_CONV_BN[kind]}.{'weight' if kind == '_conv' else _PADDLE_BN_LEAF[leaf]}"


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
