"""Argument types and command-line plumbing shared by the sub-commands.

Each ``type=`` function here raises `argparse.ArgumentTypeError` with a message that says what is allowed;
argparse prefixes it with the option's name and `OneLineParser` prints the whole thing as one line.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from attnseg.errors import AttnsegError

# `section.key=value` (at least one dot before the `=`): a config override wherever it appears on the line.
OVERRIDE_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


class UsageError(AttnsegError):
    """A command line argparse refused (unknown option, bad value, missing argument); the message is complete."""


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors raise `UsageError` instead of printing the usage block and exiting.

    `attnseg.cli.main.main` prints the message as one line and returns 2, like every other user error.
    """

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, runs, threads)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1, 2, ...), got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0 (worker counts, intervals where 0 means "only at the end")."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def size_pair(text: str) -> tuple[int, int]:
    """``H,W`` (or ``HxW``, or one number for both) of positive integers."""
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected H,W (or one number for both), got {text!r}")
    try:
        height, width = int(parts[0]), int(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers H,W, got {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return height, width


def scale_series(text: str) -> tuple[float, ...]:
    """A scale series (`attnseg.inference.scales.parse_scales`: list, ``ratio:`` or ``diff:`` rule)."""
    from attnseg.errors import ConfigError
    from attnseg.inference.scales import parse_scales

    try:
        return parse_scales(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# Device types attnseg can run on, each with how to ask torch whether one is present.
_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Test-time options shared by `attnseg eval` and `attnseg predict`."""
    parser.add_argument(
        "--scales", type=scale_series, default=None,
        help="test scales: 0.5,1.0,2.0 | ratio:LOW:HIGH:COUNT (equal ratio) | diff:LOW:HIGH:STEP (equal difference)",
    )  # fmt: skip
    parser.add_argument(
        "--multi-scale", choices=("hierarchical", "average"), default=None,
        help="hierarchical: MscaleOCR attention fusion inside the model; average: mean over scales (any model)",
    )  # fmt: skip
    parser.add_argument("--flip", action="store_true", default=None, help="add horizontally flipped passes")
    parser.add_argument(
        "--fusion", choices=("softmax", "logits"), default=None,
        help="how flip/averaged passes combine: mean of softmax (PaddleSeg <= 2.7) or logits (NVIDIA, PaddleSeg 2.8)",
    )  # fmt: skip
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16", "auto"), default=None,
                        help="model precision: bf16 autocast, fp16 autocast (CUDA only), or auto (bf16 where the "
                             "CPU runs it natively)")
    parser.add_argument("--device", type=torch_device, default=None,
                        help="torch device: cpu, cuda, cuda:N, mps (default: cuda if available, else cpu)")
    parser.add_argument(
        "--backend", choices=("torch", "onnxruntime", "openvino"), default="torch",
        help="torch: a checkpoint; onnxruntime/openvino: a file from `attnseg export` (its scales are in the graph)",
    )  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (first batch compiles)")


def check_fp16(precision: str | None, device_type: str, backend: str = "torch", flag: str = "--precision") -> None:
    """Refuse fp16 inference where it cannot run, before anything is loaded or written.

    Args:
        precision: the requested precision (None: not given).
        device_type: where the model would run (``"cpu"``, ``"cuda"``, ...).
        backend: ``"torch"`` or an exported model's runtime (those run on the CPU in fp32 / bf16).
        flag: how the setting is named in the message (``--precision`` or ``eval.precision``).

    Raises:
        ConfigError: fp16 off CUDA or on an exported backend.
    """
    from attnseg.errors import ConfigError

    if precision != "fp16":
        return
    if backend != "torch":
        raise ConfigError(f"{flag} fp16: the {backend} backend runs on the CPU in fp32 or bf16; fp16 needs the "
                          "checkpoint (--backend torch) on a CUDA device")  # fmt: skip
    if device_type != "cuda":
        raise ConfigError(f"{flag} fp16: fp16 inference needs a CUDA device (this run uses {device_type}); "
                          "use fp32 or bf16 on CPU")  # fmt: skip


def default_device_type(device: str | None) -> str:
    """The device type a command runs on: that of ``--device``, else cuda when available, else cpu."""
    import torch

    if device:
        return torch.device(device).type
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_device(text: str) -> str:
    """A torch device string (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``xpu``) that exists on this machine."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use one of {', '.join(_DEVICE_TYPES)} "
                                         "(with an index, e.g. cuda:1)") from None  # fmt: skip
    if device.type not in _DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r}: attnseg runs on {', '.join(_DEVICE_TYPES)}, not {device.type}")
    available = device_count(device.type)
    if device.type != "cpu" and available == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: no {device.type} device is available on this machine "
                                         "(use --device cpu)")  # fmt: skip
    if device.index is not None and device.type != "cpu" and device.index >= available:
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {available} {device.type} device(s), "
                                         f"indices 0..{available - 1}")  # fmt: skip
    return text


def train_device(text: str) -> str:
    """`attnseg train --device`: ``auto``, ``cpu`` or ``cuda`` (the latter only where CUDA is available)."""
    choices = ("auto", "cpu", "cuda")
    if text not in choices:
        raise argparse.ArgumentTypeError(f"invalid choice {text!r} (choose from {', '.join(choices)})")
    if text == "cuda" and device_count("cuda") == 0:
        raise argparse.ArgumentTypeError("'cuda': no cuda device is available on this machine (use cpu or auto)")
    return text


def device_count(kind: str) -> int:
    """How many devices of type `kind` torch sees (1 for ``cpu``; ``mps`` counts as one when available)."""
    import torch

    if kind == "cpu":
        return 1
    if kind == "mps":
        return int(bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()))
    module = getattr(torch, kind, None)
    if module is None or not module.is_available():
        return 0
    return int(module.device_count())


def check_output_file(path: Path | None, flag: str) -> None:
    """Refuse an output file path that is an existing folder (writing would fail only after all the work).

    Raises:
        ConfigError: naming the option and the folder.
    """
    from attnseg.errors import ConfigError

    if path is not None and path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give the path of a file to write (a new name or a file)")


def split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(argv without overrides, the ``section.key=value`` overrides in their order) for a sub-command's line.

    A token matching `OVERRIDE_PATTERN` is an override wherever it stands, unless it is the value of an option
    (``--weights a.b=c``) or follows ``--``. Only sub-commands with an ``overrides`` argument take them.
    """
    if not any(action.dest == "overrides" for action in parser._actions):
        return list(argv), []
    kept: list[str] = []
    overrides: list[str] = []
    tokens = list(argv)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--":
            kept += tokens[index - 1:]
            break
        action = parser._option_string_actions.get(token) if token.startswith("-") else None
        if action is not None:
            kept.append(token)
            count = _value_count(action, tokens[index:])
            kept += tokens[index:index + count]
            index += count
        elif OVERRIDE_PATTERN.match(token):
            overrides.append(token)
        else:
            kept.append(token)
    return kept, overrides


def _value_count(action: argparse.Action, following: list[str]) -> int:
    """How many of the `following` tokens the option `action` takes as its values."""
    nargs = action.nargs
    if nargs is None:
        return min(1, len(following))
    if isinstance(nargs, int):
        return min(nargs, len(following))
    if nargs == "?":
        return int(bool(following) and not following[0].startswith("-") and not OVERRIDE_PATTERN.match(following[0]))
    if nargs in ("*", "+"):
        count = 0
        while count < len(following) and not following[count].startswith("-") \
                and not OVERRIDE_PATTERN.match(following[count]):  # fmt: skip
            count += 1
        return count
    return 0  # flags (nargs 0)
