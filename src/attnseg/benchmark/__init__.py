"""CPU inference benchmark: one model, one input size and scale list, several routes, ONE table; and the
measurement scripts (``python -m attnseg.benchmark.<name>``: allocator, contention, eval, mscale_inference, psamask,
score, train_step), which share its probes.

Modules: `memory` (/proc resident size and high-water mark), `flops` (FLOP counting), `rates` (matmul rates, CPU
class, emulated routes, timing helpers), `int8` (int8 matmul products, runtime layer precisions, the quantizing
child), `children` (a function in a fresh process), `routes` (route table and the child workers), `calibration`
(benchmark image, random-weight calibration), `spec` (what to run, what was measured), `report` (the table and
target lines), `run` (`run_benchmark`); `allocator` measures eager inference under other memory allocators.

Routes (`ROUTES`): PyTorch fp32 eager (the reference), PyTorch bf16 autocast + channels-last, the same compiled
with `torch.compile`, ONNX Runtime (fp32), OpenVINO with an explicit fp32 / bf16 precision hint, and OpenVINO INT8
(`int8`: the exported graph quantized by `attnseg.export.quantize`, calibrated on synthetic scenes).

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
  count, and the same product as an OpenVINO 1x1 convolution (the best engine's is the machine's rate); the int8
  rate with the OpenVINO products between FakeQuantize nodes that the runtime graph confirms run in u8 x i8, and
  ``torch._int_mm``. "TF/s" is FLOPs / median time,
  "%bf16" its share of the measured bf16 matmul rate and "%prec" its share of the rate of the route's own precision
  (best of repeated calls; CPU time with one thread).
- Memory target: the "+act" peak of the multi-scale forward against the largest scale's forward alone (the
  input resized by that scale, single-scale model), in the same route.
"""

from attnseg.benchmark.calibration import benchmark_image, calibrate_batchnorm
from attnseg.benchmark.children import run_in_child
from attnseg.benchmark.flops import count_flops
from attnseg.benchmark.int8 import int_mm_rate, product_model, runtime_precisions
from attnseg.benchmark.memory import GB, current_rss_bytes, peak_rss_bytes, reset_peak_memory
from attnseg.benchmark.rates import (
    cpu_description,
    emulated_routes,
    machine_matmul_rate,
    matmul_rate,
    matmul_rates,
    openvino_matmul_rate,
)
from attnseg.benchmark.report import (
    TARGET_AGREEMENT,
    TARGET_BF16_SHARE,
    TARGET_FLOAT_SHARE,
    TARGET_INT8_AGREEMENT,
    TARGET_INT8_SPEEDUP,
    TARGET_MEMORY_RATIO,
    TARGET_SPEEDUP,
    achieved_rate,
    format_report,
    speedup,
    target_lines,
)
from attnseg.benchmark.routes import BACKEND_PACKAGES, REFERENCE_ROUTE, ROUTES, missing_packages
from attnseg.benchmark.run import run_benchmark
from attnseg.benchmark.spec import BenchmarkReport, BenchmarkSpec, RouteResult

__all__ = [
    "BACKEND_PACKAGES", "GB", "REFERENCE_ROUTE", "ROUTES", "TARGET_AGREEMENT", "TARGET_BF16_SHARE",
    "TARGET_FLOAT_SHARE", "TARGET_INT8_AGREEMENT", "TARGET_INT8_SPEEDUP", "TARGET_MEMORY_RATIO", "TARGET_SPEEDUP",
    "BenchmarkReport", "BenchmarkSpec", "RouteResult", "achieved_rate", "benchmark_image", "calibrate_batchnorm",
    "count_flops", "cpu_description", "current_rss_bytes", "emulated_routes", "format_report", "int_mm_rate",
    "machine_matmul_rate", "matmul_rate", "matmul_rates", "missing_packages", "openvino_matmul_rate", "peak_rss_bytes",
    "product_model", "reset_peak_memory", "run_benchmark", "run_in_child", "runtime_precisions", "speedup",
    "target_lines",
]
