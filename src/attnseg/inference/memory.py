"""Memory budgets for inference: how much a whole-image pass needs, and a sliding-window crop that fits.

A whole-image forward pass of an 8000x8000 image needs tens of gigabytes; run as overlapping windows it needs
only the window's activations plus the full-size score maps. `MemoryModel` predicts both before anything runs:

- **Window activations** are measured, not guessed: `PeakTensorMemory` counts the bytes of every tensor created
  during a probe forward pass (a `TorchDispatchMode` that sees each operator's outputs and a finalizer that sees
  their storages freed) and keeps the peak. Probes at two small sizes (64x64 and 128x128 pixels) are fitted with
  ``peak = a * pixels + b * pixels**2`` (both non-negative). Convolutional networks (HRNet-OCR, MscaleOCR) grow
  linearly; PSANet's point-wise attention map, (H*W) x H x W at 1/8 resolution, grows quadratically, which a
  single bytes-per-pixel figure would miss. When the two probes imply a negative coefficient (fixed overheads
  that are relatively larger at the small probe) the larger per-pixel rate is used alone, which overestimates.
- **Full-size score maps** are counted analytically (`MemoryModel.score_map_bytes`): the normalised input, and
  with test-time passes or windows the tensors those keep at the image's size (resized copies, the running
  total, the window sums), which a window's activations do not include.

Both are multiplied by `SAFETY_FACTOR` (allocator rounding, convolution workspaces and buffers that are not
tensors are not counted). tests/inference/test_inference_memory.py checks the estimate against the measured peak
of real passes.
"""

from __future__ import annotations

import math
import os
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from attnseg.errors import ConfigError

SAFETY_FACTOR = 1.25
# Share of the free memory a default budget may use: the rest is left to the process's own arrays (the decoded
# image, the label maps being written) and to other programs.
CPU_FREE_FRACTION = 0.5
CUDA_FREE_FRACTION = 0.8
PROBE_SIDES = (64, 128)
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_memory_size(text: str) -> int:
    """Bytes of a size such as ``4G``, ``512M``, ``1.5GiB``, ``800000`` (binary units: 1K = 1024 bytes).

    Raises:
        ConfigError: not a positive number with an optional K/M/G/T unit.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text), flags=re.IGNORECASE)
    if match is None:
        raise ConfigError(f"memory size {text!r}: expected a number with an optional unit K, M, G or T (e.g. 4G)")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value < 1:
        raise ConfigError(f"memory size {text!r}: must be at least one byte")
    return int(value)


def format_bytes(count: float) -> str:
    """``1.5 GiB``-style text of a byte count."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+)\s+kB", text, flags=re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def available_memory_bytes(device: torch.device | str = "cpu", meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Free memory for inference on `device`: CUDA's free device memory, else the system's MemAvailable.

    None when it cannot be found out (no /proc/meminfo and no ``sysconf``).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = _meminfo_available(Path(meminfo))
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    return int(available)


def default_memory_budget(device: torch.device | str = "cpu") -> int | None:
    """The budget used when none is given: a fraction of `available_memory_bytes` (CPU 50 %, CUDA 80 %)."""
    device = torch.device(device)
    available = available_memory_bytes(device)
    if available is None:
        return None
    return int(available * (CUDA_FREE_FRACTION if device.type == "cuda" else CPU_FREE_FRACTION))


class PeakTensorMemory(TorchDispatchMode):
    """Context manager measuring the peak bytes of tensors created inside it (``peak`` afterwards).

    Tensors that existed before (weights, the input) are not counted; views share their base's storage and are
    counted once. Works on any device; memory that is not a tensor (cuDNN/oneDNN workspaces) is not seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self._finalizers: list[weakref.finalize] = []
        self.current = 0
        self.peak = 0

    def __exit__(self, *exc_info):
        # No callbacks may outlive the measurement: tensors a probe leaves behind (module caches) must not keep
        # weak references into this object, nor call it when they are freed later.
        for finalizer in self._finalizers:
            finalizer.detach()
        self._finalizers.clear()
        return super().__exit__(*exc_info)

    def _release(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for value in tree_flatten(result)[0]:
            if not isinstance(value, torch.Tensor) or value.device.type == "meta":
                continue
            storage = value.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self._live:
                continue
            self._live[key] = size
            self.current += size
            self.peak = max(self.peak, self.current)
            self._finalizers.append(weakref.finalize(storage, self._release, key))
        return result


def measure_peak_bytes(fn: Callable[[torch.Tensor], object], image: torch.Tensor) -> int:
    """Peak bytes of the tensors `fn(image)` creates, its output included (see `PeakTensorMemory`)."""
    tracker = PeakTensorMemory()
    with torch.inference_mode(), tracker:
        output = fn(image)
        del output
    return tracker.peak


@dataclass(frozen=True)
class MemoryModel:
    """Predicted inference memory of one network + recipe (see the module docstring).

    Attributes:
        linear: window activation bytes per input pixel.
        quadratic: window activation bytes per squared input pixel (PSANet-style attention).
        num_classes: K, for the score maps.
        scales: the test-time scales run outside the network (the largest sets the resized copies).
        test_time_passes: more than one pass is fused (outside scales or flip).
        safety: factor on every estimate.
    """

    linear: float
    quadratic: float
    num_classes: int
    scales: tuple[float, ...] = (1.0,)
    test_time_passes: bool = False
    safety: float = SAFETY_FACTOR

    @classmethod
    def fit(
        cls, peaks: Sequence[tuple[int, int]], num_classes: int, scales: Sequence[float] = (1.0,),
        test_time_passes: bool = False,
    ) -> MemoryModel:
        """Fit ``a * p + b * p**2`` (a, b >= 0) through two (pixels, peak bytes) probes."""
        (p1, m1), (p2, m2) = sorted(peaks)
        quadratic = (m2 - m1 * p2 / p1) / (p2 * (p2 - p1))
        linear = (m1 - quadratic * p1 * p1) / p1
        if quadratic < 0:
            quadratic, linear = 0.0, max(m1 / p1, m2 / p2)
        elif linear < 0:
            quadratic, linear = max(m1 / p1**2, m2 / p2**2), 0.0
        return cls(linear, quadratic, num_classes, tuple(float(s) for s in scales), test_time_passes)

    def window_bytes(self, pixels: float) -> float:
        """Activations of one network pass over `pixels` input pixels."""
        return self.safety * (self.linear * pixels + self.quadratic * pixels * pixels)

    def score_map_bytes(self, height: int, width: int, slide: bool = False) -> float:
        """Full-size tensors of a pass beside the network's own: the normalised input (3 floats per pixel); with
        test-time passes, the resized and the flipped copy (6 s^2), the previous pass's output (K s^2), its logits
        brought back to the input size, their softmax and the running total (3 K); with windows, the window sum
        and its average at the scaled size (2 K s^2)."""
        s2 = max(self.scales) ** 2
        floats = 3.0
        if self.test_time_passes:
            floats += 6 * s2 + self.num_classes * (s2 + 3)
        if slide:
            floats += 2 * self.num_classes * s2
        return self.safety * 4.0 * height * width * floats

    def whole_bytes(self, height: int, width: int) -> float:
        """Peak of a whole-image pass: the network on the largest scaled image plus the score maps."""
        pixels = height * width * max(self.scales) ** 2
        return self.window_bytes(pixels) + self.score_map_bytes(height, width)

    def slide_bytes(self, height: int, width: int, crop_size: tuple[int, int]) -> float:
        """Peak of a sliding-window pass with windows of `crop_size` (bounded by the scaled image)."""
        s = max(self.scales)
        pixels = min(crop_size[0], math.ceil(height * s)) * min(crop_size[1], math.ceil(width * s))
        return self.window_bytes(pixels) + self.score_map_bytes(height, width, slide=True)

    def fitting_crop(self, height: int, width: int, budget: float, multiple: int = 32) -> int | None:
        """The largest square window side (a multiple of `multiple`) whose pass fits `budget`; None if none."""
        longest = math.ceil(max(height, width) * max(self.scales))
        side = max(multiple, (longest // multiple) * multiple)
        while side >= multiple:
            if self.slide_bytes(height, width, (side, side)) <= budget:
                return side
            side -= multiple
        return None


def probe_memory_model(
    fn: Callable[[torch.Tensor], object],
    device: torch.device,
    num_classes: int,
    scales: Sequence[float] = (1.0,),
    test_time_passes: bool = False,
    sides: Sequence[int] = PROBE_SIDES,
) -> MemoryModel:
    """Measure `fn` (one network pass) on random images of two sizes and fit a `MemoryModel`."""
    generator = torch.Generator().manual_seed(0)
    peaks = []
    for side in sides:
        image = torch.randn(1, 3, side, side, generator=generator).to(device)
        peaks.append((side * side, measure_peak_bytes(fn, image)))
    return MemoryModel.fit(peaks, num_classes, scales, test_time_passes)
