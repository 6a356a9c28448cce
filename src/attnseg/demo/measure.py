"""Measurements the demo plans with: one training step and one inference pass of a fresh model, on random data."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.config.schema import ExperimentConfig
from attnseg.demo.budget import DATA_SECONDS_PER_IMAGE, SINGLE_SCALE, demo_recipes, evaluation_reserve
from attnseg.engine.trainer import to_channels_last
from attnseg.models import fuses_scales


def measure_train_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int,
                       crop: Sequence[int], num_classes: int, precision: str, channels_last: bool,
                       steps: int = 2) -> float:  # fmt: skip
    """Median seconds of `steps` training steps on a random batch (after one untimed step): forward, loss,
    backward and optimizer step, without the data pipeline."""
    images = torch.randn(batch_size, 3, *crop)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch_size, *crop))
    times = train_step_times(model, criterion, optimizer, images, labels, precision, 1 + max(1, steps))
    return float(np.median(times[1:]))


def train_step_times(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                     labels: torch.Tensor, precision: str, steps: int,
                     after_step: Callable[[], object] | None = None) -> list[float]:  # fmt: skip
    """Seconds of each of `steps` training steps on one fixed CPU batch (forward under autocast, loss, backward,
    optimizer step); `after_step` runs after each one, outside the timing."""
    from attnseg.engine.trainer import autocast_context

    model.train()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with autocast_context(torch.device("cpu"), precision):
            loss = criterion(model(images), labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        if after_step is not None:
            after_step()
    return times


def recipe_measurer(
    image_size: tuple[int, int], num_val: int, channels_last: bool
) -> Callable[[ExperimentConfig], tuple[float, float, int]]:
    """`choose_recipe`'s measure function for loaded experiments: a fresh model of the recipe, one inference pass
    (the evaluation reserve) and the median of two training steps."""
    from attnseg.config.build import build_model
    from attnseg.config.training import build_criterion_from_config, build_optimizer

    def measure(experiment: ExperimentConfig) -> tuple[float, float, int]:
        train_cfg, model_cfg = experiment.train, experiment.model
        model = build_model(model_cfg)
        if channels_last:
            to_channels_last(model)
        recipes = demo_recipes(model_fuses_scales(model), experiment.eval.scales, experiment.eval.flip)
        reserve = evaluation_reserve(measure_inference_pass(model, *image_size, experiment.eval.precision), num_val,
                                     recipes)  # fmt: skip
        criterion = build_criterion_from_config(train_cfg, model_cfg.num_classes, experiment.data.ignore_index)
        step = measure_train_step(model, criterion, build_optimizer(model, train_cfg), train_cfg.batch_size,
                                  experiment.data.crop_size, model_cfg.num_classes, train_cfg.precision, channels_last)
        return step + DATA_SECONDS_PER_IMAGE * train_cfg.batch_size, reserve, train_cfg.iters

    return measure


def measure_inference_pass(
    model: nn.Module, height: int, width: int, precision: str, warmup: int = 1, repeats: int = 2
) -> float:
    """Seconds of one scale-1.0 eval-mode forward on a (1, 3, height, width) input: the fastest of `repeats` passes
    after `warmup` untimed ones. Train/eval mode is restored."""
    was_training = model.training
    model.eval()
    images = torch.zeros(1, 3, height, width)
    times = []
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            for _ in range(warmup + max(1, repeats)):
                start = time.perf_counter()
                single_scale_forward(model, images)
                times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return float(min(times[warmup:]))


def model_fuses_scales(model: nn.Module) -> bool:
    """Whether `model` fuses scales itself (MscaleOCR's learned hierarchical attention)."""
    return fuses_scales(model)


def single_scale_forward(model: nn.Module, images: torch.Tensor) -> Any:
    """The eval-mode forward of `model` at scale 1.0 only."""
    return model(images, scales=SINGLE_SCALE) if fuses_scales(model) else model(images)
