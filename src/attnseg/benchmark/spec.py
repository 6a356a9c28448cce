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
