"""NVIDIA/semantic-segmentation checkpoints of the HRNet + OCR family: their key signature and converter.

Our `MscaleOCR` / `OCRNet` state-dict layout equals NVIDIA's (``backbone.*``, ``ocr.*``, ``scale_attn.*``) minus the
DataParallel ``module.`` prefix that their training script saves, so the converter only strips that prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

_MSCALE_PREFIXES = ("scale_attn.", "ocr.ocr_distri_head.")


def has_mscale_keys(keys: Iterable[str]) -> bool:
    """Whether state-dict keys (with or without ``module.``) are those of an HRNet + OCR (+ attention) model."""
    return any(key.removeprefix("module.").startswith(_MSCALE_PREFIXES) for key in keys)


def is_nvidia_layout(keys: Iterable[str]) -> bool:
    """Key signature of an NVIDIA release: HRNet + OCR keys under DataParallel's ``module.`` prefix.

    Without the prefix the layout is attnseg's own (native).
    """
    keys = list(keys)
    return has_mscale_keys(keys) and any(key.startswith("module.") for key in keys)


def convert_nvidia_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """State dict of an NVIDIA/semantic-segmentation checkpoint in our layout (which is theirs minus `module.`).

    Args:
        checkpoint: the loaded `.pth` (a dict with a ``"state_dict"`` entry, as `train.py` writes it) or a bare
            state dict, with or without the DataParallel ``module.`` prefix.

    Returns:
        A new dict that `MscaleOCR`/`OCRNet` of the matching width load with ``strict=True``.

    Raises:
        ValueError: the mapping holds no tensors (not a checkpoint).
    """
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a state dict (mapping of names to tensors), got {type(state).__name__}")
    converted = {key.removeprefix("module."): value for key, value in state.items() if torch.is_tensor(value)}
    if not converted:
        raise ValueError("the checkpoint holds no tensors; expected a dict with 'state_dict' or a bare state dict")
    return converted


__all__ = ["convert_nvidia_state_dict", "has_mscale_keys", "is_nvidia_layout"]
