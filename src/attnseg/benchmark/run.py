"""`run_benchmark`: one model, one input size and scale list, every asked-for route in its own child process.

The model is saved once as a native checkpoint (random weights calibrated on the benchmark image, when a model name
is given) so that every route runs the same weights; ONNX/OpenVINO files are exported from it in a child process,
and for the INT8 route the OpenVINO file is quantized in another (`attnseg.benchmark.int8.quantize_worker`); then each
route runs in a fresh child (`attnseg.benchmark.routes.route_worker`), its labels are compared with fp32
eager's, and for a multi-scale spec the largest scale's forward alone is measured for the memory target.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.benchmark.calibration import benchmark_image, calibrate_batchnorm
from attnseg.benchmark.children import run_in_child
from attnseg.benchmark.flops import count_flops
from attnseg.benchmark.int8 import calibration_inputs, quantize_worker
from attnseg.benchmark.rates import load_average, machine_matmul_rate, matmul_rates
from attnseg.benchmark.routes import REFERENCE_ROUTE, ROUTES, export_worker, route_worker
from attnseg.benchmark.spec import BenchmarkReport, BenchmarkSpec, RouteResult


def _prepare_checkpoint(spec: BenchmarkSpec, folder: Path) -> tuple[str, Any]:
    """Checkpoint path used by every child, and its sidecar."""
    import torch

    from attnseg.export.onnx import default_checkpoint_info
    from attnseg.inference.predictor import resolve_weights
    from attnseg.models import create_model, list_models
    from attnseg.weights import read_sidecar, save_checkpoint

    if spec.model in list_models() and not Path(spec.model).exists():
        torch.manual_seed(spec.seed)
        model = create_model(spec.model)
        # On the benchmark image itself at its size: a random deep net is chaotic, statistics do not transfer.
        calibrate_batchnorm(model, benchmark_image(*spec.input_size, spec.seed))
        num_classes = int(getattr(model, "num_classes", 0) or 19)
        info = default_checkpoint_info(num_classes)
        base = folder / "weights"
        save_checkpoint(base, model, spec.model, {}, info["class_names"], info["palette"], info["mean"], info["std"],
                        extra={"note": "random weights for benchmarking"})  # fmt: skip
        del model
        return str(base), read_sidecar(base)
    base = resolve_weights(spec.model)
    return str(base), read_sidecar(base)


def _export(spec: BenchmarkSpec, routes: Sequence[str], checkpoint: str, folder: Path, shape: tuple[int, ...],
            log: Callable[[str], None]) -> tuple[dict[str, str], float | None, bool | None]:
    """(exported files by format, export seconds, whether the ONNX graph is dynamic); nothing for torch-only runs."""
    if all(ROUTES[r]["backend"] == "torch" for r in routes):
        return {}, None, None
    want_openvino = any(ROUTES[r]["backend"] == "openvino" for r in routes)
    log("exporting ONNX" + (" + OpenVINO" if want_openvino else ""))
    exported = run_in_child(export_worker, checkpoint=checkpoint, folder=str(folder), shape=shape,
                            scales=spec.scales, threads=spec.threads, want_openvino=want_openvino)  # fmt: skip
    if "error" in exported:
        raise RuntimeError(f"export failed: {exported['error']}")
    seconds = exported.pop("seconds")
    dynamic = exported.pop("dynamic")
    return exported, seconds, dynamic


def _quantize(spec: BenchmarkSpec, files: dict[str, str], folder: Path, shape: tuple[int, ...], dynamic: bool | None,
              mean: Any, std: Any, log: Callable[[str], None]) -> tuple[float | None, str | None]:
    """Quantize the exported OpenVINO graph for the INT8 route (adds ``files["openvino-int8"]``); (seconds, error).
    At the input size the graph is fixed to `shape` first; at another calibration size the dynamic graph is
    quantized as it is."""
    size = tuple(spec.int8_calibration_size or spec.input_size)
    if size != tuple(spec.input_size) and not dynamic:
        return None, f"the exported graph has a fixed size; calibrate at {list(spec.input_size)}, not {list(size)}"
    calibration = calibration_inputs(*size, spec.batch, spec.seed, spec.int8_calibration, mean, std)
    np.save(folder / "calibration.npy", calibration)
    log(f"quantizing the OpenVINO graph to INT8 (NNCF, {len(calibration)} calibration scene(s) at {size[0]}x{size[1]})")
    outcome = run_in_child(quantize_worker, fp32_path=files["openvino"], out_path=str(folder / "model_int8.xml"),
                           calibration_path=str(folder / "calibration.npy"),
                           shape=shape if size == tuple(spec.input_size) else None, threads=spec.threads)  # fmt: skip
    if "error" in outcome:
        log(f"quantization failed: {outcome['error']}")
        return None, f"quantization failed: {outcome['error']}"
    files["openvino-int8"] = outcome["path"]
    return outcome["seconds"], None


def _run_route(spec: BenchmarkSpec, route: str, checkpoint: str, files: dict[str, str], folder: Path,
               log: Callable[[str], None]) -> RouteResult:
    slow = route in spec.slow_routes and spec.slow_runs is not None
    runs, warmup = (spec.slow_runs, 0) if slow else (spec.runs, spec.warmup)
    if ROUTES[route].get("compile") or ROUTES[route]["backend"] == "openvino":
        warmup = max(warmup, 1)  # the first call compiles
    log(f"route {route}: {warmup} warm-up + {runs} timed runs")
    outcome = run_in_child(route_worker, route=route, checkpoint=checkpoint, files=files,
                           images_path=str(folder / "images.npy"), labels_path=str(folder / f"{route}.npy"),
                           scales=spec.scales, runs=runs, warmup=warmup, threads=spec.threads)  # fmt: skip
    result = RouteResult(route)
    if "error" in outcome:
        result.error = outcome["error"]
        log(f"route {route} failed: {result.error}")
        return result
    result.times, result.first_call = outcome["times"], outcome["first_call"]
    result.cpu_times = outcome.get("cpu_times", [])
    result.peak_bytes, result.added_bytes = outcome["peak_bytes"], outcome["added_bytes"]
    result.layer_precisions = outcome.get("layer_precisions", {})
    result.float_precision = outcome.get("float_precision")
    log(f"route {route}: median {result.median:.3f} s")
    return result


def _set_agreement(results: list[RouteResult], folder: Path) -> None:
    """Each route's share of pixels whose label equals fp32 eager's (left None without the reference)."""
    reference_labels = folder / f"{REFERENCE_ROUTE}.npy"
    if not reference_labels.is_file():
        return
    expected = np.load(reference_labels)
    for result in results:
        labels_file = folder / f"{result.route}.npy"
        if result.error is None and labels_file.is_file():
            result.agreement = float((np.load(labels_file) == expected).mean())


def run_benchmark(spec: BenchmarkSpec, routes: Sequence[str], *, memory_check: bool = True,
                  memory_route: str | None = None, work_dir: str | os.PathLike | None = None,
                  log: Callable[[str], None] = print) -> BenchmarkReport:
    """Run every route of `routes` (names of `ROUTES`) on `spec`; see `attnseg.benchmark` for the method.

    Args:
        spec: model, size, scales, repetitions.
        routes: route names, in table order; ``"torch-fp32"`` is the reference for speed-up and agreement.
        memory_check: also measure the largest scale's forward alone (multi-scale specs only).
        memory_route: route of the memory check (default: torch-fp32 if run, else the first route).
        work_dir: where checkpoint, exports and labels go (default: a temporary folder, removed afterwards).
        log: progress messages.

    Raises:
        ValueError: a route name that is not in `ROUTES`.
        RuntimeError: the export child failed.
    """
    from attnseg.hardware import native_bf16_here
    from attnseg.inference.preprocess import normalize_image

    unknown = [r for r in routes if r not in ROUTES]
    if unknown:
        raise ValueError(f"unknown routes {unknown}; available: {', '.join(ROUTES)}")
    owned = work_dir is None
    folder = Path(tempfile.mkdtemp(prefix="attnseg-bench-")) if owned else Path(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        checkpoint, sidecar = _prepare_checkpoint(spec, folder)
        height, width = spec.input_size
        shape = (spec.batch, 3, height, width)
        image = benchmark_image(height, width, spec.seed)
        images = normalize_image(image, sidecar.mean, sidecar.std)[None].repeat(spec.batch, 1, 1, 1).numpy()
        np.save(folder / "images.npy", images)

        log(f"counting FLOPs and measuring matmul rates ({spec.threads} threads)")
        flops = count_flops(sidecar.model, sidecar.model_kwargs, sidecar.num_classes, shape, spec.scales)
        fp32_rate, fp32_engine = machine_matmul_rate("fp32", threads=spec.threads)
        bf16_rate, bf16_engine = machine_matmul_rate("bf16", threads=spec.threads)
        int8_rates = matmul_rates("int8", threads=spec.threads)

        load_before = load_average()
        files, export_seconds, export_dynamic = _export(spec, routes, checkpoint, folder, shape, log)
        quantize_seconds, int8_error = None, None
        if any(ROUTES[route]["precision"] == "int8" for route in routes):
            quantize_seconds, int8_error = _quantize(spec, files, folder, shape, export_dynamic, sidecar.mean,
                                                     sidecar.std, log)  # fmt: skip
        results = [RouteResult(route, error=int8_error) if int8_error and ROUTES[route]["precision"] == "int8"
                   else _run_route(spec, route, checkpoint, files, folder, log) for route in routes]  # fmt: skip
        _set_agreement(results, folder)
        check = _memory_check(spec, results, memory_route, checkpoint, folder, images, log) if memory_check else None
        return BenchmarkReport(spec, sidecar.model, flops, fp32_rate, bf16_rate, results, export_seconds, check,
                               export_dynamic, (load_before, load_average()), (fp32_engine, bf16_engine),
                               int8_rates=int8_rates, bf16_native=native_bf16_here()[0],
                               quantize_seconds=quantize_seconds)  # fmt: skip
    finally:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)


def _memory_check(spec: BenchmarkSpec, results: list[RouteResult], memory_route: str | None, checkpoint: str,
                  folder: Path, images: np.ndarray, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The largest scale's forward alone, single-scale, in the memory route (a torch route that ran); None for a
    single-scale spec or when no such route ran."""
    import torch

    from attnseg.models.mscale.fusion import resize_by_scale

    if len(spec.scales) <= 1:
        return None
    by_route = {r.route: r for r in results if r.error is None}
    route = memory_route or (REFERENCE_ROUTE if REFERENCE_ROUTE in by_route else next(iter(by_route), None))
    if route not in by_route or ROUTES[route]["backend"] != "torch":
        return None
    multi, scale = by_route[route], max(spec.scales)
    resized = resize_by_scale(torch.from_numpy(images), scale).numpy()
    np.save(folder / "images_largest.npy", resized)
    log(f"memory check: {route} at scale {scale} alone, input {list(resized.shape)}")
    outcome = run_in_child(route_worker, route=route, checkpoint=checkpoint, files={},
                           images_path=str(folder / "images_largest.npy"), labels_path=str(folder / "largest.npy"),
                           scales=(1.0,), runs=1, warmup=0, threads=spec.threads)  # fmt: skip
    if "error" in outcome:
        return {"route": route, "scale": scale, "error": outcome["error"]}
    return {"route": route, "scale": scale, "multi_added": multi.added_bytes, "single_added": outcome["added_bytes"],
            "multi_peak": multi.peak_bytes, "single_peak": outcome["peak_bytes"],
            "single_seconds": outcome["times"][0]}  # fmt: skip
