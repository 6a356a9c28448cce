"""SGD (both references) or AdamW with per-group weight decay, and the polynomial ("poly") learning-rate schedule
with optional warm-up.

The schedule is a pure function of the iteration (`poly_lr`), so resuming needs only the iteration count; the
`LambdaLR` built from it is kept for its state_dict/step interface.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def poly_lr(
    iteration: int,
    *,
    base_lr: float,
    max_iters: int,
    power: float = 0.9,
    end_lr: float = 0.0,
    warmup_iters: int = 0,
    warmup_start_factor: float = 0.1,
) -> float:
    """Learning rate at `iteration` (0-based: the rate used by the step that makes iteration+1).

    Poly decay ``(base - end) * (1 - t / T) ** power + end`` (PaddleSeg ``PolynomialDecay``; NVIDIA's LambdaLR is
    the ``end_lr = 0`` case, stepped per epoch there and per iteration here). During the first `warmup_iters`
    the rate ramps linearly from ``warmup_start_factor * lr`` to the decayed value at the end of warm-up.

    Args:
        iteration: steps already taken; values >= max_iters give `end_lr`.
        base_lr: initial learning rate.
        max_iters: total steps T.
        power: exponent (0.9 PSANet/PaddleSeg, 2.0 NVIDIA and CityscapesSOTA); 0 gives a constant rate.
        end_lr: rate the decay reaches at T.
        warmup_iters: length of the linear warm-up; 0 disables it.
        warmup_start_factor: fraction of the rate at iteration 0 when warming up.
    """
    if max_iters <= 0:
        raise ValueError(f"max_iters must be positive, got {max_iters}")
    progress = min(max(iteration, 0), max_iters) / max_iters
    decayed = (base_lr - end_lr) * (1.0 - progress) ** power + end_lr
    if warmup_iters > 0 and iteration < warmup_iters:
        alpha = iteration / warmup_iters
        return decayed * (warmup_start_factor + (1.0 - warmup_start_factor) * alpha)
    return decayed


def parameter_groups(model: nn.Module, weight_decay: float, no_decay_norm_and_bias: bool = False) -> list[dict]:
    """Parameter groups for the optimiser.

    Both references apply weight decay to every parameter (``no_decay_norm_and_bias=False``); the option exempts
    1-d parameters (norm scales/shifts and biases), a common variant.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_norm_and_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_sgd(
    groups: Iterable[dict], *, lr: float, momentum: float = 0.9, nesterov: bool = False
) -> torch.optim.SGD:
    """SGD with momentum; each group's ``weight_decay`` comes from `parameter_groups`."""
    return torch.optim.SGD(list(groups), lr=lr, momentum=momentum, nesterov=nesterov)


def build_poly_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    max_iters: int,
    power: float = 0.9,
    end_lr: float = 0.0,
    warmup_iters: int = 0,
    warmup_start_factor: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler following `poly_lr` for each group's initial rate."""
    base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]

    def factor_for(base_lr: float):
        def factor(iteration: int) -> float:
            if base_lr == 0:
                return 0.0
            return poly_lr(iteration, base_lr=base_lr, max_iters=max_iters, power=power, end_lr=end_lr,
                           warmup_iters=warmup_iters, warmup_start_factor=warmup_start_factor) / base_lr

        return factor

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor_for(lr) for lr in base_lrs])


def set_lr(optimizer: torch.optim.Optimizer, iteration: int, base_lrs: list[float], **schedule) -> float:
    """Sets every group's rate for `iteration` directly from `poly_lr` (stateless); returns the first group's."""
    rates = [poly_lr(iteration, base_lr=base, **schedule) for base in base_lrs]
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    return rates[0]


def build_adamw(groups: Iterable[dict], *, lr: float, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW (decoupled weight decay, per group from `parameter_groups`).

    Not used by the references' recipes; it converges in far fewer steps from random initialisation, which is
    what a few-minute CPU run (``attnseg demo``) needs.
    """
    return torch.optim.AdamW(list(groups), lr=lr, betas=betas)
