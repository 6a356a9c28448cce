"""The checkpoint formats attnseg reads: ONE table that layout detection and conversion both read.

Each `CheckpointFormat` names a foreign layout, how to recognise it (key-signature functions declared beside its
converter, in the model family's own module) and the converter (a pure function: foreign state dict in, attnseg
state dict out). Adding a model family or a release touches that family's module and `FORMATS` only.

Detection walks `FORMATS` in order: the first record whose ``layout`` signature holds names the source. A source
may hold several formats (PaddleSeg: MscaleOCRNet and PSANet); its records' ``recognise`` signatures pick one.
A state dict that no record claims is attnseg's own layout (``"native"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attnseg.data.statistics import IMAGENET_MEAN, IMAGENET_STD
from attnseg.errors import WeightsError
from attnseg.models.backbones.hrnet import convert_hrnet_imagenet_state_dict, is_hrnet_imagenet_layout
from attnseg.models.mscale.nvidia import convert_nvidia_state_dict, is_nvidia_layout
from attnseg.models.mscale.paddle import convert_paddle_state_dict, is_paddle_mscale_layout
from attnseg.models.psanet import (
    convert_paddle_psanet_state_dict,
    convert_semseg_psanet_state_dict,
    is_paddle_psanet_layout,
    is_semseg_psanet_layout,
)
from attnseg.models.state_dicts import is_paddle_layout
from attnseg.weights.safe_load import inner_state_dict

KeySignature = Callable[[Iterable[str]], bool]
Converter = Callable[[Mapping[str, Any]], dict[str, torch.Tensor]]

NATIVE = "native"

# PaddleSeg's default Normalize(mean=0.5, std=0.5) on 0-255 values.
HALF_255 = (127.5, 127.5, 127.5)


def _always(keys: Iterable[str]) -> bool:
    return True


@dataclass(frozen=True)
class CheckpointFormat:
    """One foreign checkpoint layout.

    Attributes:
        name: unique name of the format.
        source: the layout name users pass (``--from``, ``source=``) and reports print; one of `SOURCES`.
        family: the model family it fills: ``"mscale_ocr"`` (HRNet + OCR), ``"psanet"``, or ``"hrnet_backbone"``
            (an ImageNet initialisation, not a segmentation model).
        layout: key signature of the source (shared by the formats of one source).
        recognise: key signature of this format among its source's formats.
        convert: the converter.
        reference: the implementation the checkpoints come from (recorded in converted sidecars).
        mean, std: the input normalisation its models were trained with (RGB, 0-255 values), as the release's
            configs set it; `attnseg convert-weights` records it in the sidecar.
        takes_arrays: the converter receives the values as read (numpy arrays from a ``.pdparams``) instead of
            torch tensors.
    """

    name: str
    source: str
    family: str
    layout: KeySignature
    recognise: KeySignature
    convert: Converter
    reference: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    takes_arrays: bool = False


# Normalisation, as each release's configs set it (all read RGB images in 0-255 and divide by 255 before
# normalising, except semseg, which states mean/std in 0-255 directly): NVIDIA/semantic-segmentation ImageNet
# statistics (config.py DATASET.MEAN/STD); PaddleSeg CityscapesSOTA ImageNet statistics (explicit Normalize in
# configs/mscale_ocr_cityscapes_autolabel_mapillary*.yml, not PaddleSeg's 0.5/0.5 default); PSANet_paddle
# PaddleSeg's default (configs/_base_/cityscapes.yml sets no mean/std); hszhao/semseg ImageNet statistics x 255.
#
# Order is detection order: the Paddle layout first (its key names are unmistakable), then NVIDIA's `module.`
# HRNet + OCR keys, semseg's PSANet, and a bare ImageNet HRNet last (its keys are the most generic).
FORMATS: tuple[CheckpointFormat, ...] = (
    CheckpointFormat("paddle_mscale_ocr", "paddle", "mscale_ocr", is_paddle_layout, is_paddle_mscale_layout,
                     convert_paddle_state_dict, "PaddleSeg contrib/CityscapesSOTA MscaleOCRNet (HRNet_W48_NV)",
                     takes_arrays=True),
    CheckpointFormat("paddle_psanet", "paddle", "psanet", is_paddle_layout, is_paddle_psanet_layout,
                     convert_paddle_psanet_state_dict, "justld/PSANet_paddle PSANet (ResNet50_vd OS8)",
                     mean=HALF_255, std=HALF_255, takes_arrays=True),
    CheckpointFormat("nvidia_mscale_ocr", "nvidia", "mscale_ocr", is_nvidia_layout, _always,
                     convert_nvidia_state_dict, "NVIDIA/semantic-segmentation ocrnet.HRNet_Mscale"),
    CheckpointFormat("semseg_psanet", "semseg", "psanet", is_semseg_psanet_layout, _always,
                     convert_semseg_psanet_state_dict, "hszhao/semseg PSANet"),
    CheckpointFormat("hrnet_imagenet", "hrnet_imagenet", "hrnet_backbone", is_hrnet_imagenet_layout, _always,
                     convert_hrnet_imagenet_state_dict, "HRNet-Image-Classification (ImageNet HRNet backbone)"),
)  # fmt: skip

SOURCES = ("nvidia", "paddle", "semseg", "hrnet_imagenet", NATIVE)  # the order `--from` lists them in

# How the message about a state dict that no format of its source recognises names the source and its models.
_SOURCE_TITLES = {"paddle": ("PaddleSeg", "MscaleOCRNet/OCRNet nor PSANet")}


def check_source(source: str) -> None:
    """Raise `WeightsError` unless ``source`` is one of `SOURCES`."""
    if source not in SOURCES:
        raise WeightsError(f"unknown weights source {source!r}; expected one of {', '.join(SOURCES)} or 'auto'")


def detect_source(state_dict: Mapping[str, Any]) -> str:
    """Name the checkpoint layout from its keys.

    Returns:
        ``"paddle"`` (``_batch_norm``/``_mean``/``_variance`` names), ``"nvidia"`` (MscaleOCR keys under
        DataParallel's ``module.``), ``"semseg"`` (hszhao/semseg PSANet: ``layer0`` stem with ``psa``/``cls``),
        ``"hrnet_imagenet"`` (bare HRNet ``stage4``/``transition1`` keys, classification neck), or
        ``"native"`` (attnseg's own layout; NVIDIA's MscaleOCR layout without ``module.`` is identical).
    """
    keys = [str(k) for k in state_dict]
    if not keys:
        raise WeightsError("empty state dict: nothing to detect")
    return next((record.source for record in FORMATS if record.layout(keys)), NATIVE)


def find_format(state_dict: Mapping[str, Any], source: str) -> CheckpointFormat | None:
    """The `FORMATS` record that converts a state dict read as ``source`` (None for ``"native"``).

    Raises:
        WeightsError: unknown source, or no format of that source recognises the keys.
    """
    check_source(source)
    if source == NATIVE:
        return None
    keys = [str(k) for k in state_dict]
    candidates = [record for record in FORMATS if record.source == source]
    found = next((record for record in candidates if record.recognise(keys)), None)
    if found is None:
        title, families = _SOURCE_TITLES.get(source, (source, " nor ".join(r.family for r in candidates)))
        raise WeightsError(f"{title} state dict belongs to neither {families} (no known key prefix)")
    return found


def paddle_family(state_dict: Mapping[str, Any]) -> str:
    """``"mscale_ocr"`` (MscaleOCRNet / OCRNet-HRNet_W48_NV) or ``"psanet"`` for a PaddleSeg state dict."""
    return find_format(state_dict, "paddle").family


def _to_tensors(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v if torch.is_tensor(v) else torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}


def convert_state_dict(state_dict: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """Remap a foreign state dict onto attnseg's layout with the converter that lives beside the model.

    Args:
        state_dict: as returned by `read_checkpoint_file`, or a whole training checkpoint whose ``state_dict``
            entry holds it (as NVIDIA's released `.pth` files do).
        source: one of `SOURCES` (see `detect_source`).

    Returns:
        Key -> torch tensor in attnseg's layout.

    Raises:
        WeightsError: unknown source, or the converter rejected a key or shape.
    """
    state_dict = inner_state_dict(state_dict)
    record = find_format(state_dict, source)
    try:
        if record is None:
            return _to_tensors(state_dict)
        return record.convert(state_dict if record.takes_arrays else _to_tensors(state_dict))
    except (KeyError, ValueError, TypeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise WeightsError(f"cannot convert {source} state dict: {message}") from error


__all__ = [
    "FORMATS",
    "NATIVE",
    "SOURCES",
    "CheckpointFormat",
    "check_source",
    "convert_state_dict",
    "detect_source",
    "find_format",
    "paddle_family",
]
