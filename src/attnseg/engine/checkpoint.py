"""Training-state checkpoints (exact resume) written atomically, and RNG state capture.

A training state holds everything a run needs to continue as if never stopped: model, optimiser, scheduler,
grad scaler and EMA states, the iteration, the sampler position (epoch, batch within it), the best metric, and
the RNG states of Python, NumPy and torch of *every* process. Files are written to a temporary name in the same
folder and renamed over the old one (``os.replace`` is atomic on POSIX), so a crash mid-write leaves the previous
checkpoint intact.

The deployable weights (``best`` / ``last``) are saved separately with `attnseg.weights.save_checkpoint`.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAINING_STATE_NAME = "training_state.pt"


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file next to `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass
    return path


def capture_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy and torch (CPU and CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / TRAINING_STATE_NAME


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Writes a training state dict atomically (see module docstring for its keys)."""
    return atomic_torch_save(state, path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Reads a training state. It holds optimiser/RNG objects, so it is unpickled with ``weights_only=False``:
    load only training states this program wrote."""
    return torch.load(path, map_location="cpu", weights_only=False)
