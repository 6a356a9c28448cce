"""Activation checkpointing for the model families: run a sub-module so that its activations are recomputed in the
backward pass instead of kept from the forward pass.

`checkpointed(module, *inputs)` wraps `torch.utils.checkpoint.checkpoint` (non-reentrant: works with inputs that need
no gradient, with DistributedDataParallel and with outputs of any structure) and fixes the one way a recomputed
forward differs from the first one here: BatchNorm in training mode updates its running statistics (and
``num_batches_tracked``) on every call, so the recomputation would update them a second time. During recomputation the
norm layers of the module update throw-away copies of those buffers (`FrozenNormStatistics`): they normalise with
the batch statistics exactly as in the first forward and the real buffers keep the first forward's update. Dropout
draws the same masks in both passes because checkpoint saves and restores the RNG state (``preserve_rng_state``, its
default), and autocast runs the recomputation in the first forward's precision.

A model that supports checkpointing has ``set_grad_checkpointing(enabled=True)`` (the timm convention);
`supports_grad_checkpointing` tells whether a model has it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


class FrozenNormStatistics:
    """Context manager: inside it, the BatchNorm layers of `module` update scratch copies of their running
    statistics and ``num_batches_tracked``; on exit the original buffers are back, untouched. With ``active=False``
    it does nothing.

    Scratch copies rather than switching the statistics off: batch_norm with running statistics saves them for its
    backward, and checkpoint requires the recomputation to save exactly what the first forward saved. A class rather
    than `contextlib` so that model code keeps to torch and the small standard-library set it may use.
    """

    def __init__(self, module: nn.Module, active: bool = True):
        self.module = module if active else None
        self.saved: list[tuple[nn.Module, dict[str, torch.Tensor]]] = []

    def __enter__(self) -> FrozenNormStatistics:
        if self.module is None:
            return self
        for norm in self.module.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training and norm.track_running_stats:
                originals = {name: getattr(norm, name) for name in _STATISTICS if getattr(norm, name) is not None}
                self.saved.append((norm, originals))
                for name, buffer in originals.items():
                    setattr(norm, name, buffer.clone())
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # Also reached when checkpoint stops a recomputation early (it raises inside this block).
        for norm, originals in self.saved:
            for name, buffer in originals.items():
                setattr(norm, name, buffer)
        self.saved = []


def checkpointed(function: Callable[..., Any], *inputs: Any, owner: nn.Module | None = None) -> Any:
    """``function(*inputs)`` with its activations recomputed in the backward pass (see the module docstring).

    Args:
        function: a module, or a function of modules (e.g. a stem made of several layers of a model).
        inputs: its positional arguments (tensors, or anything checkpoint passes through).
        owner: the module whose BatchNorm layers `function` runs (default: `function` itself when it is a module);
            their running statistics are left alone during recomputation.

    Without autograd (``torch.no_grad``, inference) the function simply runs: there is nothing to save memory on.
    """
    if not torch.is_grad_enabled():
        return function(*inputs)
    scope = owner if owner is not None else function
    if not isinstance(scope, nn.Module):
        raise TypeError("checkpointed: pass owner= (the module whose layers the function runs)")

    def contexts() -> tuple[FrozenNormStatistics, FrozenNormStatistics]:
        return FrozenNormStatistics(scope, active=False), FrozenNormStatistics(scope)

    return checkpoint(function, *inputs, use_reentrant=False, context_fn=contexts)


def supports_grad_checkpointing(model: nn.Module) -> bool:
    """Whether `model` (already unwrapped from DDP) has ``set_grad_checkpointing``."""
    return callable(getattr(model, "set_grad_checkpointing", None))
