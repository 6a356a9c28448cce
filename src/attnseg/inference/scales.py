"""Test-time scale series and resized-size arithmetic.

Two series appear in the references. NVIDIA evaluates Cityscapes at an *equal ratio* series (0.5, 1.0, 2.0: each
scale twice the previous one); PaddleSeg's CityscapesSOTA found an *equal difference* series
(0.5, 1.0, 1.5, 2.0, 2.5) slightly better. Both are generated from a rule here instead of typed out, and the CLI
accepts either the rule or an explicit list.
"""

from __future__ import annotations

import math
from typing import Literal

from attnseg.errors import ConfigError

Rounding = Literal["half_up", "half_even"]

# Scales are rounded to this many decimals so that 0.5 * 2 ** k and 0.5 + k * 0.5 come out as exact short floats
# (0.1 + 0.2 style noise would otherwise leak into file names and dict keys).
_DECIMALS = 6

# The largest image side attnseg feeds a network. A simple bound, not a memory estimate: 16384 px is 8x a
# Cityscapes frame's width, and the logits of one 19-class 16384x32768 map alone are 40 GB of float32.
MAX_SIDE = 16384
# The largest test scale: even a 1024-px image becomes 16384 px at 16x (the references use at most 2.5).
MAX_SCALE = 16.0


def equal_ratio_scales(low: float, high: float, count: int) -> tuple[float, ...]:
    """`count` scales from `low` to `high` with a constant ratio between neighbours (a geometric series).

    >>> equal_ratio_scales(0.5, 2.0, 3)
    (0.5, 1.0, 2.0)
    >>> equal_ratio_scales(0.25, 2.0, 4)
    (0.25, 0.5, 1.0, 2.0)
    """
    _check_range(low, high)
    if count < 1:
        raise ConfigError(f"scale series: count must be at least 1, got {count}")
    if count == 1:
        if not math.isclose(low, high):
            raise ConfigError(f"scale series: one scale needs low == high, got {low} and {high}")
        return (round(low, _DECIMALS),)
    ratio = (high / low) ** (1.0 / (count - 1))
    return tuple(round(low * ratio**i, _DECIMALS) for i in range(count))


def equal_difference_scales(low: float, high: float, step: float) -> tuple[float, ...]:
    """Scales from `low` to `high` (inclusive) in steps of `step` (an arithmetic series).

    >>> equal_difference_scales(0.5, 2.5, 0.5)
    (0.5, 1.0, 1.5, 2.0, 2.5)
    """
    _check_range(low, high)
    if step <= 0:
        raise ConfigError(f"scale series: step must be positive, got {step}")
    steps = (high - low) / step
    count = int(round(steps))
    if not math.isclose(steps, count, abs_tol=1e-6):
        raise ConfigError(f"scale series: ({high} - {low}) is not a whole number of steps of {step}")
    return tuple(round(low + i * step, _DECIMALS) for i in range(count + 1))


def _check_range(low: float, high: float) -> None:
    if not (low > 0 and high >= low):
        raise ConfigError(f"scale series: need 0 < low <= high, got low={low}, high={high}")


def parse_scales(text: str) -> tuple[float, ...]:
    """Parse a command-line scale series.

    Accepted forms:
        ``"0.5,1.0,2.0"``: an explicit list;
        ``"ratio:LOW:HIGH:COUNT"``: `equal_ratio_scales` (``ratio:0.5:2.0:3`` = 0.5, 1, 2);
        ``"diff:LOW:HIGH:STEP"``: `equal_difference_scales` (``diff:0.5:2.5:0.5`` = 0.5, 1, ..., 2.5).

    Raises:
        ConfigError: the text is none of these forms, or a value is not positive.
    """
    text = text.strip()
    kind, sep, rest = text.partition(":")
    try:
        if sep and kind in ("ratio", "diff"):
            parts = rest.split(":")
            if len(parts) != 3:
                last = "COUNT" if kind == "ratio" else "STEP"
                raise ConfigError(f"scale series {text!r}: expected {kind}:LOW:HIGH:{last}")
            low, high = float(parts[0]), float(parts[1])
            if kind == "ratio":
                return equal_ratio_scales(low, high, int(parts[2]))
            return equal_difference_scales(low, high, float(parts[2]))
        if sep:
            raise ConfigError(
                f"scale series {text!r}: unknown rule {kind!r}; use ratio:LOW:HIGH:COUNT or diff:LOW:HIGH:STEP"
            )
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"scale series {text!r}: not a number ({error})") from None
    if not scales:
        raise ConfigError("scale series is empty")
    check_scales(scales, text)
    return scales


def check_scales(scales: tuple[float, ...], text: str | None = None) -> None:
    """Refuse a series with a non-positive, non-finite, duplicated or larger than `MAX_SCALE` scale.

    Args:
        scales: the series.
        text: how the user wrote it (for the message); default the numbers joined by commas.

    Raises:
        ConfigError: naming the series, the scale at fault and what is allowed.
    """
    shown = text if text is not None else format_scales(scales)
    for scale in scales:
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"scale series {shown!r}: every scale must be a positive number, got {scale:g}")
        if scale > MAX_SCALE:
            raise ConfigError(f"scale series {shown!r}: scale {scale:g} is more than the {MAX_SCALE:g} attnseg "
                              f"allows (a scaled input may have at most {MAX_SIDE} px per side)")  # fmt: skip
    duplicates = sorted({scale for scale in scales if scales.count(scale) > 1})
    if duplicates:
        raise ConfigError(f"scale series {shown!r}: scale {format_scales(tuple(duplicates))} appears more than "
                          "once; give each scale once")  # fmt: skip


def check_hierarchical_scales(scales: tuple[float, ...]) -> None:
    """Refuse scales that MscaleOCR's hierarchical fusion cannot use: it fuses every scale into the 1.0 pass.

    Raises:
        ConfigError: 1.0 is not among `scales`.
    """
    if 1.0 not in scales:
        raise ConfigError("hierarchical multi-scale fusion (MscaleOCR) needs 1.0 among the scales; add it, or "
                          "average the scales with multi_scale 'average'")


def check_scaled_input(height: int, width: int, scales: tuple[float, ...], what: str = "the images") -> None:
    """Refuse a scale that makes a `height` x `width` input larger than `MAX_SIDE` px on a side.

    Raises:
        ConfigError: naming the scale, the size it makes and the limit.
    """
    for scale in scales:
        new_height, new_width = rounded_size(height, width, scale)
        if max(new_height, new_width) > MAX_SIDE:
            raise ConfigError(f"scale {scale:g} makes a {new_height}x{new_width} input from {what} ({height}x{width}):"
                              f" more than the {MAX_SIDE} px per side attnseg allows")  # fmt: skip


def format_scales(scales: tuple[float, ...]) -> str:
    """``0.5,1,2`` for (0.5, 1.0, 2.0): how the command line writes a series."""
    return ",".join(f"{scale:g}" for scale in scales)


def rounded_length(length: int, scale: float, rounding: Rounding = "half_up") -> int:
    """Length of one image side after resizing by `scale`, at least 1.

    Args:
        length: side length in pixels.
        scale: resize factor.
        rounding: ``"half_up"`` = ``int(length * scale + 0.5)`` (PaddleSeg); ``"half_even"`` = Python's ``round``
            (NVIDIA's ``round(size * scale)``). They differ only when ``length * scale`` ends in exactly .5.
    """
    value = length * scale
    rounded = int(value + 0.5) if rounding == "half_up" else round(value)
    return max(1, rounded)


def rounded_size(height: int, width: int, scale: float, rounding: Rounding = "half_up") -> tuple[int, int]:
    """(height, width) after resizing by `scale`, each side rounded to the nearest integer (half up as PaddleSeg, or
    half to even as NVIDIA's test-time ``round``) and at least 1; see `rounded_length`."""
    return rounded_length(height, scale, rounding), rounded_length(width, scale, rounding)


def fit_longer_side(height: int, width: int, longer: int) -> tuple[int, int]:
    """(height, width) resized so that the longer side equals `longer`, aspect ratio kept (half-up rounding)."""
    if longer <= 0:
        raise ValueError(f"longer side must be positive, got {longer}")
    scale = longer / max(height, width)
    return (longer, rounded_length(width, scale)) if height >= width else (rounded_length(height, scale), longer)
