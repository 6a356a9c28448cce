"""CPU inference benchmark: one model, one input size and scale list, several routes, ONE table.

Routes (`ROUTES`): PyTorch fp32 eager (the reference), PyTorch bf16 autocast + channels-last, the same compiled
with `torch.compile`, ONNX Runtime (fp32) and OpenVINO with an explicit fp32 / bf16 precision hint.

How it measures (`run_benchmark`):

- The model is saved once as a native checkpoint in a work folder (random weights, fixed seed, when a model name
  is given), so every route runs exactly the same weights. ONNX/OpenVINO files are exported from it in a child
  process (dynamic height/width, traced small: PERF_NOTES' recipe), with the scale list fused in the graph.
- Every route runs in its own fresh child process (spawned), so one route's caches, allocator state and compiled
  kernels cannot help or hurt another: load, warm-up runs (the first call also compiles for torch.compile and
  OpenVINO: reported as "first s"), then `runs` timed calls of the forward (normalised array -> logits).
- Peak memory: Linux's per-process resident high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs``
  right after the model is loaded. "peak GB" is that high-water mark (weights + runtime + activations during
  warm-up and timed runs); "+act GB" is it minus the resident size just before the reset (what inference adds on
  top of the loaded model). Without a writable ``clear_refs`` the reset is skipped and the peak covers loading too.
- "cpu s" is the median CPU time of the process per call (all its threads). On a machine shared with other work,
  wall time includes waiting for a core (and, with several threads, for the slowest one at every barrier); CPU time
  with ``--threads 1`` is then the better estimate of the quiet-machine time.
- Agreement: the labels (max over classes) of each route's last run, compared pixel by pixel with fp32 eager.
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one forward of the model on the ``meta`` device
  (convolutions and matrix products; shape arithmetic only, nothing computed). The fp32 and bf16 matmul rates
  of this machine are measured with square `torch.mm` and, when installed, an OpenVINO MatMul at the same thread
  count (the better of the two is the machine's rate); "TF/s" is FLOPs / median time and
  "%bf16" its share of the measured bf16 matmul rate (best of repeated calls; CPU time with one thread).
- Memory target: the "+act" peak of the multi-scale forward against the largest scale's forward alone (the
  input resized by that scale, single-scale model), in the same route.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROUTES: dict[str, dict[str, Any]] = {
    "torch-fp32": {"backend": "torch", "precision": "fp32", "channels_last": False, "compile": False},
    "torch-bf16": {"backend": "torch", "precision": "bf16", "channels_last": True, "compile": False},
    "torch-compile": {"backend": "torch", "precision": "bf16", "channels_last": True, "compile": True},
    "onnxruntime": {"backend": "onnxruntime", "precision": "fp32"},
    "openvino-fp32": {"backend": "openvino", "precision": "fp32"},
    "openvino-bf16": {"backend": "openvino", "precision": "bf16"},
}
REFERENCE_ROUTE = "torch-fp32"
# Optional packages a route needs besides torch: every exported route is checked against ONNX Runtime after export.
BACKEND_PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": (),
    "onnxruntime": ("onnx", "onnxruntime"),
    "openvino": ("onnx", "onnxruntime", "openvino"),
}
GB = 1024**3

# Targets stated in the project brief (reported, never asserted).
TARGET_SPEEDUP = 5.0
TARGET_AGREEMENT = 0.995
TARGET_MEMORY_RATIO = 1.2
TARGET_BF16_SHARE = 0.40


def missing_packages(route: str) -> list[str]:
    """The optional packages `route` needs that are not installed (empty when it can run)."""
    import importlib.util

    return [name for name in BACKEND_PACKAGES[ROUTES[route]["backend"]] if importlib.util.find_spec(name) is None]


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


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------------
def speedup(reference_seconds: float, seconds: float) -> float:
    """How many times faster than the reference (nan when either is missing)."""
    if not (reference_seconds > 0 and seconds > 0):
        return float("nan")
    return reference_seconds / seconds


def achieved_rate(flops: float, seconds: float) -> float:
    """FLOP/s of `flops` done in `seconds` (nan for a missing time)."""
    return flops / seconds if seconds > 0 else float("nan")


def _read_status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def reset_peak_memory() -> bool:
    """Reset this process's resident high-water mark (Linux ``clear_refs`` 5); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    """Resident set size now (0 where /proc is unavailable)."""
    kb = _read_status_kb("VmRSS")
    return 0 if kb is None else kb * 1024


def peak_rss_bytes() -> int:
    """Resident high-water mark (``VmHWM``; falls back to ``ru_maxrss``)."""
    kb = _read_status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


def matmul_rate(dtype_name: str, size: int = 2048, seconds: float = 1.0, threads: int = 2) -> float:
    """Measured FLOP/s of square `torch.mm` in ``"fp32"`` or ``"bf16"`` (best of repeated timings)."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.float32 if dtype_name == "fp32" else torch.bfloat16
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    # One thread: CPU time, which other processes on the machine do not inflate; several: wall time.
    clock = time.process_time if threads == 1 else time.perf_counter
    return 2.0 * size**3 / _best_time(lambda: torch.mm(a, b), seconds, clock)


def _best_time(call, seconds: float, clock=time.perf_counter) -> float:
    """Shortest of repeated timings of `call` (after one untimed call) over about `seconds`."""
    call()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == float("inf"):
        start = clock()
        call()
        best = min(best, clock() - start)
    return max(best, 1e-9)


def openvino_matmul_rate(dtype_name: str, size: int = 2048, seconds: float = 1.0, threads: int = 2) -> float | None:
    """Measured FLOP/s of a square MatMul compiled by OpenVINO (``"fp32"`` or ``"bf16"`` precision hint), or None
    when OpenVINO is not installed. On some CPUs OpenVINO's kernels beat `torch.mm`; the machine's rate is the
    better of the two."""
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
    return 2.0 * size**3 / _best_time(lambda: request.infer([values]), seconds)


def machine_matmul_rate(dtype_name: str, threads: int = 2) -> tuple[float, str]:
    """The best measured matmul rate of this machine and which engine reached it (``"torch.mm"``/``"OpenVINO"``)."""
    rates = {"torch.mm": matmul_rate(dtype_name, threads=threads)}
    openvino_rate = openvino_matmul_rate(dtype_name, threads=threads)
    if openvino_rate is not None:
        rates["OpenVINO"] = openvino_rate
    engine = max(rates, key=rates.get)
    return rates[engine], engine


def cpu_description() -> str:
    """CPU model name and its class (AMX / AVX-512 bf16 / AVX-512 / AVX2 only), from /proc/cpuinfo where available:
    the README's speed tables say which class each row was measured on."""
    from attnseg.hardware import cpu_facts

    return cpu_facts().describe() or platform.processor() or platform.machine()


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


def count_flops(model_name: str, model_kwargs: dict[str, Any], num_classes: int, shape: Sequence[int],
                scales: Sequence[float]) -> float:
    """FLOPs of one eval forward (FlopCounterMode on the meta device: no memory, no arithmetic)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from attnseg.models import FixedScales, create_model

    with torch.device("meta"):
        model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    images = torch.empty(tuple(shape), device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        FixedScales(model.eval(), scales)(images)
    return float(counter.get_total_flops())


def benchmark_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB synthetic street scene (realistic statistics for the activations)."""
    from attnseg.data.synthetic import render_scene

    return np.asarray(render_scene(np.random.default_rng(seed), height, width).image, dtype=np.uint8)


def calibrate_batchnorm(model: Any, image: np.ndarray, passes: int = 2) -> None:
    """Make a random-weight model's predictions image-dependent: calibrate it on `image`, then eval mode.

    1. Every BatchNorm's running statistics are set from one forward of `image` (ImageNet normalisation).
    2. Every classifier conv (a ``Conv2d`` with as many outputs as the model has classes, with a bias) is
       standardised on the image: ``w, b <- w / std, (b - mean) / std`` per class, so each class logit has mean 0
       and standard deviation 1 over the image. Done `passes` times, since a standardised aux classifier changes
       what later classifiers see (OCR's object regions).

    Without this, random weights predict one class everywhere with a huge margin (ReLU features share a dominant
    mean direction), and every route would trivially agree 100%. The calibrated model is still unsure everywhere
    (small logit margins), so its agreement between precisions is a pessimistic proxy for a trained model's.
    Statistics from one image or size do not carry over to another (random deep nets are chaotic: calibrated at
    128x256, a 256x512 forward predicts one class again), so calibrate on the very input that is measured.
    """
    import torch

    from attnseg.data.statistics import IMAGENET_MEAN, IMAGENET_STD
    from attnseg.inference.preprocess import normalize_image
    from attnseg.models import FixedScales, fuses_scales
    from attnseg.models.outputs import SegmentationOutput

    images = normalize_image(image, IMAGENET_MEAN, IMAGENET_STD)[None]
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        output = model(images)
    model.eval()
    logits = output.logits if isinstance(output, SegmentationOutput) else output
    classifiers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == logits.shape[1]
                   and m.bias is not None]  # fmt: skip
    for _ in range(passes if classifiers else 0):
        captured: dict[torch.nn.Module, torch.Tensor] = {}
        def keep(module, args, out) -> None:  # a forward hook returning None leaves the output alone
            captured[module] = out.detach()

        hooks = [conv.register_forward_hook(keep) for conv in classifiers]
        scales = (1.0,) if fuses_scales(model) else None
        with torch.no_grad():
            FixedScales(model, scales)(images)
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for conv, out in captured.items():
                mean = out.mean(dim=(0, 2, 3))
                std = out.std(dim=(0, 2, 3)).clamp_min(1e-6)
                conv.weight.div_(std.view(-1, 1, 1, 1))
                conv.bias.sub_(mean).div_(std)


# ---------------------------------------------------------------------------------------------------------------
# Child processes
# ---------------------------------------------------------------------------------------------------------------
def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _export_worker(checkpoint: str, folder: str, shape: Sequence[int], scales: Sequence[float], threads: int,
                   want_openvino: bool) -> dict[str, Any]:
    from attnseg.export.onnx import ExportError, export_onnx, quiet_onnxruntime_session
    from attnseg.weights import load_model

    _set_threads(threads)
    model, sidecar = load_model(checkpoint)
    start = time.perf_counter()
    onnx_path = Path(folder) / "model.onnx"
    result: dict[str, Any] = {"onnx": str(onnx_path), "dynamic": True}
    try:
        # Small trace + symbolic sizes (a few GB), verified at two small sizes against PyTorch.
        # The tolerance only has to catch frozen sizes (gross errors): a random-weight net amplifies fp32 rounding
        # differences between runtimes far beyond a trained one's 1e-6.
        export_onnx(model, onnx_path, shape, dynamic=True, output="logits", scales=scales, sidecar=sidecar, verify=True,
                    tolerance=1e-2)
        # Small sizes cannot prove the graph generic (PSANet's window arithmetic branches on the size): run it once
        # at the benchmark shape too.
        session = quiet_onnxruntime_session(onnx_path)
        try:
            session.run(None, {session.get_inputs()[0].name: np.zeros(tuple(shape), np.float32)})
        except Exception as error:  # onnxruntime's own exception types
            raise ExportError(f"dynamic graph fails at {list(shape)}: {error}") from error
        del session
    except ExportError:
        # Shapes frozen into the graph (PSANet's attention window): trace at the benchmark size itself.
        export_onnx(model, onnx_path, shape, output="logits", scales=scales, sidecar=sidecar, verify=False)
        result["dynamic"] = False
    if want_openvino:
        from attnseg.export.openvino import export_openvino

        result["openvino"] = str(Path(folder) / "model.xml")
        export_openvino(onnx_path, result["openvino"])
    result["seconds"] = time.perf_counter() - start
    return result


def _route_worker(route: str, checkpoint: str, files: dict[str, str], images_path: str, labels_path: str,
                  scales: Sequence[float], runs: int, warmup: int, threads: int) -> dict[str, Any]:
    from attnseg.export.runtime import OnnxRuntimeBackend, OpenVinoBackend, TorchBackend

    _set_threads(threads)
    options = ROUTES[route]
    images = np.load(images_path)
    if options["backend"] == "torch":
        from attnseg.weights import load_model

        model, sidecar = load_model(checkpoint)
        backend = TorchBackend(model, options["precision"], options["channels_last"], options["compile"], scales,
                               sidecar=sidecar)  # fmt: skip
    elif options["backend"] == "onnxruntime":
        backend = OnnxRuntimeBackend(files["onnx"], threads=threads)
    else:
        backend = OpenVinoBackend(files["openvino"], options["precision"], threads=threads)
    baseline = current_rss_bytes()
    reset = reset_peak_memory()
    first_call = 0.0
    logits = None
    for index in range(max(warmup, 0)):
        start = time.perf_counter()
        logits = backend(images)
        if index == 0:
            first_call = time.perf_counter() - start
    times, cpu_times = [], []
    for _ in range(runs):
        start, cpu_start = time.perf_counter(), time.process_time()
        logits = backend(images)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    if warmup <= 0 and times:
        first_call = times[0]
    peak = peak_rss_bytes()
    import torch

    labels = torch.from_numpy(np.asarray(logits, dtype=np.float32)).contiguous(memory_format=torch.channels_last)
    np.save(labels_path, labels.max(dim=1).indices.to(torch.uint8).numpy())
    return {"times": times, "cpu_times": cpu_times, "first_call": first_call, "peak_bytes": peak,
            "added_bytes": max(peak - baseline, 0) if reset else 0}  # fmt: skip


def _child_main(function_name: str, kwargs: dict[str, Any], result_path: str) -> None:
    try:
        result = {"ok": globals()[function_name](**kwargs)}
    except BaseException as error:  # report anything (including MemoryError) to the parent
        result = {"error": f"{type(error).__name__}: {error}"}
    Path(result_path).write_text(json.dumps(result))


def run_in_child(function_name: str, timeout: float | None = None, **kwargs) -> dict[str, Any]:
    """Run a module-level worker in a fresh spawned process; its return value, or ``{"error": message}``."""
    context = multiprocessing.get_context("spawn")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_path = handle.name
    try:
        process = context.Process(target=_child_main, args=(function_name, kwargs, result_path))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            return {"error": f"timed out after {timeout} s"}
        text = Path(result_path).read_text()
        if not text:
            return {"error": f"child exited with status {process.exitcode} (killed for memory?)"}
        result = json.loads(text)
        return result["ok"] if "ok" in result else result
    finally:
        Path(result_path).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------------------------
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


def run_benchmark(spec: BenchmarkSpec, routes: Sequence[str], *, memory_check: bool = True,
                  memory_route: str | None = None, work_dir: str | os.PathLike | None = None,
                  log=print) -> BenchmarkReport:
    """Run every route of `routes` (names of `ROUTES`) on `spec`; see the module docstring for the method.

    Args:
        spec: model, size, scales, repetitions.
        routes: route names, in table order; ``"torch-fp32"`` is the reference for speed-up and agreement.
        memory_check: also measure the largest scale's forward alone (multi-scale specs only).
        memory_route: route of the memory check (default: torch-fp32 if run, else the first route).
        work_dir: where checkpoint, exports and labels go (default: a temporary folder, removed afterwards).
        log: progress messages.
    """
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

        files: dict[str, str] = {}
        export_seconds = export_dynamic = None
        load_before = _load_average()
        if any(ROUTES[r]["backend"] != "torch" for r in routes):
            log("exporting ONNX" + (" + OpenVINO" if any(ROUTES[r]["backend"] == "openvino" for r in routes) else ""))
            exported = run_in_child("_export_worker", checkpoint=checkpoint, folder=str(folder), shape=shape,
                                    scales=spec.scales, threads=spec.threads,
                                    want_openvino=any(ROUTES[r]["backend"] == "openvino" for r in routes))  # fmt: skip
            if "error" in exported:
                raise RuntimeError(f"export failed: {exported['error']}")
            export_seconds = exported.pop("seconds")
            export_dynamic = exported.pop("dynamic")
            files = exported

        results = []
        for route in routes:
            slow = route in spec.slow_routes and spec.slow_runs is not None
            runs, warmup = (spec.slow_runs, 0) if slow else (spec.runs, spec.warmup)
            if ROUTES[route].get("compile") or ROUTES[route]["backend"] == "openvino":
                warmup = max(warmup, 1)  # the first call compiles
            log(f"route {route}: {warmup} warm-up + {runs} timed runs")
            outcome = run_in_child("_route_worker", route=route, checkpoint=checkpoint, files=files,
                                   images_path=str(folder / "images.npy"), labels_path=str(folder / f"{route}.npy"),
                                   scales=spec.scales, runs=runs, warmup=warmup, threads=spec.threads)  # fmt: skip
            result = RouteResult(route)
            if "error" in outcome:
                result.error = outcome["error"]
                log(f"route {route} failed: {result.error}")
            else:
                result.times, result.first_call = outcome["times"], outcome["first_call"]
                result.cpu_times = outcome.get("cpu_times", [])
                result.peak_bytes, result.added_bytes = outcome["peak_bytes"], outcome["added_bytes"]
                log(f"route {route}: median {result.median:.3f} s")
            results.append(result)

        reference_labels = folder / f"{REFERENCE_ROUTE}.npy"
        if reference_labels.is_file():
            expected = np.load(reference_labels)
            for result in results:
                labels_file = folder / f"{result.route}.npy"
                if result.error is None and labels_file.is_file():
                    result.agreement = float((np.load(labels_file) == expected).mean())

        check = None
        largest = max(spec.scales)
        if memory_check and len(spec.scales) > 1:
            by_route = {r.route: r for r in results if r.error is None}
            route = memory_route or (REFERENCE_ROUTE if REFERENCE_ROUTE in by_route else next(iter(by_route), None))
            if route in by_route and ROUTES[route]["backend"] == "torch":
                check = _memory_check(spec, route, by_route[route], checkpoint, folder, images, largest, log)
        return BenchmarkReport(spec, sidecar.model, flops, fp32_rate, bf16_rate, results, export_seconds, check,
                               export_dynamic, (load_before, _load_average()), (fp32_engine, bf16_engine))
    finally:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)


def _memory_check(spec: BenchmarkSpec, route: str, multi: RouteResult, checkpoint: str, folder: Path,
                  images: np.ndarray, scale: float, log) -> dict[str, Any]:
    import torch

    from attnseg.models.mscale.fusion import resize_by_scale

    resized = resize_by_scale(torch.from_numpy(images), scale).numpy()
    np.save(folder / "images_largest.npy", resized)
    log(f"memory check: {route} at scale {scale} alone, input {list(resized.shape)}")
    outcome = run_in_child("_route_worker", route=route, checkpoint=checkpoint, files={},
                           images_path=str(folder / "images_largest.npy"), labels_path=str(folder / "largest.npy"),
                           scales=(1.0,), runs=1, warmup=0, threads=spec.threads)  # fmt: skip
    if "error" in outcome:
        return {"route": route, "scale": scale, "error": outcome["error"]}
    return {"route": route, "scale": scale, "multi_added": multi.added_bytes, "single_added": outcome["added_bytes"],
            "multi_peak": multi.peak_bytes, "single_peak": outcome["peak_bytes"],
            "single_seconds": outcome["times"][0]}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    if value is None or value != value:  # None or NaN
        return missing
    return format(value, spec)


def format_report(report: BenchmarkReport) -> str:
    """The benchmark table and the target lines, as printed by `attnseg benchmark`."""
    spec = report.spec
    height, width = spec.input_size
    lines = [
        f"attnseg benchmark: {report.model_name}, input {spec.batch}x3x{height}x{width}, scales {list(spec.scales)}, "
        f"{spec.threads} threads, {spec.runs} runs after {spec.warmup} warm-up"
        + (f" ({', '.join(spec.slow_routes)}: {spec.slow_runs} run, no warm-up)" if spec.slow_routes else ""),
        f"model: {report.flops / 1e9:.1f} GFLOP per call (FlopCounterMode); measured matmul rate: "
        f"fp32 {report.fp32_rate / 1e12:.2f} TFLOP/s ({report.matmul_engines[0]}), "
        f"bf16 {report.bf16_rate / 1e12:.2f} TFLOP/s ({report.matmul_engines[1]})"
        + (f"; export {report.export_seconds:.1f} s ({'dynamic H/W' if report.export_dynamic else 'static'})"
           if report.export_seconds is not None else ""),
        f"machine: {report.cpu}, {os.cpu_count()} CPUs, "
        f"1-min load average {report.load_average[0]:.1f} at start, "
        f"{report.load_average[1]:.1f} at end (other processes share the CPU when it exceeds the thread count)",
        "",
        f"{'route':<15}{'median s':>10}{'min s':>9}{'max s':>9}{'img/s':>8}{'speed-up':>10}{'TF/s':>7}{'%bf16':>7}"
        f"{'peak GB':>9}{'+act GB':>9}{'agree %':>9}{'first s':>9}{'cpu s':>9}",
    ]
    reference = next((r for r in report.results if r.route == REFERENCE_ROUTE and r.error is None), None)
    for r in report.results:
        if r.error is not None:
            lines.append(f"{r.route:<15}  failed: {r.error[:150]}")
            continue
        rate = achieved_rate(report.flops, r.median)
        gain = speedup(reference.median, r.median) if reference else None
        agreement = None if r.agreement is None else 100 * r.agreement
        name = f"{r.route}*" if r.route in report.emulated else r.route
        lines.append(
            f"{name:<15}{r.median:>10.3f}{min(r.times):>9.3f}{max(r.times):>9.3f}"
            f"{spec.batch / r.median:>8.2f}{_fmt(gain, '.2f'):>9}x"
            f"{rate / 1e12:>7.2f}{100 * rate / report.bf16_rate:>6.0f}%"
            f"{r.peak_bytes / GB:>9.2f}{r.added_bytes / GB:>9.2f}{_fmt(agreement, '.2f'):>9}"
            f"{r.first_call:>9.1f}{_fmt(r.cpu_median, '.3f'):>9}"
        )  # fmt: skip
    routes_run = {r.route for r in report.results}
    lines += [f"* {reason}" for route, reason in report.emulated.items() if route in routes_run]
    lines.append("")
    lines += target_lines(report)
    return "\n".join(lines)


def target_lines(report: BenchmarkReport) -> list[str]:
    """Whether the speed, agreement, bf16-share and memory targets are met, and by how much."""
    lines = []
    ok = [r for r in report.results if r.error is None]
    reference = next((r for r in ok if r.route == REFERENCE_ROUTE), None)
    if reference is not None:
        candidates = [r for r in ok if r.route != REFERENCE_ROUTE]
        if candidates:
            best = min(candidates, key=lambda r: r.median)
            gain = speedup(reference.median, best.median)
            agreement = best.agreement if best.agreement is not None else float("nan")
            met = gain >= TARGET_SPEEDUP and agreement >= TARGET_AGREEMENT
            lines.append(f"speed target (>= {TARGET_SPEEDUP:.0f}x fp32 eager at >= {100 * TARGET_AGREEMENT:.1f}% "
                         f"agreement): fastest {best.route} {gain:.2f}x at {100 * agreement:.2f}% -> "
                         f"{'MET' if met else 'NOT MET'} (by CPU time: "
                         f"{speedup(reference.cpu_median, best.cpu_median):.2f}x)")  # fmt: skip
    if ok:
        fastest = min(ok, key=lambda r: r.median)
        share = achieved_rate(report.flops, fastest.median) / report.bf16_rate
        cpu_share = achieved_rate(report.flops, fastest.cpu_median / report.spec.threads) / report.bf16_rate
        lines.append(f"compute target (>= {100 * TARGET_BF16_SHARE:.0f}% of the bf16 matmul rate): {fastest.route} "
                     f"{100 * share:.0f}% -> {'MET' if share >= TARGET_BF16_SHARE else 'NOT MET'} "
                     f"(by CPU time per thread: {100 * cpu_share:.0f}%)")  # fmt: skip
    check = report.memory_check
    if check is not None:
        if "error" in check:
            lines.append(f"memory target: scale {check['scale']} alone failed: {check['error']}")
        else:
            ratio = check["multi_added"] / max(check["single_added"], 1)
            verdict = "MET" if ratio <= TARGET_MEMORY_RATIO else "NOT MET"
            peak_ratio = check["multi_peak"] / max(check["single_peak"], 1)
            lines.append(
                f"memory target (multi-scale <= {TARGET_MEMORY_RATIO}x scale {check['scale']} alone, "
                f"{check['route']}): "
                f"+act {check['multi_added'] / GB:.2f} GB vs {check['single_added'] / GB:.2f} GB = {ratio:.2f}x "
                f"(peak RSS {check['multi_peak'] / GB:.2f} vs {check['single_peak'] / GB:.2f} GB = {peak_ratio:.2f}x; "
                f"scale alone took {check['single_seconds']:.1f} s) -> {verdict}"
            )  # fmt: skip
    return lines

