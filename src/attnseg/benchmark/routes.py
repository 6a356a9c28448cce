"""The inference routes the benchmark times, and the workers that run in the child processes: the export of the
ONNX/OpenVINO files, and one route's warm-up and timed calls with its memory high-water mark.

Routes (`ROUTES`): PyTorch fp32 eager (the reference), PyTorch bf16 autocast + channels-last, the same compiled with
`torch.compile`, ONNX Runtime (fp32), OpenVINO with an explicit fp32 / bf16 precision hint, and OpenVINO INT8 (the
exported graph quantized by `attnseg.export.quantize`, see `attnseg.benchmark.int8`; its float parts run in bf16
where the CPU has it natively, else fp32).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.benchmark.children import set_threads
from attnseg.benchmark.memory import current_rss_bytes, peak_rss_bytes, reset_peak_memory

ROUTES: dict[str, dict[str, Any]] = {
    "torch-fp32": {"backend": "torch", "precision": "fp32", "channels_last": False, "compile": False},
    "torch-bf16": {"backend": "torch", "precision": "bf16", "channels_last": True, "compile": False},
    "torch-compile": {"backend": "torch", "precision": "bf16", "channels_last": True, "compile": True},
    "onnxruntime": {"backend": "onnxruntime", "precision": "fp32"},
    "openvino-fp32": {"backend": "openvino", "precision": "fp32"},
    "openvino-bf16": {"backend": "openvino", "precision": "bf16"},
    "openvino-int8": {"backend": "openvino", "precision": "int8", "packages": ("nncf",)},
}
REFERENCE_ROUTE = "torch-fp32"
# Optional packages a route needs besides torch: every exported route is checked against ONNX Runtime after export;
# a route's own "packages" come on top (the INT8 route's quantizer).
BACKEND_PACKAGES: dict[str, tuple[str, ...]] = {
    "torch": (),
    "onnxruntime": ("onnx", "onnxruntime"),
    "openvino": ("onnx", "onnxruntime", "openvino"),
}


def missing_packages(route: str) -> list[str]:
    """The optional packages `route` needs that are not installed (empty when it can run)."""
    import importlib.util

    needed = (*BACKEND_PACKAGES[ROUTES[route]["backend"]], *ROUTES[route].get("packages", ()))
    return [name for name in needed if importlib.util.find_spec(name) is None]


def int8_float_precision() -> str:
    """Precision hint of the INT8 route's float parts (softmax, resizes, fusion): bf16 where this CPU runs it
    natively, as a deployment would, else fp32."""
    from attnseg.hardware import native_bf16_here

    return "bf16" if native_bf16_here()[0] else "fp32"


def export_worker(checkpoint: str, folder: str, shape: Sequence[int], scales: Sequence[float], threads: int,
                  want_openvino: bool) -> dict[str, Any]:
    """Child: export the checkpoint to ONNX (dynamic H/W when the graph allows it) and OpenVINO; the files, whether
    the ONNX graph is dynamic, and the seconds it took."""
    from attnseg.export.onnx import ExportError, export_onnx, quiet_onnxruntime_session
    from attnseg.weights import load_model

    set_threads(threads)
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


def _route_backend(route: str, checkpoint: str, files: dict[str, str], scales: Sequence[float], threads: int) -> Any:
    from attnseg.export.runtime import OnnxRuntimeBackend, OpenVinoBackend, TorchBackend

    options = ROUTES[route]
    if options["backend"] == "torch":
        from attnseg.weights import load_model

        model, sidecar = load_model(checkpoint)
        return TorchBackend(model, options["precision"], options["channels_last"], options["compile"], scales,
                            sidecar=sidecar)  # fmt: skip
    if options["backend"] == "onnxruntime":
        return OnnxRuntimeBackend(files["onnx"], threads=threads)
    if options["precision"] == "int8":
        return OpenVinoBackend(files["openvino-int8"], int8_float_precision(), threads=threads)
    return OpenVinoBackend(files["openvino"], options["precision"], threads=threads)


def route_worker(route: str, checkpoint: str, files: dict[str, str], images_path: str, labels_path: str,
                 scales: Sequence[float], runs: int, warmup: int, threads: int) -> dict[str, Any]:
    """Child: load `route`'s model, reset the memory high-water mark, run `warmup` then `runs` timed calls; the
    times (wall and CPU), the first call, the peak and added resident bytes, and for OpenVINO how many compute layers
    run in each precision. The last call's labels go to `labels_path`."""
    set_threads(threads)
    images = np.load(images_path)
    backend = _route_backend(route, checkpoint, files, scales, threads)
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
    result = {"times": times, "cpu_times": cpu_times, "first_call": first_call, "peak_bytes": peak,
              "added_bytes": max(peak - baseline, 0) if reset else 0}  # fmt: skip
    if hasattr(backend, "compiled_for"):  # OpenVINO: what its runtime graph really runs in (after the timing)
        from attnseg.benchmark.int8 import runtime_precisions

        result["layer_precisions"] = dict(runtime_precisions(backend.compiled_for(images.shape)))
        result["float_precision"] = backend.precision
    return result
