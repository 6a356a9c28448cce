"""`attnseg` command line: one sub-command per module in `attnseg.cli`.

Each sub-command module defines ``register(subparsers)``, which adds its parser and sets ``func`` to the
function that runs it. Modules are imported here by name so that `attnseg --help` shows them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from attnseg.errors import AttnsegError

# Order is the order `attnseg --help` lists them in.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "make_synthetic",
    "prepare",
    "train",
    "eval",
    "predict",
    "score",
    "export",
    "convert_weights",
    "benchmark",
    "print_config",
    "list_models",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnseg",
        description="Attention-based semantic segmentation of street scenes (HMSA / HRNet-OCR, PSANet).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"attnseg.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"attnseg.cli.{name}":
                raise
            continue  # not built yet in this checkout
        module.register(subparsers)
    return parser


# Commands whose speed suffers when they run more threads than there are free cores (the demo and the benchmark
# plan their own threads).
THREAD_PLANNED_COMMANDS = ("train", "eval", "predict")


def _fit_threads_to_free_cores() -> None:
    """Fewer torch threads when other processes keep cores busy; says so only when it changes something. A
    distributed run or an explicit OMP_NUM_THREADS is left alone."""
    import os

    if os.environ.get("OMP_NUM_THREADS") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    import torch

    from attnseg.hardware import plan_threads

    plan = plan_threads(torch.get_num_threads())
    if plan.threads < torch.get_num_threads():
        torch.set_num_threads(plan.threads)
        print(plan.reason, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command in THREAD_PLANNED_COMMANDS:
            _fit_threads_to_free_cores()
        result = args.func(args)
    except (AttnsegError, FileNotFoundError) as error:
        # Errors about the user's data or options carry their own explanation; a traceback would bury it.
        print(f"attnseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attnseg {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
