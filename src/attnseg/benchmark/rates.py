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


def openvino_matmul_rate(dtype_name: str, size: int = 2048, seconds: float = 1.0, threads: int = 2,
                         kind: str = "matmul") -> float | None:
    """Measured FLOP/s (ops/s for int8) of a size x size x size matrix product compiled by OpenVINO for the CPU, in
    ``"fp32"``, ``"bf16"`` (precision hint) or ``"int8"`` (both inputs through FakeQuantize): a square MatMul
    (`kind` ``"matmul"``) or the same product as a 1x1 Convolution (``"conv1x1"``), the kernel family of the model's
    own layers. On some CPUs OpenVINO's kernels beat `torch.mm`; the machine's rate is the best engine's.

    None when OpenVINO is not installed, or for int8 when the runtime graph does not run the product in u8/i8.
    """
    try:
        import openvino as ov
    except ImportError:
        return None
    from attnseg.benchmark.int8 import int8_share, product_model, runtime_precisions

    model, values = product_model(size, kind, quantized=dtype_name == "int8")
    config = {"INFERENCE_PRECISION_HINT": "bf16" if dtype_name == "bf16" else "f32",
              "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(model, "CPU", config)
    if dtype_name == "int8":
        int8_layers, layers = int8_share(runtime_precisions(compiled))
        if layers == 0 or int8_layers != layers:
            return None
    request = compiled.create_infer_request()
    clock = time.process_time if threads == 1 else time.perf_counter  # as `matmul_rate`
    return 2.0 * size**3 / best_seconds(lambda: request.infer([values]), seconds, clock)


EMULATED_SIZE = 256  # matrix size of torch.mm's bf16 rate where this CPU only emulates bf16
# OpenVINO's engines of the rates. On the AVX2-only EPYC, 1 thread: int8 MatMul 0.09 TOP/s (a gemm kernel), int8 1x1
# convolution 0.16 (fp32 0.08-0.09 both): a model's int8 convolutions ran faster than the MatMul "rate".
OPENVINO_ENGINES = {"OpenVINO": "matmul", "OpenVINO 1x1 conv": "conv1x1"}


def _native_bf16() -> bool:
    from attnseg.hardware import native_bf16_here

    return native_bf16_here()[0]


def matmul_rates(dtype_name: str, threads: int = 2) -> dict[str, float]:
    """Measured matmul rate of every engine available for ``"fp32"``, ``"bf16"`` or ``"int8"`` (FLOP/s or ops/s):
    torch.mm (``torch._int_mm`` for int8), OpenVINO's MatMul and the same product as an OpenVINO 1x1 convolution."""
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
    for engine, kind in OPENVINO_ENGINES.items():
        openvino_rate = openvino_matmul_rate(dtype_name, threads=threads, kind=kind)
        if openvino_rate is not None:
            rates[engine] = openvino_rate
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
