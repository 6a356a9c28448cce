"""What to benchmark (`BenchmarkSpec`) and what was measured (`RouteResult` per route, `BenchmarkReport` overall)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from attnseg.benchmark.rates import cpu_description


@dataclass(frozen=True)
class BenchmarkSpec:
    """What to benchmark.

    Attributes:
        model: registered model name (random weights) or a native checkpoint / run directory.
        input_size: (H, W) of the image.
        scales: scales fused inside the model (MscaleOCR); ``(1.0,)`` for others.
        batch: images per call.
        runs: timed calls per route.
        warmup: untimed calls before them (at least 1 for compiling routes).
        threads: CPU threads of every runtime.
        seed: random weights and input.
        slow_runs: timed calls for routes listed in `slow_routes` (e.g. 1 for fp32 eager at full size).
        slow_routes: routes run `slow_runs` times with no warm-up beyond the first call.
        int8_calibration: synthetic scenes the INT8 route is calibrated on (other seeds than the measured image);
            0 calibrates on the measured image itself.
        int8_calibration_size: (H, W) of the calibration scenes; None: `input_size`. NNCF's statistics pass holds
            most activations at once (W48, 3 scales: 5.8 GB at 256x512, a 72.6 GB allocation at 1024x2048), so a
            large model can calibrate smaller scenes; the dynamic graph is then quantized and run at `input_size`.
    """

    model: str
    input_size: tuple[int, int] = (1024, 2048)
    scales: tuple[float, ...] = (1.0,)
    batch: int = 1
    runs: int = 3
    warmup: int = 1
    threads: int = 2
    seed: int = 0
    slow_runs: int | None = None
    slow_routes: tuple[str, ...] = ()
    int8_calibration: int = 1
    int8_calibration_size: tuple[int, int] | None = None


@dataclass
class RouteResult:
    """Measurements of one route (times in seconds, memory in bytes)."""

    route: str
    times: list[float] = field(default_factory=list)
    cpu_times: list[float] = field(default_factory=list)
    first_call: float = 0.0
    peak_bytes: int = 0
    added_bytes: int = 0
    agreement: float | None = None
    error: str | None = None
    layer_precisions: dict[str, int] = field(default_factory=dict)  # OpenVINO: compute layers per runtime precision
    float_precision: str | None = None  # OpenVINO: the precision hint its float layers ran with

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times) if self.cpu_times else float("nan")


@dataclass
class BenchmarkReport:
    """Everything `format_report` prints."""

    spec: BenchmarkSpec
    model_name: str
    flops: float
    fp32_rate: float
    bf16_rate: float
    results: list[RouteResult]
    export_seconds: float | None = None
    memory_check: dict[str, Any] | None = None
    export_dynamic: bool | None = None
    load_average: tuple[float, float] = (float("nan"), float("nan"))
    matmul_engines: tuple[str, str] = ("torch.mm", "torch.mm")  # which engine reached the fp32 / bf16 rate
    cpu: str = field(default_factory=lambda: cpu_description())
    emulated: dict[str, str] = field(default_factory=dict)  # route -> why its precision is emulated on this CPU
    int8_rates: dict[str, float] = field(default_factory=dict)  # int8 matmul ops/s by engine (empty: not measured)
    bf16_native: bool | None = None  # whether this CPU runs bf16 natively (None: not checked)
    quantize_seconds: float | None = None  # the INT8 route's quantization (NNCF), when it ran

    @property
    def int8_rate(self) -> float:
        """The best measured int8 matmul rate (nan when none was measured)."""
        return max(self.int8_rates.values(), default=float("nan"))

    def rate_of(self, precision: str) -> float:
        """The measured matmul rate of ``"fp32"``, ``"bf16"`` or ``"int8"``."""
        return {"fp32": self.fp32_rate, "bf16": self.bf16_rate, "int8": self.int8_rate}[precision]
