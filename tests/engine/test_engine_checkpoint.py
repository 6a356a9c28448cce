"""Atomic training-state writes and RNG capture."""

import random

import numpy as np
import pytest
import torch

from attnseg.engine import checkpoint
from attnseg.engine.checkpoint import atomic_torch_save, capture_rng_state, load_training_state, restore_rng_state


def _state(**values):
    """The smallest dict `load_training_state` accepts, plus `values`."""
    state = {"format": checkpoint.TRAINING_STATE_FORMAT, "model": {}, "optimizer": {}, "scaler": {}, "iteration": 0,
             "epoch": 0, "batch_in_epoch": 0, "best_miou": float("-inf"), "best_iteration": -1}
    return {**state, **values}


def test_crash_mid_write_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "training_state.pt"
    atomic_torch_save(_state(iteration=1, w=torch.ones(3)), path)
    real_save = torch.save

    def crashing_save(obj, stream, *args, **kwargs):
        stream.write(b"partial garbage")  # some bytes reach the disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save(_state(iteration=2, w=torch.zeros(3)), path)
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    state = load_training_state(path)
    assert state["iteration"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["training_state.pt"]  # no temporary file left
    atomic_torch_save(_state(iteration=3), path)
    assert load_training_state(path)["iteration"] == 3


def test_rng_state_round_trip():
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
