"""``attnseg train CONFIG [section.key=value ...] [--out DIR] [--resume] [--save-interval N]``

Runs as one process, or under ``torchrun --nproc_per_node=N -m attnseg train CONFIG`` (any torchrun rendezvous,
multi-node included): each process trains on its share of every global batch, with SyncBatchNorm.

The run folder gets ``config.yaml`` (the resolved config), ``metrics.jsonl``, ``checkpoints/training_state.pt``
(exact resume), ``checkpoints/last.*`` and ``checkpoints/best.*`` (deployable weights), ``resumes.jsonl`` (what
each resume changed), and ``tensorboard/`` when the optional `tensorboard` package is installed. While a run owns
the folder it holds ``.lock``; a second run into the same folder is refused. A fresh run in a folder whose earlier
run died before its first checkpoint starts over (metrics.jsonl included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from attnseg.cli.arguments import non_negative_int, train_device
from attnseg.errors import AttnsegError, ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from an experiment config (single process or torchrun)",
        description=__doc__,
        epilog=_resume_epilog(),
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
    from attnseg.config import load_config
    from attnseg.config.build import dataset_class_count

    config = load_config(args.config, args.overrides)
    expected = dataset_class_count(config.data)
    if expected is not None and config.model.num_classes != expected:
        raise ConfigError(f"model.num_classes={config.model.num_classes}, but data.dataset={config.data.dataset} "
                          f"labels {expected} classes; set model.num_classes={expected} (a folder dataset "
                          "takes any class count)")


# What a user may change when resuming: settings of how often things happen, where outputs go and how fast data
# is loaded, none of which changes what is learned. `train.iters` is the exception that proves the rule: resuming
# to extend (or shorten) a run is what --resume is for; the poly schedule then decays over the new length from
# the resumed iteration on. Data loader workers do not change the data order (the sampler plans it and every
# sample's augmentation is seeded from the plan), so a resume with other worker counts stays bit-exact.
# `train.grad_checkpoint` and `train.accumulate` decide only how a step's batch fits in memory (a resume on a smaller
# machine needs them): the sampler counts whole steps, so every step keeps its samples, LR and resume position.
# Checkpointing changes nothing else; accumulation makes BatchNorm use micro-batch statistics and averages a loss per
# micro-batch (see `Trainer.run_step`), as the run would have had it started that way.
RESUME_CHANGEABLE_KEYS: tuple[str, ...] = (
    "train.iters",
    "train.grad_checkpoint",
    "train.accumulate",
    "train.save_interval",
    "train.log_interval",
    "train.eval_interval",
    "train.out_dir",
    "data.num_workers",
    "eval.batch_size",
    "eval.num_workers",
)

RESUME_LOG_NAME = "resumes.jsonl"
_UNSET = "<unset>"


def _resume_epilog() -> str:
    return ("--resume continues the run in --out with the config it was started with; the only keys that may "
            f"differ are: {', '.join(RESUME_CHANGEABLE_KEYS)}. Any other difference is refused (listing each "
            f"changed key) before anything is written. Allowed changes are printed and recorded in "
            f"{RESUME_LOG_NAME}. A run folder is locked (.lock) while a run owns it.")


def flatten_config(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config data -> ``{"section.key": value}`` (dicts are walked, lists are values)."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, name))
        else:
            flat[name] = value
    return flat


def config_changes(before: Any, after: Any) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (before value, after value)}`` for every key whose value differs between two configs."""
    from attnseg.config import to_data

    old, new = flatten_config(to_data(before)), flatten_config(to_data(after))
    return {key: (old.get(key, _UNSET), new.get(key, _UNSET)) for key in sorted(set(old) | set(new))
            if old.get(key, _UNSET) != new.get(key, _UNSET)}


def check_resume_config(run_dir: Path, config: Any) -> dict[str, tuple[Any, Any]]:
    """The allowed changes between the run's ``config.yaml`` and `config`; raises when any other key differs.

    Raises:
        ConfigError: the run folder has no readable config.yaml, or a key outside `RESUME_CHANGEABLE_KEYS`
            changed (every such key is listed as ``key: run value -> new value``).
    """
    from attnseg.config import load_config

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume: {saved} is missing, so the run's config cannot be compared with this one")
    changes = config_changes(load_config(saved), config)
    refused = {key: change for key, change in changes.items() if key not in RESUME_CHANGEABLE_KEYS}
    if refused:
        listing = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ConfigError(f"--resume: the config differs from the run's {saved} in {listing}. On resume only "
                          f"{', '.join(RESUME_CHANGEABLE_KEYS)} may change; start a new run (another --out) "
                          "for anything else")
    return changes


def _prepare_run_dir(config: Any, run_dir: Path, resume: bool) -> dict[str, tuple[Any, Any]]:
    """Checks made under the run lock before anything is written; returns the allowed resume changes."""
    from attnseg.engine.checkpoint import training_state_path
    from attnseg.fileio import remove_stale_temporaries

    state_path = training_state_path(run_dir)
    if resume and not state_path.is_file():
        raise AttnsegError(f"--resume: no training state at {state_path}")
    if not resume and state_path.is_file():
        raise AttnsegError(f"{run_dir} already holds a training run; pass --resume to continue it "
                           "or choose another --out")
    changes = check_resume_config(run_dir, config) if resume else {}
    remove_stale_temporaries(run_dir)
    return changes


def _record_resume(run_dir: Path, iteration: int, changes: dict[str, tuple[Any, Any]]) -> None:
    """Prints the allowed changes a resume made and appends them to the run's resume log."""
    import datetime

    from attnseg.fileio import atomic_write_text

    for key, (old, new) in changes.items():
        print(f"resume: {key}: {old!r} -> {new!r} (allowed on resume)", file=sys.stderr)
    log = run_dir / RESUME_LOG_NAME
    previous = log.read_text(encoding="utf-8") if log.is_file() else ""  # whole lines: it is written atomically
    record = {"time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "iteration": iteration,
              "changes": {key: [old, new] for key, (old, new) in changes.items()}}
    atomic_write_text(log, previous + json.dumps(record) + "\n", durable=True)


def run(args: argparse.Namespace) -> int:
    from attnseg.config import load_config, save_config
    from attnseg.engine import distributed
    from attnseg.engine.checkpoint import training_state_path
    from attnseg.engine.run_lock import RunLock

    config = load_config(args.config, args.overrides)
    if args.save_interval is not None:
        if args.save_interval < 0:
            raise ConfigError("--save-interval must be >= 0")
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, save_interval=args.save_interval))
    run_dir = Path(args.out or config.train.out_dir)
    if args.resume and not run_dir.is_dir():  # refused before the lock would create the folder
        raise AttnsegError(f"--resume: no training state at {training_state_path(run_dir)} (no folder {run_dir})")

    context = distributed.init_distributed(args.device)
    lock = RunLock(run_dir) if context.is_main else None  # rank 0 owns the folder for the whole group
    try:
        changes, failure = {}, None
        if lock is not None:
            try:
                lock.acquire()
                changes = _prepare_run_dir(config, run_dir, args.resume)
            except AttnsegError as error:
                failure = error
        message = distributed.broadcast_object(None if failure is None else str(failure))
        if failure is not None:
            raise failure
        if message is not None:  # the other ranks stop with rank 0's reason
            raise AttnsegError(f"rank 0 refused to start: {message}")
        return _train(config, run_dir, context, resume=args.resume, progress=not args.no_progress,
                      save_config=save_config, changes=changes)
    finally:
        if lock is not None:
            lock.release()
        distributed.cleanup()


def _train(config: Any, run_dir: Path, context: Any, *, resume: bool, progress: bool, save_config: Any,
           changes: dict[str, tuple[Any, Any]] | None = None) -> int:
    from attnseg.config.training import build_evaluator, build_training

    as_given = config  # what config.yaml keeps: "auto" is resolved again on another machine
    if context.is_main and not resume:  # a resumed run rewrites its config only once its state has loaded
        save_config(as_given, run_dir / "config.yaml")
    config = _resolve_precision(config, context)
    setup = build_training(config, run_dir, context, evaluate_fn=build_evaluator(config, context.device, progress),
                           progress=progress)  # fmt: skip
    trainer = setup.trainer
    if resume:
        trainer.resume()
        if context.is_main:
            save_config(as_given, run_dir / "config.yaml")
            _record_resume(run_dir, trainer.iteration, changes or {})
            print(f"resumed {run_dir} at iteration {trainer.iteration} (epoch {trainer.epoch})", file=sys.stderr)
    from attnseg.cli import notes

    notes.flush()
    summary = trainer.train()
    if context.is_main:
        print(json.dumps({"run_dir": str(run_dir), **summary}))
    return 0


def _resolve_precision(config: Any, context: Any) -> Any:
    """The config with precision "auto" resolved for this machine; every process follows the main one's choice."""
    from attnseg.hardware import resolve_experiment_precision

    config = resolve_experiment_precision(config, context.device.type, log=None if context.is_main else _quiet)
    if context.is_distributed:  # a timing check can differ between processes: all follow the main one
        import torch.distributed as dist

        chosen = [config.train.precision, config.eval.precision]
        dist.broadcast_object_list(chosen, src=0)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, precision=chosen[0]),
                                     eval=dataclasses.replace(config.eval, precision=chosen[1]))  # fmt: skip
    return config


def _quiet(line: str) -> None:
    """Other ranks decide the same precision; only the main one says so."""


if __name__ == "__main__":  # pragma: no cover - `python -m attnseg.cli.train` convenience
    from attnseg.cli.main import main

    sys.exit(main(["train", *sys.argv[1:]]))
