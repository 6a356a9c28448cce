"""INT8 in the benchmark: the machine's int8 matmul rate, which layers of a compiled OpenVINO model really run in
int8, and the child that quantizes the benchmark's exported graph with the project's own quantizer.

int8 matmul rate: a square matrix product whose two inputs pass through FakeQuantize nodes (activations u8, 256
levels; weights i8, 255 levels, a constant), the pattern NNCF writes in front of every convolution (`product_model`),
as a MatMul and as a 1x1 Convolution. OpenVINO's CPU plugin folds them into integer kernels (u8 x i8 -> i32); a rate
counts only if the compiled model's runtime info says so (`runtime_precisions`), else it is not reported.
``torch._int_mm`` (i8 x i8 -> i32) is another point where torch has it on the CPU. Rates are "ops" (2 per
multiply-add), like the FLOP counts they are compared with.

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


def product_model(size: int, kind: str = "matmul", quantized: bool = False) -> tuple[Any, np.ndarray]:
    """(an OpenVINO model of one size x size x size matrix product, an input for it). `kind` ``"matmul"``: a square
    MatMul with a constant right side; ``"conv1x1"``: the same product as a 1x1 Convolution (size input and output
    channels over size pixels). `quantized`: both inputs through FakeQuantize (activations u8, 256 levels, weights
    i8, 255 levels), the pattern NNCF writes, which the CPU plugin runs as an integer kernel."""
    import openvino as ov
    import openvino.opset13 as ops

    if kind not in ("matmul", "conv1x1"):
        raise ValueError(f"kind must be matmul or conv1x1, got {kind!r}")
    rng = np.random.default_rng(0)
    height = 32 if size % 32 == 0 and size >= 1024 else 8 if size % 8 == 0 else 1
    shape = [size, size] if kind == "matmul" else [1, size, height, size // height]
    weight_shape = (size, size) if kind == "matmul" else (size, size, 1, 1)
    parameter = data = ops.parameter(shape, np.float32)
    weights = ops.constant(rng.standard_normal(weight_shape, dtype=np.float32))
    if quantized:
        data, weights = _fake_quantize(ops, data, 0.0, 4.0, 256), _fake_quantize(ops, weights, -4.0, 4.0, 255)
    product = (ops.matmul(data, weights, False, False) if kind == "matmul"
               else ops.convolution(data, weights, [1, 1], [0, 0], [0, 0], [1, 1]))  # fmt: skip
    return ov.Model([product], [parameter]), rng.uniform(0.0, 4.0, shape).astype(np.float32)


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


def quantize_worker(fp32_path: str, out_path: str, calibration_path: str, shape: Sequence[int] | None,
                    threads: int) -> dict[str, Any]:
    """Child: the INT8 IR of the benchmark's fp32 IR (`quantize_ir`, default settings, fixed to `shape` first unless
    None); its seconds."""
    from attnseg.benchmark.children import set_threads
    from attnseg.export.quantize import quantize_ir

    set_threads(threads)  # NNCF's own OpenVINO forwards use all cores (it compiles with a Core of its own)
    calibration = list(np.load(calibration_path))
    start = time.perf_counter()
    quantize_ir(fp32_path, out_path, calibration, input_shape=shape, source=str(fp32_path))
    return {"seconds": time.perf_counter() - start, "images": len(calibration), "path": str(Path(out_path))}
