"""Reading checkpoint files without running code stored in them.

``.pth/.pt/.tar/.bin/.ckpt`` go through ``torch.load(weights_only=True)``, ``.pdparams`` through a pickle reader
that rebuilds only numpy arrays in plain containers, ``.safetensors`` through safetensors. Every failure is one
`WeightsError` line naming the file.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnseg.errors import WeightsError

TORCH_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".ckpt")
PADDLE_SUFFIXES = (".pdparams",)
SAFETENSORS_SUFFIXES = (".safetensors",)

# paddle.save adds this bookkeeping entry (structured name -> parameter name) next to the arrays.
_PADDLE_NAME_TABLE = "StructuredToParameterName@@"
# paddle.save with pickle protocol 2/3 splits arrays over 4 GB into slices listed in this entry.
_PADDLE_BIG_PARAMS = "UnpackBigParamInfor@@"


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


def inner_state_dict(content: Any) -> Any:
    """The state dict inside a training checkpoint (``{"state_dict": ..., "optimizer": ..., "epoch": ...}``), or
    `content` itself when it holds no such container."""
    for container in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(content, Mapping) and isinstance(content.get(container), Mapping):
            return content[container]
    return content


def _unwrap_torch_checkpoint(content: Any, path: Path) -> dict[str, Any]:
    content = inner_state_dict(content)
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


__all__ = ["read_checkpoint_file", "torch_load_weights_only"]
