"""Poly schedule limiting cases, warm-up, the LambdaLR wrapper, EMA and parameter groups."""

import math

import pytest
import torch
from torch import nn

from attnseg.engine.ema import ModelEma
from attnseg.engine.optim import build_poly_scheduler, build_sgd, parameter_groups, poly_lr


def test_poly_endpoints_and_clamping():
    assert poly_lr(0, base_lr=0.01, max_iters=100) == pytest.approx(0.01)
    assert poly_lr(100, base_lr=0.01, max_iters=100) == 0.0
    assert poly_lr(250, base_lr=0.01, max_iters=100, end_lr=1e-5) == pytest.approx(1e-5)
    assert poly_lr(-5, base_lr=0.01, max_iters=100) == pytest.approx(0.01)


def test_poly_power_cases():
    assert poly_lr(50, base_lr=1.0, max_iters=100, power=0.0) == 1.0  # constant
    assert poly_lr(50, base_lr=1.0, max_iters=100, power=1.0) == pytest.approx(0.5)  # linear
    assert poly_lr(50, base_lr=1.0, max_iters=100, power=2.0) == pytest.approx(0.25)  # NVIDIA poly_exp 2
    assert poly_lr(50, base_lr=1.0, max_iters=100, power=0.9) == pytest.approx(0.5 ** 0.9)
    # PaddleSeg PolynomialDecay with end_lr: (base - end) * (1 - t/T)^p + end
    assert poly_lr(50, base_lr=0.01, max_iters=100, power=0.9, end_lr=1e-5) == pytest.approx(
        (0.01 - 1e-5) * 0.5 ** 0.9 + 1e-5)


def test_warmup_ramps_linearly_then_joins_the_decay():
    kwargs = dict(base_lr=1.0, max_iters=100, power=1.0, warmup_iters=10, warmup_start_factor=0.1)
    assert poly_lr(0, **kwargs) == pytest.approx(0.1)
    assert poly_lr(5, **kwargs) == pytest.approx(0.95 * (0.1 + 0.9 * 0.5))
    assert poly_lr(10, **kwargs) == pytest.approx(0.9)  # warm-up over: plain decay
    assert poly_lr(9, **kwargs) < poly_lr(10, **kwargs)
    assert poly_lr(0, **{**kwargs, "warmup_start_factor": 1.0}) == pytest.approx(1.0)


def test_poly_rejects_empty_schedule():
    with pytest.raises(ValueError):
        poly_lr(0, base_lr=1.0, max_iters=0)


def test_scheduler_follows_poly_lr_per_group():
    model = nn.Linear(2, 2)
    optimizer = build_sgd([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 0.02}], lr=0.1)
    scheduler = build_poly_scheduler(optimizer, max_iters=10, power=2.0, warmup_iters=2)
    for iteration in range(10):
        for group, base in zip(optimizer.param_groups, (0.1, 0.02)):
            expected = poly_lr(iteration, base_lr=base, max_iters=10, power=2.0, warmup_iters=2)
            assert group["lr"] == pytest.approx(expected)
        optimizer.step()
        scheduler.step()


def test_parameter_groups_decay_everything_by_default():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    (group,) = parameter_groups(model, 1e-4)
    assert len(group["params"]) == 4 and group["weight_decay"] == 1e-4
    decay, no_decay = parameter_groups(model, 1e-4, no_decay_norm_and_bias=True)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_ema_tracks_weights_and_copies_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.5)
    start = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    decay = min(0.5, 2 / 11)
    assert torch.allclose(ema.module[0].weight, decay * start + (1 - decay) * model[0].weight)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert not any(p.requires_grad for p in ema.module.parameters())
    restored = ModelEma(model, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and torch.equal(restored.module[0].weight, ema.module[0].weight)
    assert math.isclose(restored.decay, 0.5)


def test_optimizer_choice_from_config_and_schedule_applies_to_adamw():
    from attnseg.config import load_config
    from attnseg.config.training import build_optimizer
    from attnseg.engine.optim import set_lr

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    sgd = build_optimizer(model, load_config(None, []).train)
    assert isinstance(sgd, torch.optim.SGD)
    train_cfg = load_config(None, ["train.optimizer=adamw", "train.lr=0.004", "train.weight_decay=0.01",
                                   "train.no_decay_norm_and_bias=true"]).train
    adamw = build_optimizer(model, train_cfg)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.01, 0.0]
    assert sum(len(g["params"]) for g in adamw.param_groups) == 4
    rate = set_lr(adamw, 50, [0.004, 0.004], max_iters=100, power=1.0)
    assert rate == pytest.approx(0.002)
    assert all(g["lr"] == pytest.approx(0.002) for g in adamw.param_groups)


def test_unknown_optimizer_is_a_config_error():
    from attnseg.config import load_config
    from attnseg.errors import ConfigError

    with pytest.raises(ConfigError, match="optimizer"):
        load_config(None, ["train.optimizer=adam"])
