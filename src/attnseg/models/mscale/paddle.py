"""PaddleSeg checkpoints of the HRNet + OCR family: their key signature and converter.

Our MscaleOCR `state_dict()` follows the NVIDIA/semantic-segmentation layout (``backbone.*``, ``ocr.*``,
``scale_attn.*``). This module remaps PaddleSeg ``contrib/CityscapesSOTA`` ``.pdparams`` (``MscaleOCRNet`` with
``HRNet_W48_NV``) onto it, and the Mapillary-pretrained OCRNet ``pretrained.pdparams`` that its config loads for
initialisation (same naming, no scale-attention head, Mapillary class count; keys with or without the ``ocrnet.``
prefix). The ImageNet HRNet backbone checkpoint has its converter beside the backbone
(`attnseg.models.backbones.hrnet`).

The Paddle remap is one explicit rule per module kind (stem, bottleneck, transition, branch block, fuse
layer, OCR head parts, attention head). Paddle ``ConvBN``/``ConvBNReLU`` layers hold ``_conv`` and
``_batch_norm`` children; their BN statistics are ``_mean``/``_variance``. All MscaleOCR layers are
convolutions, whose weights Paddle stores in the same (out, in, kh, kw) order as torch, so values are copied
unchanged. Torch BN counters (``num_batches_tracked``) do not exist in Paddle and are added as zeros.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import torch

from attnseg.models.state_dicts import PADDLE_BN_LEAVES, as_tensor

_CONV_LEAVES = ("weight", "bias")

# A module rule maps a Paddle module path (regex match) to either ("convbn", conv path, bn path) or
# ("conv", conv path) for a bare Conv2D. Paths are relative to the torch model root.
_ModuleTarget = tuple[str, ...]
_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], _ModuleTarget]]


def _convbn(conv: str, bn: str) -> _ModuleTarget:
    return ("convbn", conv, bn)


def _conv(path: str) -> _ModuleTarget:
    return ("conv", path)


def _transition(match: re.Match[str]) -> _ModuleTarget:
    stage, branch = int(match["t"]), int(match["i"]) - 1
    # Transition t follows a stage with t branches: existing branches whose width changes get a single
    # Sequential(conv, bn) in torch, the new (strided) branch gets Sequential(Sequential(conv, bn, relu)).
    if branch < stage:
        return _convbn(f"backbone.transition{stage}.{branch}.0", f"backbone.transition{stage}.{branch}.1")
    return _convbn(f"backbone.transition{stage}.{branch}.0.0", f"backbone.transition{stage}.{branch}.0.1")


def _fuse_up(match: re.Match[str]) -> _ModuleTarget:
    # residual_<s>_<m>_layer_<i>_<j> exists for j > i: a 1x1 ConvBN bringing branch j to branch i's width.
    i, j = int(match["i"]) - 1, int(match["j"]) - 1
    if j <= i:
        raise KeyError(f"fuse layer {match.group(0)!r}: two-index name expected only for a lower-resolution input")
    base = f"backbone.stage{match['s']}.{int(match['m']) - 1}.fuse_layers.{i}.{j}"
    return _convbn(f"{base}.0", f"{base}.1")


def _fuse_down(match: re.Match[str]) -> _ModuleTarget:
    # residual_<s>_<m>_layer_<i>_<j>_<k> exists for j < i: the k-th stride-2 3x3 ConvBN(ReLU) of the chain.
    i, j, k = int(match["i"]) - 1, int(match["j"]) - 1, int(match["k"]) - 1
    if not (j < i and k < i - j):
        raise KeyError(f"fuse layer {match.group(0)!r}: indices do not describe a downsampling chain")
    base = f"backbone.stage{match['s']}.{int(match['m']) - 1}.fuse_layers.{i}.{j}.{k}"
    return _convbn(f"{base}.0", f"{base}.1")


def _ocr_block(match: re.Match[str]) -> _ModuleTarget:
    # Paddle Sequential(ConvBNReLU, ConvBNReLU) -> torch Sequential(conv, BNReLU, conv, BNReLU); BNReLU is
    # itself Sequential(bn, relu).
    name, index = match["name"], int(match["n"])
    base = f"ocr.ocr_distri_head.object_context_block.{name}"
    return _convbn(f"{base}.{2 * index}", f"{base}.{2 * index + 1}.0")


_HRNET = r"(?:ocrnet\.)?backbone\."
_HEAD = r"(?:ocrnet\.)?head\."
_PADDLE_MSCALE_RULES: tuple[_Rule, ...] = tuple(
    (re.compile(pattern), target)
    for pattern, target in (
        # HRNet stem: two stride-2 3x3 ConvBNReLU.
        (_HRNET + r"conv_layer1_(?P<n>[12])", lambda m: _convbn(f"backbone.conv{m['n']}", f"backbone.bn{m['n']}")),
        # Stage 1 bottlenecks: la1.bb_layer2_<b>.conv<n> and the projection shortcut conv_down.
        (
            _HRNET + r"la1\.bb_layer2_(?P<b>\d+)\.conv(?P<n>[123])",
            lambda m: _convbn(
                f"backbone.layer1.{int(m['b']) - 1}.conv{m['n']}", f"backbone.layer1.{int(m['b']) - 1}.bn{m['n']}"
            ),
        ),
        (
            _HRNET + r"la1\.bb_layer2_(?P<b>\d+)\.conv_down",
            lambda m: _convbn(
                f"backbone.layer1.{int(m['b']) - 1}.downsample.0", f"backbone.layer1.{int(m['b']) - 1}.downsample.1"
            ),
        ),
        (_HRNET + r"tr(?P<t>\d)\.transition_tr(?P=t)_layer_(?P<i>\d+)", _transition),
        # Basic blocks of each branch: st<s>.stage_st<s>_<m>.branches_func.bb_st<s>_<m>_branch_layer_<i>_<j>.
        (
            _HRNET + r"st(?P<s>\d)\.stage_st(?P=s)_(?P<m>\d+)\.branches_func\."
            r"bb_st(?P=s)_(?P=m)_branch_layer_(?P<i>\d+)_(?P<j>\d+)\.conv(?P<n>[12])",
            lambda m: _convbn(
                f"backbone.stage{m['s']}.{int(m['m']) - 1}.branches.{int(m['i']) - 1}.{int(m['j']) - 1}.conv{m['n']}",
                f"backbone.stage{m['s']}.{int(m['m']) - 1}.branches.{int(m['i']) - 1}.{int(m['j']) - 1}.bn{m['n']}",
            ),
        ),
        (
            _HRNET + r"st(?P<s>\d)\.stage_st(?P=s)_(?P<m>\d+)\.fuse_func\."
            r"residual_st(?P=s)_(?P=m)_layer_(?P<i>\d+)_(?P<j>\d+)_(?P<k>\d+)",
            _fuse_down,
        ),
        (
            _HRNET + r"st(?P<s>\d)\.stage_st(?P=s)_(?P<m>\d+)\.fuse_func\."
            r"residual_st(?P=s)_(?P=m)_layer_(?P<i>\d+)_(?P<j>\d+)",
            _fuse_up,
        ),
        # OCR head.
        (_HEAD + r"conv3x3_ocr", lambda m: _convbn("ocr.conv3x3_ocr.0", "ocr.conv3x3_ocr.1.0")),
        (_HEAD + r"spatial_ocr\.attention_block\.(?P<name>f_pixel|f_object)\.(?P<n>[01])", _ocr_block),
        (
            _HEAD + r"spatial_ocr\.attention_block\.(?P<name>f_down|f_up)",
            lambda m: _convbn(
                f"ocr.ocr_distri_head.object_context_block.{m['name']}.0",
                f"ocr.ocr_distri_head.object_context_block.{m['name']}.1.0",
            ),
        ),
        (
            _HEAD + r"spatial_ocr\.conv1x1\.0",
            lambda m: _convbn("ocr.ocr_distri_head.conv_bn_dropout.0", "ocr.ocr_distri_head.conv_bn_dropout.1.0"),
        ),
        (_HEAD + r"cls_head", lambda m: _conv("ocr.cls_head")),
        (_HEAD + r"aux_head\.0", lambda m: _convbn("ocr.aux_head.0", "ocr.aux_head.1.0")),
        (_HEAD + r"aux_head\.1", lambda m: _conv("ocr.aux_head.2")),
        # Scale-attention head: ConvBNReLU, ConvBNReLU, Conv2D (no bias), Sigmoid.
        (
            r"scale_attn\.atten_head\.(?P<n>[01])",
            lambda m: _convbn(f"scale_attn.conv{m['n']}", f"scale_attn.bn{m['n']}"),
        ),
        (r"scale_attn\.atten_head\.2", lambda m: _conv("scale_attn.conv2")),
    )
)


def is_paddle_mscale_layout(keys: Iterable[str]) -> bool:
    """Key signature of a PaddleSeg MscaleOCRNet / OCRNet (given a Paddle layout): ``ocrnet.``/``scale_attn.``
    prefixes, the ``spatial_ocr`` head or the HRNet_W48_NV stem ``conv_layer1_1``."""
    return any(k.startswith(("ocrnet.", "scale_attn.")) or ".spatial_ocr." in k or "conv_layer1_1" in k for k in keys)


def _split_paddle_key(key: str) -> tuple[str, str, str]:
    """``(module path, part, leaf)`` with part ``"conv"``, ``"bn"`` or ``"plain"`` (a bare Conv2D)."""
    for marker, part in (("._conv.", "conv"), ("._batch_norm.", "bn")):
        if marker in key:
            module, leaf = key.split(marker, 1)
            return module, part, leaf
    module, _, leaf = key.rpartition(".")
    return module, "plain", leaf


def _module_target(module: str) -> _ModuleTarget:
    for pattern, target in _PADDLE_MSCALE_RULES:
        match = pattern.fullmatch(module)
        if match:
            return target(match)
    raise KeyError(f"no MscaleOCR rule for PaddleSeg module {module!r}")


def paddle_key_to_torch(key: str) -> str:
    """Torch (NVIDIA-layout) key of one PaddleSeg MscaleOCRNet / OCRNetNV key.

    Raises:
        KeyError: the key is not part of the PaddleSeg MscaleOCRNet / OCRNet-HRNet_W48_NV layout.
    """
    module, part, leaf = _split_paddle_key(key)
    target = _module_target(module)
    kind = target[0]
    if part == "plain":
        if kind != "conv" or leaf not in _CONV_LEAVES:
            raise KeyError(f"PaddleSeg key {key!r}: {module!r} is a ConvBN layer, expected _conv/_batch_norm children")
        return f"{target[1]}.{leaf}"
    if kind != "convbn":
        raise KeyError(f"PaddleSeg key {key!r}: {module!r} is a plain Conv2D without _conv/_batch_norm children")
    if part == "conv":
        if leaf not in _CONV_LEAVES:
            raise KeyError(f"PaddleSeg key {key!r}: unknown conv parameter {leaf!r}")
        return f"{target[1]}.{leaf}"
    if leaf not in PADDLE_BN_LEAVES:
        raise KeyError(f"PaddleSeg key {key!r}: unknown batch-norm entry {leaf!r}")
    return f"{target[2]}.{PADDLE_BN_LEAVES[leaf]}"


def _check_conv_bn_shapes(state: Mapping[str, torch.Tensor], bn_to_conv: Mapping[str, str]) -> None:
    """A conv's output channels must equal its BN's length; 4-D conv weights; conv bias as long as the output."""
    for key, tensor in state.items():
        if key.endswith(".weight") and key.rsplit(".", 1)[0] not in bn_to_conv and tensor.dim() != 4:
            raise ValueError(f"{key}: conv weight must be 4-D, got shape {tuple(tensor.shape)}")
    for bn, conv in bn_to_conv.items():
        conv_weight = state.get(f"{conv}.weight")
        if conv_weight is None:
            raise ValueError(f"{bn}: batch norm without its conv weight {conv}.weight")
        channels = conv_weight.shape[0]
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            value = state.get(f"{bn}.{leaf}")
            if value is None:
                raise ValueError(f"{bn}.{leaf}: missing batch-norm entry")
            if tuple(value.shape) != (channels,):
                raise ValueError(f"{bn}.{leaf}: shape {tuple(value.shape)} does not match {channels} conv channels")
    for key, tensor in state.items():
        if key.endswith(".bias") and f"{key[:-5]}.weight" in state and key[:-5] not in bn_to_conv:
            out_channels = state[f"{key[:-5]}.weight"].shape[0]
            if tuple(tensor.shape) != (out_channels,):
                raise ValueError(f"{key}: conv bias shape {tuple(tensor.shape)} != ({out_channels},)")


def convert_paddle_state_dict(paddle_state: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Remap a PaddleSeg ``MscaleOCRNet`` (HRNet_W48_NV) state dict onto our MscaleOCR layout.

    Also accepts the Mapillary-pretrained OCRNet ``pretrained.pdparams`` (no ``scale_attn`` entries, another
    class count, keys with or without ``ocrnet.``): every key present is converted, and loading with
    `attnseg.weights.load_pretrained` reports what the model has beyond it.

    Args:
        paddle_state: Paddle key -> numpy array (or tensor); a ``StructuredToParameterName@@`` entry is ignored.

    Returns:
        Torch key -> tensor in the NVIDIA layout (without ``module.``), with ``num_batches_tracked`` = 0 added
        for every batch norm.

    Raises:
        KeyError: a key belongs to no MscaleOCR module (another model family, or a corrupted file).
        ValueError: shapes are inconsistent inside a conv + batch-norm pair, or two keys map to one.
    """
    state: dict[str, torch.Tensor] = {}
    bn_to_conv: dict[str, str] = {}
    for key, value in paddle_state.items():
        if key.startswith("StructuredToParameterName@@"):
            continue
        torch_key = paddle_key_to_torch(key)
        if torch_key in state:
            raise ValueError(f"PaddleSeg keys map twice onto {torch_key!r} (duplicate with and without 'ocrnet.'?)")
        state[torch_key] = as_tensor(value)
        module, part, _ = _split_paddle_key(key)
        if part == "bn":
            target = _module_target(module)
            bn_to_conv[target[2]] = target[1]
    _check_conv_bn_shapes(state, bn_to_conv)
    for bn in bn_to_conv:
        state[f"{bn}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return state


__all__ = ["convert_paddle_state_dict", "is_paddle_mscale_layout", "paddle_key_to_torch"]
