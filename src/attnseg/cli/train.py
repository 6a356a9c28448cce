"""``attnseg train CONFIG [section.key=value ...] [--out DIR] [--resume] [--save-interval N]``

Runs as one process, or under ``torchrun --nproc_per_node=N -m attnseg train CONFIG`` (any torchrun rendezvous,
multi-node included): each process trains on its share of every global batch, with SyncBatchNorm.

The run folder gets ``config.yaml`` (the resolved config), ``metrics.jsonl``, ``checkpoints/training_state.pt``
(exact resume), ``checkpoints/last.*`` and ``checkpoints/best.*`` (deployable weights), and ``tensorboard/``
when the optional `tensorboard` package is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnseg.cli.arguments import non_negative_int, train_device
from attnseg.errors import AttnsegError, ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from an experiment config (single process or torchrun)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="experiment YAML file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="config overrides: section.key=value (YAML values)")
    parser.add_argument("--out", help="run folder (default: train.out_dir of the config)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    parser.add_argument("--save-interval", type=non_negative_int,
                        help="iterations between checkpoints, 0 = only at the end (overrides the config)")
    parser.add_argument("--device", type=train_device, choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: one CUDA device per local rank when available, else CPU")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (log lines instead)")
    parser.set_defaults(func=run, validate=validate)


def validate(args: argparse.Namespace) -> None:
    """Refuse a config that cannot train, before the run folder is made: the model's class count must be the
    dataset's (a folder dataset's labels are the model's own class ids, so any count goes there).

    Raises:
        ConfigError: the config does not load (unknown key, value out of range) or the class counts differ.
    """
    from attnseg.cli.eval import dataset_class_count
    from attnseg.config import load_config

    config = load_config(args.config, args.overrides)
    expected = dataset_class_count(config.data)
    if expected is not None and config.model.num_classes != expected:
        raise ConfigError(f"model.num_classes={config.model.num_classes}, but data.dataset={config.data.dataset} "
                          f"labels {expected} classes; set model.num_classes={expected} (a folder dataset "
                          "takes any class count)")


def run(args: argparse.Namespace) -> int:
    from attnseg.config import load_config, save_config
    from attnseg.engine import distributed

    config = load_config(args.config, args.overrides)
    if args.save_interval is not None:
        if args.save_interval < 0:
            raise ConfigError("--save-interval must be >= 0")
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, save_interval=args.save_interval))
    run_dir = Path(args.out or config.train.out_dir)
    from attnseg.engine.checkpoint import training_state_path

    state_path = training_state_path(run_dir)
    if args.resume and not state_path.is_file():
        raise AttnsegError(f"--resume: no training state at {state_path}")
    if not args.resume and state_path.is_file():
        raise AttnsegError(f"{run_dir} already holds a training run; pass --resume to continue it "
                           "or choose another --out")

    context = distributed.init_distributed(args.device)
    try:
        return _train(config, run_dir, context, resume=args.resume, progress=not args.no_progress,
                      save_config=save_config)
    finally:
        distributed.cleanup()


def _train(config: Any, run_dir: Path, context: Any, *, resume: bool, progress: bool, save_config: Any) -> int:
    from attnseg.config.build import build_model
    from attnseg.engine import distributed
    from attnseg.engine.build import (
        build_criterion_from_config,
        build_optimizer,
        build_train_data,
        seed_everything,
    )
    from attnseg.engine.trainer import Trainer

    train_cfg, data_cfg, model_cfg = config.train, config.data, config.model
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")  # keeps "auto": another machine resolves it again
    from attnseg.hardware import resolve_experiment_precision

    config = resolve_experiment_precision(config, context.device.type, log=None if context.is_main else _quiet)
    if context.is_distributed:  # a timing check can differ between processes: all follow the main one
        import torch.distributed as dist

        chosen = [config.train.precision, config.eval.precision]
        dist.broadcast_object_list(chosen, src=0)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, precision=chosen[0]),
                                     eval=dataclasses.replace(config.eval, precision=chosen[1]))  # fmt: skip
    train_cfg = config.train
    seed_everything(train_cfg.seed, context.rank, train_cfg.deterministic)

    model = build_model(model_cfg).to(context.device)
    if train_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if context.is_distributed and train_cfg.sync_bn:
        model = distributed.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, train_cfg)
    if context.is_distributed:
        device_ids = [context.local_rank] if context.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    criterion = build_criterion_from_config(train_cfg, model_cfg.num_classes, data_cfg.ignore_index).to(context.device)
    data = build_train_data(data_cfg, train_cfg, num_classes=model_cfg.num_classes, rank=context.rank,
                            world_size=context.world_size, progress=progress)
    class_names, palette = _class_table(model_cfg.num_classes)

    def save_weights(module: nn.Module, name: str, info: dict[str, Any]) -> None:
        from attnseg.weights import save_checkpoint

        save_checkpoint(run_dir / "checkpoints" / name, module, model_cfg.name, model_cfg.kwargs, class_names, palette,
                        data_cfg.mean, data_cfg.std, extra={"run": str(run_dir), **info})

    trainer = Trainer(
        model, criterion, optimizer, data.loader, data.sampler,
        max_iters=train_cfg.iters, run_dir=run_dir, device=context.device, precision=train_cfg.precision,
        poly_power=train_cfg.poly_power, end_lr=train_cfg.end_lr, warmup_iters=train_cfg.warmup_iters,
        warmup_start_factor=train_cfg.warmup_start_factor, grad_clip_norm=train_cfg.grad_clip_norm,
        ema_decay=train_cfg.ema_decay, evaluate_fn=_evaluator(config, context, progress),
        eval_interval=train_cfg.eval_interval, save_interval=train_cfg.save_interval,
        log_interval=train_cfg.log_interval, save_weights=save_weights, progress=progress, palette=palette,
    )  # fmt: skip
    if resume:
        trainer.resume()
        if context.is_main:
            print(f"resumed {run_dir} at iteration {trainer.iteration} (epoch {trainer.epoch})", file=sys.stderr)
    summary = trainer.train()
    if context.is_main:
        print(json.dumps({"run_dir": str(run_dir), **summary}))
    return 0


def _quiet(line: str) -> None:
    """Other ranks decide the same precision; only the main one says so."""


def _evaluator(config: Any, context: Any, progress: bool):
    """evaluate_fn for the trainer: the eval section's recipe on the validation split (loader built once)."""
    from attnseg.config.build import build_eval_loader
    from attnseg.inference.evaluate import evaluate_model

    eval_cfg = config.eval
    loader = None

    def evaluate(model: nn.Module):
        nonlocal loader
        if loader is None:
            loader = build_eval_loader(config.data, eval_cfg.split, batch_size=eval_cfg.batch_size,
                                       num_workers=eval_cfg.num_workers)
        return evaluate_model(
            model, loader, config.model.num_classes, scales=eval_cfg.scales, multi_scale=eval_cfg.multi_scale,
            flip=eval_cfg.flip, mode=eval_cfg.mode, crop_size=eval_cfg.crop_size, stride=eval_cfg.stride,
            precision=eval_cfg.precision, device=context.device, progress=progress,
            ignore_index=config.data.ignore_index,
        )  # fmt: skip

    return evaluate


def _class_table(num_classes: int) -> tuple[list[str], Any]:
    from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

    if num_classes == len(CITYSCAPES_CLASSES):
        return list(CITYSCAPES_CLASSES), CITYSCAPES_PALETTE
    import numpy as np

    rng = np.random.default_rng(0)
    return [f"class_{i}" for i in range(num_classes)], rng.integers(0, 256, (num_classes, 3), dtype=np.uint8)


if __name__ == "__main__":  # pragma: no cover - `python -m attnseg.cli.train` convenience
    from attnseg.cli.main import main

    sys.exit(main(["train", *sys.argv[1:]]))
