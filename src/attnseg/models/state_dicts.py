"""Pieces shared by the checkpoint converters that live beside each model family.

Every converter is a pure function (foreign state dict in, attnseg state dict out); what several of them need is
here once: PaddlePaddle's batch-norm names, the test for a Paddle layout, tensor copies and the BatchNorm counters
that torch has and the other frameworks do not.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

# Paddle BN entry -> torch BN entry (Paddle calls the running statistics _mean/_variance).
PADDLE_BN_LEAVES = {"weight": "weight", "bias": "bias", "_mean": "running_mean", "_variance": "running_var"}


def is_paddle_layout(keys: Iterable[str]) -> bool:
    """Whether state-dict keys use Paddle's names (``._batch_norm.`` children, ``_mean``/``_variance`` statistics)."""
    return any("._batch_norm." in key or key.endswith(("._mean", "._variance")) for key in keys)


def as_tensor(value) -> torch.Tensor:
    """A detached copy of a tensor or numpy array (converters must not alias the source checkpoint)."""
    # torch.tensor copies, and unlike torch.as_tensor accepts the read-only arrays a pickle may hold without a warning.
    return value.detach().clone() if torch.is_tensor(value) else torch.tensor(value)


def add_missing_batches_tracked(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give every BatchNorm (a prefix with ``running_var``) a zero ``num_batches_tracked`` if it has none."""
    for key in [k for k in state if k.endswith(".running_var")]:
        state.setdefault(key[: -len("running_var")] + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return state


__all__ = ["PADDLE_BN_LEAVES", "add_missing_batches_tracked", "as_tensor", "is_paddle_layout"]
