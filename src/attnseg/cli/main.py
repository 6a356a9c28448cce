"""`attnseg` command line: one sub-command per module in `attnseg.cli`.

Each sub-command module defines ``register(subparsers)``, which adds its parser and sets ``func`` to the
function that runs it. Modules are imported here by name so that `attnseg --help` shows them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from attnseg.cli.arguments import OneLineParser, UsageError, split_overrides
from attnseg.errors import AttnsegError, BadFilesError

# Order is the order `attnseg --help` lists them in.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "make_synthetic",
    "prepare",
    "train",
    "eval",
    "predict",
    "autolabel",
    "score",
    "export",
    "quantize",
    "convert_weights",
    "benchmark",
    "print_config",
    "list_models",
)


def build_parser() -> argparse.ArgumentParser:
    """The `attnseg` parser with every sub-command of `COMMAND_MODULES`.

    Raises:
        ImportError: a sub-command module cannot be imported; that is a bug to see, not a command to hide.
    """
    parser = OneLineParser(
        prog="attnseg",
        description="Attention-based semantic segmentation of street scenes (HMSA / HRNet-OCR, PSANet).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"attnseg.cli.{name}").register(subparsers)
    return parser


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse `argv`; ``section.key=value`` overrides may stand anywhere after the sub-command's name.

    Raises:
        UsageError: argparse refused the line (the message is one line).
    """
    tokens = list(argv)
    position = next((i for i, token in enumerate(tokens) if not token.startswith("-")), None)
    overrides: list[str] = []
    if position is not None:
        command_parser = _subcommand_parsers(parser).get(tokens[position])
        if command_parser is not None:
            rest, overrides = split_overrides(command_parser, tokens[position + 1:])
            tokens = [*tokens[:position + 1], *rest]
    args = parser.parse_args(tokens)
    if overrides:
        args.overrides = [*overrides, *getattr(args, "overrides", [])]
    return args


def _subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


# Commands whose speed suffers when they run more threads than there are free cores (the demo and the benchmark
# plan their own threads).
THREAD_PLANNED_COMMANDS = ("train", "eval", "predict", "autolabel")


def _fit_threads_to_free_cores() -> None:
    """Fewer torch threads when other processes keep cores busy; says so only when it changes something. A
    distributed run or an explicit OMP_NUM_THREADS is left alone."""
    import os

    if os.environ.get("OMP_NUM_THREADS") or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    import torch

    from attnseg.hardware import plan_threads

    from attnseg.cli import notes

    plan = plan_threads(torch.get_num_threads())
    if plan.threads < torch.get_num_threads():
        torch.set_num_threads(plan.threads)
        notes.defer(plan.reason)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `attnseg` sub-command; returns the exit status (2 for a user error, printed as one line)."""
    parser = build_parser()
    try:
        args = parse_command_line(parser, sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2
    from attnseg.cli import notes

    try:
        validate = getattr(args, "validate", None)
        if validate is not None:
            validate(args)
        if args.command in THREAD_PLANNED_COMMANDS:
            _fit_threads_to_free_cores()
        result = args.func(args)
    except (AttnsegError, FileNotFoundError) as error:
        # Errors about the user's data or options carry their own explanation; a traceback would bury it.
        notes.discard()
        print(f"attnseg {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        notes.flush()
        print(f"attnseg {args.command}: interrupted", file=sys.stderr)
        return 130
    notes.flush()
    return int(result or 0)


def _one_line(error: BaseException) -> str:
    if isinstance(error, BadFilesError):  # a summary line and the list of files, by design
        return str(error)
    return " ".join(str(error).split())


if __name__ == "__main__":
    sys.exit(main())
