"""This machine: measured matmul rates (torch.mm and OpenVINO for fp32/bf16; OpenVINO and ``torch._int_mm`` for int8,
see `attnseg.benchmark.int8`), its CPU class, its load, and the routes whose precision it only emulates; plus the
timing helpers the measurement scripts share.

The rates are the yardstick of the benchmark table's "%bf16" and "%prec" columns: achieved FLOP/s of a route over the
best square matmul this machine runs at the same thread count (in bf16, and in the route's own precision).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from attnseg.benchmark.routes import ROUTES


def best_seconds(call: Callable[[], Any], seconds: float, clock: Callable[[], float] = time.perf_counter) -> float:
    """Shortest of repeated timings of `call` (after one untimed call) over about `seconds`."""
    call()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = clock()
        call()
        best = min(best, clock() - start)
    return max(best, 1e-9)


def median_seconds(call: Callable[[], Any], repeats: int, warmup: int = 0) -> float:
    """Median wall time of `repeats` calls of `call`, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(dtype_name: str, size: int = 2048, seconds: float = 1.0, threads: int = 2) -> float:
    """Measured FLOP/s of square `torch.mm` in ``"fp32"`` or ``"bf16"`` (best of repeated timings)."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.float32 if dtype_name == "fp32" else torch.bfloat16
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    # One thread: CPU time, which other processes on the machine do not inflate; several: wall time.
    clock = time.process_time if threads == 1 else time.perf_counter
    return 2.0 * size**3 / best_seconds(lambda: torch.mm(a, b), seconds, clock)


def openvino_matmul_rate(dtype_name: str, size: int = 2048, seconds: float = 1.0, threads: int = 2) -> float | None:
    """Measured FLOP/s of a square MatMul compiled by OpenVINO (``"fp32"`` or ``"bf16"`` precision hint; ``"int8"``:
    `attnseg.benchmark.int8.openvino_int8_matmul_rate`), or None when OpenVINO is not installed. On some CPUs
    OpenVINO's kernels beat `torch.mm`; the machine's rate is the better of the two."""
    if dtype_name == "int8":
        from attnseg.benchmark.int8 import openvino_int8_matmul_rate

        return openvino_int8_matmul_rate(size, seconds, threads)
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    left = ops.parameter([size, size], np.float32)
    right = ops.constant(rng.standard_normal((size, size), dtype=np.float32))
    model = ov.Model([ops.matmul(left, right, False, False)], [left])
    config = {"INFERENCE_PRECISION_HINT": "bf16" if dtype_name == "bf16" else "f32",
              "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    values = rng.standard_normal((size, size), dtype=np.float32)
    clock = time.process_time if threads == 1 else time.perf_counter  # as `matmul_rate`
    return 2.0 * size**3 / best_seconds(lambda: request.infer([values]), seconds, clock)


EMULATED_SIZE = 256  # matrix size of torch.mm's bf16 rate where this CPU only emulates bf16


def _native_bf16() -> bool:
    from attnseg.hardware import native_bf16_here

    return native_bf16_here()[0]


def matmul_rates(dtype_name: str, threads: int = 2) -> dict[str, float]:
    """Measured matmul rate of every engine available for ``"fp32"``, ``"bf16"`` or ``"int8"`` (FLOP/s or ops/s):
    torch.mm (``torch._int_mm`` for int8) and OpenVINO."""
    rates: dict[str, float] = {}
    if dtype_name == "int8":
        from attnseg.benchmark.int8 import int_mm_rate

        torch_rate = int_mm_rate(threads=threads)
        if torch_rate is not None:
            rates["torch._int_mm"] = torch_rate
    elif dtype_name == "bf16" and not _native_bf16():
        # Emulated bf16 torch.mm runs at ~1/300 of fp32 here: a 2048 matmul would take a minute a call.
        rates["torch.mm"] = matmul_rate(dtype_name, size=EMULATED_SIZE, threads=threads)
    else:
        rates["torch.mm"] = matmul_rate(dtype_name, threads=threads)
    openvino_rate = openvino_matmul_rate(dtype_name, threads=threads)
    if openvino_rate is not None:
        rates["OpenVINO"] = openvino_rate
    return rates


def best_rate(rates: dict[str, float]) -> tuple[float, str]:
    """(the best rate, its engine) of `matmul_rates`; (nan, "none") when no engine measured one."""
    if not rates:
        return float("nan"), "none"
    engine = max(rates, key=rates.get)
    return rates[engine], engine


def machine_matmul_rate(dtype_name: str, threads: int = 2) -> tuple[float, str]:
    """The best measured matmul rate of this machine and which engine reached it (``"torch.mm"``/``"OpenVINO"``;
    ``"torch._int_mm"``/``"OpenVINO"`` for int8)."""
    return best_rate(matmul_rates(dtype_name, threads))


def cpu_description() -> str:
    """CPU model name and its class (AMX / AVX-512 bf16 / AVX-512 / AVX2 only), from /proc/cpuinfo where available:
    the README's speed tables say which class each row was measured on."""
    from attnseg.hardware import cpu_facts

    return cpu_facts().describe() or platform.processor() or platform.machine()


def load_average() -> float:
    """1-minute load average of the machine (nan where the OS does not report it)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def emulated_routes(routes: Sequence[str]) -> dict[str, str]:
    """Routes whose precision this CPU does not run natively, with the reason (`attnseg.hardware`'s decision):
    torch's bf16 autocast is emulated at several times the fp32 cost, OpenVINO's bf16 hint compiles to fp32."""
    bf16_routes = [route for route in routes if ROUTES[route]["precision"] == "bf16"]
    if not bf16_routes:
        return {}
    from attnseg.hardware import native_bf16_here

    native, seen = native_bf16_here()
    if native:
        return {}
    return {route: (f"OpenVINO's bf16 hint compiles to fp32 on this CPU ({seen}): it would time openvino-fp32 again"
                    if ROUTES[route]["backend"] == "openvino" else f"bf16 autocast is emulated on this CPU ({seen})")
            for route in bf16_routes}  # fmt: skip
