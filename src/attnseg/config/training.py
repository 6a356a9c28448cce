"""Config -> a ready training run: seeds, model, criterion, optimizer, loader, checkpoint writer and `Trainer`.

`build_training` is the one wiring that `attnseg train` and `attnseg demo` share: what differs between them (the
evaluation, a deadline-aware trainer class, intervals) comes in as arguments, never as a second copy of the wiring.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.config.build import build_eval_loader, build_model
from attnseg.config.schema import ExperimentConfig, TrainConfig
from attnseg.config.train_data import TrainData, build_train_data
from attnseg.engine import distributed
from attnseg.engine.distributed import DistributedContext
from attnseg.engine.optim import build_adamw, build_sgd, parameter_groups
from attnseg.engine.thread_watch import ThreadWatch
from attnseg.engine.trainer import Trainer, to_channels_last, unwrap
from attnseg.errors import ConfigError
from attnseg.models.checkpointing import supports_grad_checkpointing


def build_criterion_from_config(train_cfg: TrainConfig, num_classes: int, ignore_index: int = 255) -> nn.Module:
    """The weighted loss terms of `train_cfg.losses` (see `attnseg.losses.build_criterion`)."""
    from attnseg.losses import build_criterion

    return build_criterion(train_cfg.losses, num_classes=num_classes, ignore_index=ignore_index)


def build_optimizer(model: nn.Module, train_cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay on every parameter (both references), or AdamW."""
    groups = parameter_groups(model, train_cfg.weight_decay, train_cfg.no_decay_norm_and_bias)
    if train_cfg.optimizer == "adamw":
        return build_adamw(groups, lr=train_cfg.lr)
    return build_sgd(groups, lr=train_cfg.lr, momentum=train_cfg.momentum)


def seed_everything(seed: int, rank: int = 0, deterministic: bool = False) -> None:
    """Seeds Python, NumPy and torch (offset by rank so dropout differs per process) and sets determinism."""
    import random

    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def single_process_context(device: str = "cpu") -> DistributedContext:
    """The context of a run without torchrun on `device` (the demo's)."""
    return DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device(device))


@dataclass
class TrainingSetup:
    """What `build_training` made: the trainer (holding model, criterion, optimizer, loader) and the class table
    its checkpoints carry."""

    trainer: Trainer
    data: TrainData
    class_names: list[str]
    palette: np.ndarray

    @property
    def model(self) -> nn.Module:
        """The network being trained, unwrapped from DistributedDataParallel."""
        return unwrap(self.trainer.model)

    @property
    def evaluated_model(self) -> nn.Module:
        """The weights that are evaluated and saved: the EMA copy when enabled, else the unwrapped model."""
        return self.trainer.ema.module if self.trainer.ema is not None else self.model


def build_training(
    experiment: ExperimentConfig,
    run_dir: str | Path,
    context: DistributedContext | None = None,
    *,
    evaluate_fn: Callable[[nn.Module], Any] | None = None,
    progress: bool = True,
    channels_last: bool | None = None,
    trainer_class: type[Trainer] = Trainer,
    trainer_options: Mapping[str, Any] | None = None,
    checkpoint_extra: Mapping[str, Any] | None = None,
) -> TrainingSetup:
    """Seeds, builds model, optimizer, criterion and training loader from `experiment` and wires them into a trainer.

    `experiment` must already have its precision resolved (``"auto"`` replaced, see
    `attnseg.hardware.resolve_experiment_precision`); saving ``config.yaml`` is the caller's.

    Args:
        experiment: the resolved config.
        run_dir: the run folder (checkpoints, metrics.jsonl).
        context: this process (`attnseg.engine.distributed.init_distributed`); default one process on CPU.
        evaluate_fn: ``evaluate_fn(model) -> metrics`` for the trainer; None trains without evaluating.
        progress: progress bars for training and the one-time centroid computation.
        channels_last: train in channels-last memory format; default ``train.channels_last``.
        trainer_class: `Trainer` or a subclass (the demo's deadline trainer).
        trainer_options: keyword arguments of `trainer_class` that replace or add to the config's.
        checkpoint_extra: extra entries of every checkpoint sidecar's ``extra`` (after ``run``).
    """
    from attnseg.config.build import dataset_class_table

    context = context or single_process_context()
    train_cfg, data_cfg, model_cfg = experiment.train, experiment.data, experiment.model
    run_dir = Path(run_dir)
    seed_everything(train_cfg.seed, context.rank, train_cfg.deterministic)
    channels_last = train_cfg.channels_last if channels_last is None else channels_last
    model = build_model(model_cfg).to(context.device)
    if train_cfg.grad_checkpoint and not supports_grad_checkpointing(model):
        raise ConfigError(f"train.grad_checkpoint=true: model {model_cfg.name} does not support activation "
                          "checkpointing (the HRNet-OCR models do); set train.grad_checkpoint=false")
    if context.is_distributed:
        if channels_last:  # before DDP lays out its gradient buckets
            to_channels_last(model)
        if train_cfg.sync_bn:
            model = distributed.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, train_cfg)
    if context.is_distributed:
        device_ids = [context.local_rank] if context.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    criterion = build_criterion_from_config(train_cfg, model_cfg.num_classes, data_cfg.ignore_index).to(context.device)
    data = build_train_data(data_cfg, train_cfg, num_classes=model_cfg.num_classes, rank=context.rank,
                            world_size=context.world_size, progress=progress)  # fmt: skip
    class_names, palette = dataset_class_table(data_cfg, model_cfg.num_classes)
    options = dict(
        max_iters=train_cfg.iters, run_dir=run_dir, device=context.device, precision=train_cfg.precision,
        poly_power=train_cfg.poly_power, end_lr=train_cfg.end_lr, warmup_iters=train_cfg.warmup_iters,
        warmup_start_factor=train_cfg.warmup_start_factor, grad_clip_norm=train_cfg.grad_clip_norm,
        ema_decay=train_cfg.ema_decay, evaluate_fn=evaluate_fn, eval_interval=train_cfg.eval_interval,
        save_interval=train_cfg.save_interval, log_interval=train_cfg.log_interval, progress=progress,
        save_weights=weights_writer(experiment, run_dir, class_names, palette, checkpoint_extra),
        palette=palette, channels_last=channels_last, accumulate=train_cfg.accumulate,
        grad_checkpoint=train_cfg.grad_checkpoint,
    )  # fmt: skip
    options.update(trainer_options or {})
    if "thread_watch" not in options and not context.is_distributed:
        options["thread_watch"] = ThreadWatch.when_useful(context.device)
    trainer = trainer_class(model, criterion, optimizer, data.loader, data.sampler, **options)
    return TrainingSetup(trainer=trainer, data=data, class_names=class_names, palette=palette)


def weights_writer(
    experiment: ExperimentConfig,
    run_dir: Path,
    class_names: list[str],
    palette: np.ndarray,
    extra: Mapping[str, Any] | None = None,
) -> Callable[[nn.Module, str, dict[str, Any]], None]:
    """The trainer's ``save_weights``: deployable ``checkpoints/<name>`` weights with the sidecar `load_model` reads."""
    model_cfg, data_cfg = experiment.model, experiment.data

    def save_weights(module: nn.Module, name: str, info: dict[str, Any]) -> None:
        from attnseg.weights import save_checkpoint

        save_checkpoint(run_dir / "checkpoints" / name, module, model_cfg.name, model_cfg.kwargs, class_names, palette,
                        data_cfg.mean, data_cfg.std, extra={"run": str(run_dir), **(extra or {}), **info})

    return save_weights


def build_evaluator(
    experiment: ExperimentConfig, device: torch.device, progress: bool
) -> Callable[[nn.Module], Any]:
    """``evaluate_fn`` for the trainer: the eval section's recipe on the validation split (loader built once, at the
    first evaluation)."""
    from attnseg.inference.evaluate import evaluate_model

    eval_cfg, data_cfg, num_classes = experiment.eval, experiment.data, experiment.model.num_classes
    loader = None

    def evaluate(model: nn.Module):
        nonlocal loader
        if loader is None:
            loader = build_eval_loader(data_cfg, eval_cfg.split, batch_size=eval_cfg.batch_size,
                                       num_workers=eval_cfg.num_workers, num_classes=num_classes)  # fmt: skip
        return evaluate_model(
            model, loader, num_classes, scales=eval_cfg.scales, multi_scale=eval_cfg.multi_scale,
            flip=eval_cfg.flip, mode=eval_cfg.mode, crop_size=eval_cfg.crop_size, stride=eval_cfg.stride,
            precision=eval_cfg.precision, device=device, progress=progress, ignore_index=data_cfg.ignore_index,
        )  # fmt: skip

    return evaluate
