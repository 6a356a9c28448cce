"""Training-state checkpoints (exact resume) written atomically, read without executing code, and RNG state capture.

A training state holds everything a run needs to continue as if never stopped: model, optimiser, scheduler,
grad scaler and EMA states, the iteration, the sampler position (epoch, batch within it), the best metric, and
the RNG states of Python, NumPy and torch of *every* process. Files are written through `attnseg.fileio` (a
temporary beside the final name, fsynced, then renamed), so a crash mid-write leaves the previous checkpoint
intact.

Everything in a state is a tensor, a number, a string, None or a list/tuple/dict of those, so that it loads with
``torch.load(weights_only=True)``: a crafted ``training_state.pt`` cannot run code, it is refused with a message
naming the file and the global it asked for. NumPy's generator state (which holds an ndarray) is stored as a
tensor plus plain values (`capture_rng_state`).

The deployable weights (``best`` / ``last``) are saved separately with `attnseg.weights.save_checkpoint`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnseg.errors import WeightsError
from attnseg.fileio import atomic_path

TRAINING_STATE_NAME = "training_state.pt"
TRAINING_STATE_FORMAT = "attnseg-training-state/2"
# Format 1 stored NumPy's RNG state as an ndarray; it still loads, with exactly the NumPy globals that takes.
_LEGACY_FORMATS = ("attnseg-training-state/1",)
_REQUIRED_KEYS = ("model", "optimizer", "scaler", "iteration", "epoch", "batch_in_epoch", "best_miou",
                  "best_iteration")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file next to `path`, fsync, then rename over `path` (`attnseg.fileio`)."""
    path = Path(path)
    with atomic_path(path, durable=True) as temporary:
        with open(temporary, "wb") as stream:
            torch.save(obj, stream)
    return path


def capture_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch (CPU and CUDA) generator states, as tensors and plain values."""
    version, internal, gauss_next = random.getstate()
    name, key, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Sets the generators to a state from `capture_rng_state` (or the ndarray form older states held)."""
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    numpy_state = state["numpy"]
    if isinstance(numpy_state, Mapping):
        key = numpy_state["key"].numpy().astype(np.uint32)
        numpy_state = (numpy_state["bit_generator"], key, numpy_state["pos"], numpy_state["has_gauss"],
                       numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state_path(run_dir: str | Path) -> Path:
    """Where a run folder keeps its training state."""
    return Path(run_dir) / "checkpoints" / TRAINING_STATE_NAME


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Writes a training state dict atomically and durably (see module docstring for its keys)."""
    return atomic_torch_save(state, path)


def _legacy_numpy_globals() -> list[Any]:
    """The NumPy globals a format-1 state needs for its RNG ndarray: array reconstruction and dtypes only."""
    from numpy._core import multiarray

    return [np.ndarray, np.dtype, np.dtypes.UInt32DType, multiarray._reconstruct,
            (multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Reads a training state with ``torch.load(weights_only=True)``: tensors and plain containers only.

    Raises:
        WeightsError: the file is missing, truncated, not a torch file, asks for a global outside the allowed
            ones (the message names it), or is not an attnseg training state.
    """
    from attnseg.weights import torch_load_weights_only

    path = Path(path)
    with torch.serialization.safe_globals(_legacy_numpy_globals()):
        state = torch_load_weights_only(path, what="training state")
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: not an attnseg training state (a {type(state).__name__}, expected a dict)")
    found = state.get("format")
    if found != TRAINING_STATE_FORMAT and found not in _LEGACY_FORMATS:
        raise WeightsError(f"{path}: not an attnseg training state (format {found!r}, expected "
                           f"{TRAINING_STATE_FORMAT!r})")
    missing = [key for key in _REQUIRED_KEYS if key not in state]
    if missing:
        raise WeightsError(f"{path}: training state lacks {', '.join(missing)} (the file is damaged)")
    return dict(state)
