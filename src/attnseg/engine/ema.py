"""Exponential moving average of model weights (kept in fp32 on the model's device)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """``ema = decay * ema + (1 - decay) * weights`` after each optimiser step; buffers (BN statistics) are copied.

    Args:
        model: the (unwrapped) training model; a deep copy becomes the averaged model, in eval mode.
        decay: e.g. 0.9998; the effective decay ramps as ``min(decay, (1 + n) / (10 + n))`` over the first
            updates so that early weights do not dominate.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self._parameter_names = {name for name, _ in self.module.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        source = model.state_dict()
        for name, value in self.module.state_dict().items():
            current = source[name].detach()
            if value.dtype.is_floating_point and name in self._parameter_names:
                value.mul_(decay).add_(current.to(value.dtype), alpha=1.0 - decay)
            else:
                value.copy_(current)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.updates = state["updates"]
        self.module.load_state_dict(state["module"])
