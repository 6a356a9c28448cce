"""INT8 in the benchmark: the machine's int8 matmul rate, which layers of a compiled OpenVINO model really run in
int8, and the child that quantizes the benchmark's exported graph with the project's own quantizer.

int8 matmul rate: a square MatMul whose two inputs pass through FakeQuantize nodes (activations u8, 256 levels;
weights i8, 255 levels, a constant), the pattern NNCF writes in front of every convolution. OpenVINO's CPU plugin
folds it into an integer FullyConnected (u8 x i8 -> i32); the rate counts only if the compiled model's runtime info
says so (`runtime_precisions`), else it is not reported. ``torch._int_mm`` (i8 x i8 -> i32) is a second point where
torch has it on the CPU. Rates are "ops" (2 per multiply-add), like the FLOP counts they are compared with.

Quantization (`quantize_worker`): `attnseg.export.quantize.quantize_ir` with its default settings (the ones
`attnseg quantize` uses) on the fp32 IR the benchmark exported, reshaped to the benchmark's input shape, with the
scales fused in the graph; calibrated on synthetic street scenes from `benchmark_image` (other seeds than the measured
image, unless asked otherwise) normalised with the model's mean and std.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Layer types of OpenVINO's CPU runtime graph that do the multiply-adds (what a precision speeds up).
COMPUTE_LAYER_TYPES = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul")
INT8_PRECISIONS = ("u8", "i8")


def runtime_precisions(compiled: Any) -> Counter:
    """How many compute layers (`COMPUTE_LAYER_TYPES`) of a compiled OpenVINO model run in each precision.

    The precision is the runtime graph's ``runtimePrecision`` (the precision the kernel reads its input in): ``u8``
    or ``i8`` for an integer kernel, ``f32``/``bf16`` for a float one.
    """
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and str(info["layerType"].astype(str)) in COMPUTE_LAYER_TYPES:
            counts[str(info["runtimePrecision"].astype(str)).lower()] += 1
    return counts


def int8_share(counts: Mapping[str, int]) -> tuple[int, int]:
    """(compute layers running in int8, all compute layers) of a `runtime_precisions` count."""
    return sum(counts.get(p, 0) for p in INT8_PRECISIONS), sum(counts.values())


def _fake_quantize(ops: Any, node: Any, low: float, high: float, levels: int) -> Any:
    low_node, high_node = (ops.constant(np.array(value, np.float32)) for value in (low, high))
    return ops.fake_quantize(node, low_node, high_node, low_node, high_node, levels)


def openvino_int8_model(size: int, seed: int = 0) -> Any:
    """An OpenVINO model: (size, size) float input -> u8 FakeQuantize -> MatMul with an i8-quantized constant."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(seed)
    left = ops.parameter([size, size], np.float32)
    weights = ops.constant(rng.standard_normal((size, size), dtype=np.float32))
    product = ops.matmul(_fake_quantize(ops, left, 0.0, 4.0, 256), _fake_quantize(ops, weights, -4.0, 4.0, 255),
                         False, False)  # fmt: skip
    return ov.Model([product], [left])


def openvino_int8_matmul_rate(size: int = 2048, seconds: float = 1.0, threads: int = 2) -> float | None:
    """Measured ops/s of `openvino_int8_model` compiled for the CPU (best of repeated calls), or None when OpenVINO
    is not installed or its MatMul does not run in int8 here."""
    try:
        import openvino as ov
    except ImportError:
        return None
    from attnseg.benchmark.rates import best_seconds

    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    compiled = ov.Core().compile_model(openvino_int8_model(size), "CPU", config)
    int8_layers, layers = int8_share(runtime_precisions(compiled))
    if layers == 0 or int8_layers != layers:
        return None
    request = compiled.create_infer_request()
    values = np.random.default_rng(1).uniform(0.0, 4.0, (size, size)).astype(np.float32)
    clock = time.process_time if threads == 1 else time.perf_counter
    return 2.0 * size**3 / best_seconds(lambda: request.infer([values]), seconds, clock)


def int_mm_rate(size: int = 512, seconds: float = 1.0, threads: int = 2) -> float | None:
    """Measured ops/s of ``torch._int_mm`` (i8 x i8 -> i32) on the CPU, or None where torch lacks it. Small default
    size: on CPUs without a fast kernel it runs a reference loop (~1 Gop/s)."""
    import torch

    from attnseg.benchmark.rates import best_seconds

    if not hasattr(torch, "_int_mm"):
        return None
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=generator) for _ in range(2))
    try:
        torch._int_mm(a, b)
    except RuntimeError:  # no CPU kernel in this torch build
        return None
    clock = time.process_time if threads == 1 else time.perf_counter
    return 2.0 * size**3 / best_seconds(lambda: torch._int_mm(a, b), seconds, clock)


def calibration_seeds(seed: int, count: int) -> list[int]:
    """Seeds of the calibration scenes: `count` scenes other than the measured one (seed+1, ...), or the measured
    image itself for ``count == 0``."""
    return [seed] if count == 0 else [seed + 1 + index for index in range(count)]


def calibration_inputs(height: int, width: int, batch: int, seed: int, count: int, mean: Sequence[float],
                       std: Sequence[float]) -> np.ndarray:
    """(len(seeds), batch, 3, H, W) float32: each calibration scene normalised like the model's input."""
    from attnseg.benchmark.calibration import benchmark_image
    from attnseg.export.quantize import normalized_batch

    scenes = [normalized_batch(benchmark_image(height, width, s), mean, std) for s in calibration_seeds(seed, count)]
    return np.stack([np.repeat(scene, batch, axis=0) for scene in scenes])


def quantize_worker(fp32_path: str, out_path: str, calibration_path: str, shape: Sequence[int],
                    threads: int) -> dict[str, Any]:
    """Child: the INT8 IR of the benchmark's fp32 IR (`quantize_ir`, default settings, at `shape`); its seconds."""
    from attnseg.benchmark.children import set_threads
    from attnseg.export.quantize import quantize_ir

    set_threads(threads)  # NNCF's own OpenVINO forwards use all cores (it compiles with a Core of its own)
    calibration = list(np.load(calibration_path))
    start = time.perf_counter()
    quantize_ir(fp32_path, out_path, calibration, input_shape=shape, source=str(fp32_path))
    return {"seconds": time.perf_counter() - start, "images": len(calibration), "path": str(Path(out_path))}
