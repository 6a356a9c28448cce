"""Native checkpoints: ``<name>.safetensors`` (the tensors) plus a ``<name>.json`` sidecar that records how to rebuild
the model and how to preprocess images for it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg._version import __version__
from attnseg.errors import WeightsError
from attnseg.weights.load import load_weights

SIDECAR_FORMAT = "attnseg.checkpoint"
SIDECAR_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelDescription:
    """What a user of a model file needs besides its numbers: which network, its classes and its preprocessing.

    Shared by native checkpoints (`CheckpointSidecar`) and exported models (`attnseg.export.onnx.ExportSidecar`).

    Attributes:
        model: registered model name (`attnseg.models.list_models`).
        model_kwargs: builder keyword arguments except ``num_classes``.
        num_classes: output classes.
        class_names: one name per class index.
        palette: one ``[r, g, b]`` (0-255) per class index.
        mean, std: per-channel normalisation ``(pixel - mean) / std`` on 0-255 values, in ``channel_order``.
        channel_order: ``"RGB"``: the image channel order the model was trained with.
    """

    model: str
    model_kwargs: dict[str, Any]
    num_classes: int
    class_names: list[str]
    palette: list[list[int]]
    mean: list[float]
    std: list[float]
    channel_order: str = "RGB"


@dataclass(frozen=True)
class CheckpointSidecar(ModelDescription):
    """Everything besides the tensors needed to use a native checkpoint (the ``.json`` beside the weights).

    Attributes (beyond `ModelDescription`):
        attnseg_version: version that wrote the file.
        extra: free-form provenance (source checkpoint, training run, metrics...).
    """

    attnseg_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json_dict(self, weights_file: str) -> dict[str, Any]:
        return {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_FORMAT_VERSION,
            "attnseg_version": self.attnseg_version,
            "model": self.model,
            "model_kwargs": self.model_kwargs,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "palette": self.palette,
            "preprocessing": {
                "mean": self.mean,
                "std": self.std,
                "value_range": [0, 255],
                "channel_order": self.channel_order,
            },
            "weights": weights_file,
            "extra": self.extra,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], path: Path) -> CheckpointSidecar:
        if data.get("format") != SIDECAR_FORMAT:
            raise WeightsError(f"{path}: not an attnseg checkpoint sidecar (format {data.get('format')!r})")
        version = data.get("format_version", 0)
        if not isinstance(version, int) or version > SIDECAR_FORMAT_VERSION:
            raise WeightsError(f"{path}: sidecar format_version {version!r} is not one this attnseg reads "
                               f"(an integer up to {SIDECAR_FORMAT_VERSION})")
        try:
            pre = data["preprocessing"]
            return cls(
                model=str(data["model"]),
                model_kwargs=dict(data.get("model_kwargs") or {}),
                num_classes=int(data["num_classes"]),
                class_names=[str(n) for n in data["class_names"]],
                palette=[[int(c) for c in color] for color in data["palette"]],
                mean=[float(v) for v in pre["mean"]],
                std=[float(v) for v in pre["std"]],
                channel_order=str(pre.get("channel_order", "RGB")),
                attnseg_version=str(data.get("attnseg_version", "")),
                extra=dict(data.get("extra") or {}),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise WeightsError(f"{path}: malformed checkpoint sidecar ({error!r})") from None


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights, sidecar)`` paths of a native checkpoint: ``<base>.safetensors`` and ``<base>.json``.

    ``path`` may be the base name or either file.
    """
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sidecar_text(data: dict[str, Any]) -> str:
    """Indented JSON with one palette colour per line (instead of one number per line)."""
    rows = data["palette"]
    placeholders = {f"@palette-row-{i}@": json.dumps(row) for i, row in enumerate(rows)}
    text = json.dumps({**data, "palette": list(placeholders)}, indent=2)
    for placeholder, row in placeholders.items():
        text = text.replace(f'"{placeholder}"', row)
    return text + "\n"


def _atomic_write(target: Path, write: Any) -> None:
    """Write through `attnseg.fileio` (temporary beside the target, fsync, rename): readers never see a partial
    file, and a crash leaves the previous one."""
    from attnseg.fileio import atomic_path

    with atomic_path(target, durable=True) as temporary:
        write(str(temporary))
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the usual file permissions


def _validate_preprocessing(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {mean} and {std}")
    if any(v <= 0 for v in std):
        raise ValueError(f"std values must be positive, got {std}")
    if max(mean) <= 1.0 and max(std) <= 1.0:
        raise ValueError(f"mean {mean} / std {std} look like 0-1 values; the sidecar records 0-255 values (x255)")
    return mean, std


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_name: str,
    model_kwargs: Mapping[str, Any] | None,
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]] | np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write a native checkpoint: ``<path>.safetensors`` (weights) and ``<path>.json`` (how to use them).

    Both files are written atomically (temporary file + rename), the sidecar last.

    Args:
        path: base name (a ``.safetensors``/``.json`` suffix is dropped).
        model: model whose ``state_dict()`` is saved.
        model_name: registered builder name, used by `load_model` to rebuild it.
        model_kwargs: builder keyword arguments other than ``num_classes`` (JSON-serialisable).
        class_names: one per output class; their count is recorded as ``num_classes``.
        palette: one RGB colour (0-255) per class.
        mean, std: input normalisation on 0-255 RGB values, e.g. ImageNet ``[123.675, 116.28, 103.53]`` /
            ``[58.395, 57.12, 57.375]``.
        extra: free-form JSON-serialisable provenance.

    Returns:
        The weights and sidecar paths.
    """
    from safetensors.torch import save_file

    weights_path, sidecar_path = checkpoint_paths(path)
    kwargs = dict(model_kwargs or {})
    num_classes = len(class_names)
    if "num_classes" in kwargs and int(kwargs.pop("num_classes")) != num_classes:
        raise ValueError(f"model_kwargs num_classes disagrees with {num_classes} class names")
    colors = np.asarray(palette).astype(int).tolist()
    if len(colors) != num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
        raise ValueError(f"palette needs {num_classes} RGB colours with values 0-255")
    mean_list, std_list = _validate_preprocessing(mean, std)
    sidecar = CheckpointSidecar(
        model=model_name,
        model_kwargs=json.loads(json.dumps(kwargs)),  # tuples -> lists now, so a reload sees the same values
        num_classes=num_classes,
        class_names=[str(n) for n in class_names],
        palette=colors,
        mean=mean_list,
        std=std_list,
        attnseg_version=__version__,
        extra=dict(extra or {}),
    )
    text = _sidecar_text(sidecar.to_json_dict(weights_path.name))
    # safetensors refuses tensors that share memory; a contiguous CPU copy of each entry is always accepted.
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
    metadata = {"format": "pt", "attnseg_model": model_name, "attnseg_sidecar": sidecar_path.name}
    _atomic_write(weights_path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    _atomic_write(sidecar_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return weights_path, sidecar_path


def read_sidecar(path: str | os.PathLike) -> CheckpointSidecar:
    """The `CheckpointSidecar` of a native checkpoint (``path``: base name, ``.json`` or ``.safetensors``)."""
    _, sidecar_path = checkpoint_paths(path)
    if not sidecar_path.is_file():
        raise WeightsError(
            f"{sidecar_path}: checkpoint sidecar not found (native checkpoints are a .safetensors + .json pair)"
        )
    try:
        data = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # ValueError: JSON syntax and undecodable bytes alike
        raise WeightsError(f"{sidecar_path}: cannot read checkpoint sidecar ({error})") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{sidecar_path}: a checkpoint sidecar is a JSON object, found {type(data).__name__}")
    return CheckpointSidecar.from_json_dict(data, sidecar_path)


def load_model(
    path: str | os.PathLike, device: str | torch.device | None = None
) -> tuple[nn.Module, CheckpointSidecar]:
    """Rebuild a model saved with `save_checkpoint`, in eval mode.

    Args:
        path: base name, or the ``.safetensors`` / ``.json`` file.
        device: where to put the model (default CPU).

    Returns:
        ``(model, sidecar)``; the sidecar carries class names, palette and the preprocessing mean/std.

    Raises:
        WeightsError: a file is missing or does not match the recorded model.
    """
    from attnseg.models import create_model

    weights_path, _ = checkpoint_paths(path)
    sidecar = read_sidecar(path)
    try:
        model = create_model(sidecar.model, num_classes=sidecar.num_classes, **sidecar.model_kwargs)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as error:
        # The sidecar's model name is only looked up in the registry and its kwargs only passed to that builder:
        # nothing in a sidecar is imported or evaluated.
        raise WeightsError(f"{weights_path}: cannot rebuild model {sidecar.model!r}: {error}") from None
    load_weights(model, weights_path, source="native", strict=True)
    model.eval()
    if device is not None:
        model.to(device)
    return model, sidecar


__all__ = [
    "CheckpointSidecar",
    "ModelDescription",
    "checkpoint_paths",
    "load_model",
    "read_sidecar",
    "save_checkpoint",
]
