"""Reading, converting, loading and saving model weights.

Three jobs, three groups of functions:

* Foreign checkpoints (NVIDIA ``.pth``, PaddleSeg ``.pdparams``, semseg ``.pth``, ImageNet HRNet ``.pth``):
  `read_checkpoint_file` reads any of them without executing code from the file, `detect_source` names the
  layout from its keys, `convert_state_dict` remaps it with the converter that lives beside the model, and
  `load_weights` / `load_pretrained` put the result into a model and say what matched (`LoadReport`).
* Native checkpoints: `save_checkpoint` writes ``<path>.safetensors`` plus a ``<path>.json`` sidecar that
  records how to rebuild the model and how to preprocess images for it; `load_model` rebuilds it.

Call graph of a load::

    load_weights(model, path)
      read_checkpoint_file(path)          # torch weights_only / restricted pickle / safetensors
      detect_source(state)                # "nvidia" | "paddle" | "semseg" | "hrnet_imagenet" | "native"
      convert_state_dict(state, source)   # -> our key layout, torch tensors
      compare with model.state_dict()     # -> LoadReport; strict raises WeightsError
"""

from __future__ import annotations

import json
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.errors import WeightsError

SOURCES = ("nvidia", "paddle", "semseg", "hrnet_imagenet", "native")

TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt")
PADDLE_SUFFIXES = (".pdparams",)
SAFETENSORS_SUFFIXES = (".safetensors",)

SIDECAR_FORMAT = "attnseg.checkpoint"
SIDECAR_FORMAT_VERSION = 1

# paddle.save adds this bookkeeping entry (structured name -> parameter name) next to the arrays.
_PADDLE_NAME_TABLE = "StructuredToParameterName@@"
# paddle.save with pickle protocol 2/3 splits arrays over 4 GB into slices listed in this entry.
_PADDLE_BIG_PARAMS = "UnpackBigParamInfor@@"


# ---------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------
def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    """What a numpy state-dict pickle may reference: array reconstruction and plain containers, nothing else."""
    from numpy._core import multiarray, numeric  # numpy >= 2; pickles from numpy 1.x name numpy.core.*

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): __import__("codecs").encode,  # protocol-2 pickles store array bytes as latin-1 text
        ("collections", "OrderedDict"): OrderedDict,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = numeric._frombuffer  # pickle protocol 5 array layout
    for name in ("tuple", "list", "dict", "set", "frozenset", "bytearray"):
        allowed[("builtins", name)] = getattr(__import__("builtins"), name)
        allowed[("__builtin__", name)] = allowed[("builtins", name)]
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only whitelisted globals, so a crafted file cannot call e.g. ``os.system``."""

    def __init__(self, file, path: Path) -> None:
        super().__init__(file)
        self._path = path
        self._allowed = _allowed_pickle_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise WeightsError(
                f"{self._path}: refusing to unpickle global '{module}.{name}': a .pdparams file may only hold "
                "numpy arrays in plain containers (the file may be corrupted or malicious)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise WeightsError(f"{self._path}: refusing persistent pickle reference {pid!r} in a .pdparams file")


def _read_paddle_pickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            content = _RestrictedUnpickler(file, path).load()
    except WeightsError:
        raise
    except Exception as error:  # truncated file, unknown opcode, ...: report, never fall back to plain pickle
        reason = " ".join(str(error).split()) or type(error).__name__
        raise WeightsError(f"{path}: cannot read as a PaddlePaddle .pdparams pickle ({reason[:300]})") from None
    if not isinstance(content, dict):
        raise WeightsError(f"{path}: expected a dict of name -> array, found {type(content).__name__}")
    content = dict(content)
    content.pop(_PADDLE_NAME_TABLE, None)
    big_params = content.pop(_PADDLE_BIG_PARAMS, None)
    if big_params:
        try:
            for key, info in big_params.items():
                parts = [np.asarray(content.pop(part)) for part in info["slices"]]
                content[key] = np.concatenate([part.reshape(-1) for part in parts]).reshape(info["OriginShape"])
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise WeightsError(f"{path}: malformed {_PADDLE_BIG_PARAMS} entry ({error!r})") from None
    state: dict[str, Any] = {}
    for key, value in content.items():
        # Paddle pickles a tensor as the tuple (parameter name, ndarray) when it was not converted beforehand.
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]
        if not isinstance(value, (np.ndarray, np.generic)):
            raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a numpy array")
        state[str(key)] = np.asarray(value)
    return state


def _inner_state_dict(content: Any) -> Any:
    """The state dict inside a training checkpoint (``{"state_dict": ..., "optimizer": ..., "epoch": ...}``), or
    `content` itself when it holds no such container."""
    for container in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(content, Mapping) and isinstance(content.get(container), Mapping):
            return content[container]
    return content


def _unwrap_torch_checkpoint(content: Any, path: Path) -> dict[str, Any]:
    content = _inner_state_dict(content)
    if not isinstance(content, Mapping) or not all(torch.is_tensor(v) for v in content.values()):
        raise WeightsError(f"{path}: no state dict (name -> tensor) found in this checkpoint")
    return dict(content)


def _weights_only_reason(error: pickle.UnpicklingError) -> str:
    """The one informative line of torch's weights_only refusal (it also advises ``weights_only=False``: never)."""
    text = str(error)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return f"it asks for the global '{match.group(1)}', which a weights file may not import"
    match = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|Check the documentation|$)", text, re.S)
    detail = match.group(1) if match else text.strip().splitlines()[-1] if text.strip() else "unreadable pickle"
    return f"not a valid weights-only pickle ({' '.join(detail.split())})"


def torch_load_weights_only(path: str | os.PathLike, *, what: str = "PyTorch checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, every failure turned into a one-line `WeightsError`.

    Only tensors, numbers, strings and plain containers (plus globals the caller allowlisted with
    ``torch.serialization.safe_globals``) are rebuilt, so a crafted file cannot run code.

    Args:
        path: the file.
        what: what the file should be, for the message (e.g. "training state").

    Raises:
        WeightsError: missing, truncated or corrupt file, or a pickle asking for a forbidden global (named).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file ({what})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(f"{path}: refusing to load this {what}: {_weights_only_reason(error)}") from None
    except Exception as error:  # noqa: BLE001 - truncated zip, text file, ...: every way a file can be damaged
        reason = " ".join(str(error).split()) or type(error).__name__
        if "central directory" in reason:
            reason = "the zip archive is truncated or corrupt"
        raise WeightsError(f"{path}: cannot read as a {what} ({type(error).__name__}: {reason[:300]})") from None


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as error:  # noqa: BLE001 - SafetensorError, header JSON errors, OSError: a damaged file
        reason = " ".join(str(error).split()) or type(error).__name__
        raise WeightsError(f"{path}: cannot read as a safetensors file ({reason[:300]})") from None


def read_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read the state dict of a checkpoint file without running code stored in it.

    ``.pth/.pt/.tar/.bin/.ckpt`` go through ``torch.load(weights_only=True)`` (a training checkpoint's
    ``state_dict`` entry is returned); ``.pdparams`` through a pickle reader that only rebuilds numpy arrays
    and plain containers; ``.safetensors`` through safetensors.

    Args:
        path: checkpoint file.

    Returns:
        Key -> tensor (torch and safetensors files) or key -> numpy array (``.pdparams``), keys as stored.

    Raises:
        WeightsError: unknown suffix, unreadable file, or a pickle that references anything besides arrays
            (the message names the file and the forbidden global).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    suffix = path.suffix.lower()
    if suffix in PADDLE_SUFFIXES:
        return _read_paddle_pickle(path)
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in TORCH_SUFFIXES:
        return _unwrap_torch_checkpoint(torch_load_weights_only(path, what="PyTorch checkpoint"), path)
    known = ", ".join(TORCH_SUFFIXES + PADDLE_SUFFIXES + SAFETENSORS_SUFFIXES)
    raise WeightsError(f"{path}: unknown checkpoint suffix {suffix!r}; expected one of {known}")


# ---------------------------------------------------------------------------------------------------------
# Recognising and converting layouts
# ---------------------------------------------------------------------------------------------------------
def _strip_wrapper(key: str) -> str:
    return key.removeprefix("module.")


def _is_paddle_layout(keys: Sequence[str]) -> bool:
    return any("._batch_norm." in key or key.endswith(("._mean", "._variance")) for key in keys)


def paddle_family(state_dict: Mapping[str, Any]) -> str:
    """``"mscale_ocr"`` (MscaleOCRNet / OCRNet-HRNet_W48_NV) or ``"psanet"`` for a PaddleSeg state dict."""
    keys = list(state_dict)
    if any(k.startswith(("ocrnet.", "scale_attn.")) or ".spatial_ocr." in k or "conv_layer1_1" in k for k in keys):
        return "mscale_ocr"
    if any(k.startswith("psa.") for k in keys):
        return "psanet"
    raise WeightsError("PaddleSeg state dict belongs to neither MscaleOCRNet/OCRNet nor PSANet (no known key prefix)")


def detect_source(state_dict: Mapping[str, Any]) -> str:
    """Name the checkpoint layout from its keys.

    Returns:
        ``"paddle"`` (``_batch_norm``/``_mean``/``_variance`` names), ``"nvidia"`` (MscaleOCR keys under
        DataParallel's ``module.``), ``"semseg"`` (hszhao/semseg PSANet: ``layer0`` stem with ``psa``/``cls``),
        ``"hrnet_imagenet"`` (bare HRNet ``stage4``/``transition1`` keys, classification neck), or
        ``"native"`` (attnseg's own layout; NVIDIA's MscaleOCR layout without ``module.`` is identical).
    """
    raw_keys = [str(k) for k in state_dict]
    keys = [_strip_wrapper(k) for k in raw_keys]
    if not keys:
        raise WeightsError("empty state dict: nothing to detect")
    if _is_paddle_layout(keys):
        return "paddle"
    is_mscale = any(k.startswith("scale_attn.") or k.startswith("ocr.ocr_distri_head.") for k in keys)
    if is_mscale:
        return "nvidia" if any(k.startswith("module.") for k in raw_keys) else "native"
    if any(k.startswith("layer0.") for k in keys) and any(k.startswith(("psa.", "cls.")) for k in keys):
        return "semseg"
    if any(k.startswith(("stage4.", "transition1.")) for k in keys):
        return "hrnet_imagenet"
    return "native"


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
    state_dict = _inner_state_dict(state_dict)
    try:
        if source == "native":
            return _to_tensors(state_dict)
        if source == "nvidia":
            from attnseg.models.mscale.model import convert_nvidia_state_dict

            return convert_nvidia_state_dict(_to_tensors(state_dict))
        if source == "paddle":
            if paddle_family(state_dict) == "mscale_ocr":
                from attnseg.models.mscale.paddle import convert_paddle_state_dict

                return convert_paddle_state_dict(state_dict)
            from attnseg.models.psanet import convert_paddle_psanet_state_dict

            return convert_paddle_psanet_state_dict(state_dict)
        if source == "semseg":
            from attnseg.models.psanet import convert_semseg_psanet_state_dict

            return convert_semseg_psanet_state_dict(_to_tensors(state_dict))
        if source == "hrnet_imagenet":
            from attnseg.models.mscale.paddle import convert_hrnet_imagenet_state_dict

            return convert_hrnet_imagenet_state_dict(_to_tensors(state_dict))
    except (KeyError, ValueError, TypeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise WeightsError(f"cannot convert {source} state dict: {message}") from error
    raise WeightsError(f"unknown weights source {source!r}; expected one of {', '.join(SOURCES)} or 'auto'")


# ---------------------------------------------------------------------------------------------------------
# Loading into a model
# ---------------------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a model.

    Attributes:
        path: the checkpoint file (empty when loaded from memory).
        source: the layout it was read as (`SOURCES`).
        loaded: model keys that received a value.
        missing: model keys the checkpoint did not provide (they keep their current values).
        unexpected: converted checkpoint keys the model does not have (ignored).
        shape_mismatches: ``(key, checkpoint shape, model shape)`` for keys present in both (not loaded).
    """

    path: str
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every model key was loaded and nothing was left over."""
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def summary(self, max_keys: int = 10) -> str:
        """Readable multi-line summary; long key lists are shortened to ``max_keys`` entries each."""
        total = len(self.loaded) + len(self.missing) + len(self.shape_mismatches)
        lines = [f"{self.path or '<state dict>'} ({self.source}): loaded {len(self.loaded)}/{total} model entries"]

        def listing(title: str, items: list[str]) -> None:
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {item}" for item in items[:max_keys])
                if len(items) > max_keys:
                    lines.append(f"    ... and {len(items) - max_keys} more")

        mismatches = [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.shape_mismatches]
        listing("shape mismatches, skipped", mismatches)
        listing("missing from checkpoint", _collapse_keys(self.missing))
        listing("unexpected in checkpoint", _collapse_keys(self.unexpected))
        return "\n".join(lines)


def _collapse_keys(keys: list[str]) -> list[str]:
    """Group keys by module prefix so that a missing head reads as one line, not dozens."""
    groups: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(key.split(".")[:2])
        groups[prefix] = groups.get(prefix, 0) + 1
    return [f"{prefix}.* ({count} entries)" if count > 1 else next(k for k in keys if k.startswith(prefix))
            for prefix, count in groups.items()]


def _resolve_source(state_dict: Mapping[str, Any], model: nn.Module, source: str) -> str:
    if source != "auto":
        if source not in SOURCES:
            raise WeightsError(f"unknown weights source {source!r}; expected one of {', '.join(SOURCES)} or 'auto'")
        return source
    if set(map(str, state_dict)) == set(model.state_dict()):
        return "native"
    return detect_source(state_dict)


def load_state_dict_report(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    path: str = "",
    source: str = "native",
    strict: bool = True,
) -> LoadReport:
    """Load an already converted state dict; the loading step shared by `load_weights` and `load_pretrained`.

    Entries whose shape differs from the model's are never loaded (listed in ``shape_mismatches``).

    Raises:
        WeightsError: ``strict`` and the checkpoint does not match the model exactly.
    """
    own = model.state_dict()
    report = LoadReport(path=path, source=source)
    usable: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.shape_mismatches.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            usable[key] = value
    report.missing = [key for key in own if key not in state_dict]
    report.loaded = [key for key in own if key in usable]
    if strict and not report.complete:
        raise WeightsError(f"checkpoint does not match {type(model).__name__} exactly:\n{report.summary()}")
    model.load_state_dict(usable, strict=False)
    return report


def load_weights(model: nn.Module, path: str | os.PathLike, source: str = "auto", strict: bool = True) -> LoadReport:
    """Load a checkpoint of any supported layout into ``model``.

    Args:
        model: the model to fill, built with the matching architecture and class count.
        path: checkpoint file (see `read_checkpoint_file`).
        source: ``"auto"`` (detect from keys) or one of `SOURCES`.
        strict: require every model entry to be loaded and nothing left over.

    Raises:
        WeightsError: unreadable or unsafe file, conversion failure, or (``strict``) a mismatch.
    """
    state = read_checkpoint_file(path)
    resolved = _resolve_source(state, model, source)
    try:
        converted = convert_state_dict(state, resolved)
        return load_state_dict_report(model, converted, path=str(path), source=resolved, strict=strict)
    except WeightsError as error:
        raise WeightsError(f"{path}: {error}") from error


def load_pretrained(
    model: nn.Module, path: str | os.PathLike, source: str = "auto", verbose: bool = True
) -> LoadReport:
    """Initialise ``model`` from a checkpoint trained for another task or class count.

    Loads every entry whose name and shape match (e.g. a Mapillary-trained classifier with 65 classes is
    skipped for a 19-class model, as is an ImageNet backbone's missing head), prints `LoadReport.summary`.

    Raises:
        WeightsError: unreadable or unsafe file, or nothing at all could be loaded.
    """
    report = load_weights(model, path, source=source, strict=False)
    if verbose:
        print(report.summary())
    if not report.loaded:
        raise WeightsError(f"{path}: no entry of this checkpoint fits {type(model).__name__}:\n{report.summary()}")
    return report


# ---------------------------------------------------------------------------------------------------------
# Native checkpoints: <name>.safetensors + <name>.json
# ---------------------------------------------------------------------------------------------------------
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

    import attnseg

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
        attnseg_version=attnseg.__version__,
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
    "LoadReport",
    "SOURCES",
    "checkpoint_paths",
    "convert_state_dict",
    "detect_source",
    "load_model",
    "load_pretrained",
    "load_state_dict_report",
    "load_weights",
    "paddle_family",
    "read_checkpoint_file",
    "read_sidecar",
    "save_checkpoint",
]
