"""How a training step fits in memory: micro-batches (gradient accumulation, `train.accumulate`) and the model's
activation checkpointing (`train.grad_checkpoint`). The `Trainer` uses these; see `Trainer.run_step` for what
accumulation keeps equal to the whole-batch step."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from attnseg.errors import AttnsegError
from attnseg.models import unwrap_model as unwrap
from attnseg.models.checkpointing import supports_grad_checkpointing


def enable_grad_checkpointing(model: nn.Module) -> None:
    """Switches on the activation checkpointing of `model` (unwrapped from DDP).

    Raises:
        AttnsegError: the model has no ``set_grad_checkpointing`` (the message names its class).
    """
    inner = unwrap(model)
    if not supports_grad_checkpointing(inner):
        raise AttnsegError(f"train.grad_checkpoint: {type(inner).__name__} does not support activation checkpointing "
                           "(only the HRNet-OCR models do); set train.grad_checkpoint=false")
    inner.set_grad_checkpointing(True)


def grouped(loader: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive lists of `size` loader batches (the micro-batches of one step); an incomplete tail is dropped
    (the sampler's epochs hold whole steps, so there is none)."""
    group: list[dict[str, Any]] = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


def check_micro_batches(loader: Any, sampler: Any, accumulate: int) -> None:
    """The loader must yield micro-batches: `accumulate` of them make the sampler's per-process batch."""
    if accumulate < 1:
        raise AttnsegError(f"accumulate must be >= 1, got {accumulate}")
    loader_batch, step_batch = getattr(loader, "batch_size", None), getattr(sampler, "batch_size", None)
    if loader_batch is not None and step_batch is not None and loader_batch * accumulate != step_batch:
        raise AttnsegError(f"the loader's batch of {loader_batch} x accumulate {accumulate} is not the sampler's "
                           f"batch of {step_batch} per step; build the loader with batch {step_batch} / {accumulate}")
