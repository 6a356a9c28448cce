"""Inference backends with one interface: ``backend(images) -> array``.

``images`` is a normalised (N, 3, H, W) float32 numpy array (`attnseg.inference.preprocess.normalize_image`);
the result is what ``backend.output`` says: ``"logits"`` / ``"softmax"`` (N, K, H, W) float32, or ``"argmax"``
(N, H, W) class ids. `Backend.scores` always gives (N, K, H, W) float32 (one-hot for argmax backends), which is
what `attnseg.inference` (Predictor, evaluate_model) consumes.

- `TorchBackend`: eager PyTorch on the fast CPU path (`attnseg.inference.fast_path`: `torch.inference_mode`,
  channels-last memory format, bf16 autocast through oneDNN, optionally `torch.compile`), the model's scales fixed
  by `attnseg.models.FixedScales`.
- `OnnxRuntimeBackend`: an ``.onnx`` file from `attnseg export` in ONNX Runtime (fp32, CPU provider).
- `OpenVinoBackend`: an OpenVINO IR (or ``.onnx``) with an explicit precision hint, compiled per input shape.

`load_backend` picks one from a path: a native checkpoint / run directory -> torch, ``.onnx`` -> onnxruntime,
``.xml`` -> openvino.

Agreement of the bf16 paths with fp32 (labels): `attnseg benchmark` measures it per route (README table). On the
random-weight narrow test models, which are unsure everywhere (median top-2 logit margin ~0.17), 89-97% of the
pixels agree and every flipped pixel is a near-tie; confident trained models agree far more.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.errors import AttnsegError, WeightsError, require_optional
from attnseg.export.onnx import ExportSidecar, labels_dtype, read_export_sidecar
from attnseg.inference.confidence import log_probabilities
from attnseg.inference.eval_job import EvalModel
from attnseg.inference.fast_path import bf16_supported, fast_forward, prepare_fast_model
from attnseg.models import FixedScales

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")


def labels_to_one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, K, H, W) float32 one-hot scores of (N, H, W) ids: their argmax gives the ids back."""
    labels = np.asarray(labels).astype(np.int64)
    scores = np.zeros((labels.shape[0], num_classes, *labels.shape[1:]), dtype=np.float32)
    np.put_along_axis(scores, labels[:, None], 1.0, axis=1)
    return scores


class Backend:
    """Common interface; subclasses set `output`, `num_classes`, `sidecar` and implement `__call__`."""

    output: str = "logits"
    num_classes: int = 0
    sidecar: Any = None
    name: str = "backend"

    def __call__(self, images: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def scores(self, images: np.ndarray) -> np.ndarray:
        """(N, K, H, W) float32 scores (logits, probabilities, or one-hot of argmax outputs)."""
        result = self(np.ascontiguousarray(images, dtype=np.float32))
        if self.output == "argmax":
            return labels_to_one_hot(result, self.num_classes)
        return np.asarray(result, dtype=np.float32)

    def labels(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) class ids."""
        result = self(np.ascontiguousarray(images, dtype=np.float32))
        if self.output == "argmax":
            return np.asarray(result)
        # max over channels on channels-last scores: several times faster than argmax over NCHW on CPU.
        tensor = torch.from_numpy(np.asarray(result, dtype=np.float32)).contiguous(memory_format=torch.channels_last)
        return tensor.max(dim=1).indices.to(labels_dtype(tensor.shape[1])).numpy()


class TorchBackend(Backend):
    """Eager (or compiled) PyTorch on the CPU.

    Args:
        model: attnseg model; it is put in eval mode and modified in place by the fast-path options, and called
            through `FixedScales(model, scales)`.
        precision: ``"fp32"`` or ``"bf16"`` (autocast; the logits come back as float32).
        channels_last: NHWC weights and inputs; default on for bf16.
        compile: `torch.compile` the model (see `prepare_fast_model`).
        scales: in-model scales (MscaleOCR hierarchical fusion); None: the model's `eval_scales`.
        output: ``"logits"``, ``"softmax"`` or ``"argmax"``.
        sidecar: checkpoint sidecar (pre-processing, names), kept for `Predictor`.
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        precision: str = "fp32",
        channels_last: bool | None = None,
        compile: bool = False,
        scales: Sequence[float] | None = None,
        output: str = "logits",
        sidecar: Any = None,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "bf16" and not bf16_supported():
            warnings.warn("this CPU has no native bf16 support; bf16 autocast will be slow", stacklevel=2)
        self.model = model
        self.precision = precision
        self.channels_last = precision == "bf16" if channels_last is None else channels_last
        self.output = output
        self.sidecar = sidecar
        self.module = FixedScales(model, scales)
        self.scales = self.module.scales
        self._was_training = model.training
        prepare_fast_model(model, channels_last=self.channels_last, compile=compile)
        self.num_classes = int(getattr(sidecar, "num_classes", 0) or 0)

    def close(self) -> None:
        """Give the model its train/eval mode back."""
        self.model.train(self._was_training)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) float32 logits of a normalised float tensor."""
        logits = fast_forward(self.module, images, self.precision, self.channels_last)
        self.num_classes = int(logits.shape[1])
        return logits

    def __call__(self, images: np.ndarray) -> np.ndarray:
        logits = self.forward(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)))
        if self.output == "softmax":
            return torch.softmax(logits, dim=1).contiguous().numpy()
        if self.output == "argmax":
            labels = logits.contiguous(memory_format=torch.channels_last).max(dim=1).indices
            return labels.to(labels_dtype(logits.shape[1])).numpy()
        return logits.contiguous().numpy()


class OnnxRuntimeBackend(Backend):
    """An exported ``.onnx`` file in ONNX Runtime (CPU).

    Args:
        path: the ``.onnx`` file; its sidecar ``.onnx.json`` says what the output is.
        threads: intra-op threads (default: ONNX Runtime's choice).
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        onnxruntime = require_optional("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"{self.path}: no such ONNX file")
        self.sidecar: ExportSidecar = read_export_sidecar(self.path)
        self.output, self.num_classes = self.sidecar.output, self.sidecar.num_classes
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        (result,) = self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})
        return result


class OpenVinoBackend(Backend):
    """An OpenVINO IR (``.xml``) or ``.onnx`` file on the CPU plugin with an explicit precision hint.

    A graph with dynamic axes is reshaped to each new input shape and compiled for it (kept for the next call with
    the same shape): static shapes let the CPU plugin plan memory and choose kernels.

    Args:
        path: ``.xml`` (with ``.bin``) or ``.onnx``, with the `attnseg export` sidecar beside it.
        precision: ``"fp32"`` or ``"bf16"``; default the sidecar's (``"fp32"``).
        threads: ``INFERENCE_NUM_THREADS``.
    """

    name = "openvino"

    def __init__(self, path: str | os.PathLike, precision: str | None = None, threads: int | None = None):
        from attnseg.export.openvino import require_openvino

        require_openvino()
        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError(f"{self.path}: no such OpenVINO/ONNX file")
        self.sidecar: ExportSidecar = read_export_sidecar(self.path)
        self.output, self.num_classes = self.sidecar.output, self.sidecar.num_classes
        self.precision = precision or self.sidecar.precision or "fp32"
        self.threads = threads
        self._compiled: dict[tuple[int, ...], Any] = {}

    def compiled_for(self, shape: Sequence[int]):
        """The compiled model for one input shape (compiled on first use)."""
        from attnseg.export.openvino import compile_openvino

        key = tuple(int(s) for s in shape)
        if key not in self._compiled:
            if len(self._compiled) >= 4:  # a video or a folder of one size needs one; bound the memory anyway
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = compile_openvino(self.path, self.precision, key, self.threads)
        return self._compiled[key]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        compiled = self.compiled_for(images.shape)
        return compiled(images)[compiled.outputs[0]]


def detect_backend(path: str | os.PathLike) -> str:
    """``"onnxruntime"`` for ``.onnx``, ``"openvino"`` for ``.xml``, else ``"torch"`` (checkpoint or run dir)."""
    suffix = Path(path).suffix.lower()
    return {".onnx": "onnxruntime", ".xml": "openvino"}.get(suffix, "torch")


def load_backend(
    path: str | os.PathLike,
    backend: str = "auto",
    *,
    precision: str | None = None,
    channels_last: bool | None = None,
    compile: bool = False,
    scales: Sequence[float] | None = None,
    threads: int | None = None,
) -> Backend:
    """A backend for a native checkpoint / run directory (torch) or an exported file (onnxruntime, openvino).

    Args:
        path: checkpoint base name or run directory, ``.onnx``, or ``.xml``.
        backend: ``"auto"`` (from the path), ``"torch"``, ``"onnxruntime"`` or ``"openvino"``.
        precision: torch and openvino: ``"fp32"`` or ``"bf16"``.
        channels_last, compile: torch fast-path options.
        scales: torch: in-model scales (exported graphs have theirs fixed; see their sidecar).
        threads: onnxruntime/openvino thread count.

    Raises:
        AttnsegError: an unknown backend, or an option the backend cannot honour.
    """
    kind = detect_backend(path) if backend == "auto" else backend
    if kind not in BACKENDS:
        raise AttnsegError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    if kind == "torch":
        from attnseg.inference.predictor import resolve_weights
        from attnseg.weights import load_model

        model, sidecar = load_model(resolve_weights(path))
        return TorchBackend(model, precision or "fp32", channels_last, compile, scales, sidecar=sidecar)
    if Path(path).suffix.lower() not in (".onnx", ".xml"):
        raise AttnsegError(f"{path}: the {kind} backend needs a file from `attnseg export` (.onnx or .xml)")
    if compile:
        raise AttnsegError("--compile applies to the torch backend only")
    if kind == "onnxruntime":
        if precision not in (None, "fp32"):
            raise AttnsegError("the onnxruntime backend runs fp32 only; use --backend openvino for bf16")
        return OnnxRuntimeBackend(path, threads)
    return OpenVinoBackend(path, precision, threads)


def check_scales_fit(sidecar: ExportSidecar, scales: Sequence[float] | None, path: str | os.PathLike) -> None:
    """Raise if in-graph scales other than the exported ones are asked of an exported model."""
    if scales is not None and [float(s) for s in scales] != [float(s) for s in sidecar.scales]:
        raise AttnsegError(f"{path} fuses scales {sidecar.scales} inside its graph (fixed at export); "
                           f"re-export with --scales {','.join(str(s) for s in scales)} for other scales")  # fmt: skip


def predictor_from_export(
    path: str | os.PathLike,
    backend: str = "auto",
    *,
    precision: str | None = None,
    scales: Sequence[float] | None = None,
    multi_scale: str = "hierarchical",
    flip: bool = False,
    threads: int | None = None,
):
    """An `attnseg.inference.predictor.Predictor` over an exported model (onnxruntime / openvino backend).

    The exported graph already fuses its scales; ``multi_scale="average"`` averages `scales` outside it instead.
    """
    from attnseg.inference.predictor import Predictor

    runtime = load_backend(path, backend, precision=precision, threads=threads)
    tta_scales: Sequence[float] = (1.0,)
    if multi_scale == "average" and scales is not None:
        tta_scales = scales
    else:
        check_scales_fit(runtime.sidecar, scales, path)
    return Predictor.from_numpy_backend(runtime.scores, runtime.sidecar, scales=tta_scales, flip=flip)


class BackendModule(nn.Module):
    """A backend as a parameter-free module ``tensor -> (N, K, H, W) scores`` for `evaluate_model`; a softmax
    export's probabilities come as their log (logits), so flip / scale fusion and confidence are those of logits."""

    def __init__(self, backend: Backend):
        super().__init__()
        self.backend = backend

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scores = torch.from_numpy(self.backend.scores(images.detach().float().cpu().numpy()))
        return (log_probabilities(scores) if self.backend.output == "softmax" else scores).to(images.device)


@dataclass(frozen=True)
class BackendEvalModel:
    """An exported model as `evaluate_model` runs it.

    Attributes:
        model: the backend as a module, with the sidecar's classes, palette and normalisation; on the CPU.
        outside_scales: the scales the evaluation must run outside the graph ((1.0,) when the graph fuses its own),
            None to keep the recipe's (average mode).
        precision: the precision of the evaluation around the backend: fp32 (the backend computes in its own; an
            autocast around it would do nothing).
    """

    model: EvalModel
    outside_scales: tuple[float, ...] | None
    precision: str = "fp32"


def eval_backend_model(
    weights: str | os.PathLike,
    backend: str,
    *,
    precision: str | None = None,
    compile: bool = False,
    scales: Sequence[float] | None = None,
    multi_scale: str = "hierarchical",
) -> BackendEvalModel:
    """What `attnseg eval --backend onnxruntime|openvino` evaluates.

    Args:
        weights: the ``.onnx`` / ``.xml`` file.
        backend: ``"onnxruntime"`` or ``"openvino"`` (see `load_backend`).
        precision: the backend's precision (``"fp32"`` / ``"bf16"``).
        compile: refused (torch only), as by `load_backend`.
        scales: the scales the user asked for (None: not given); in hierarchical mode they must be the graph's.
        multi_scale: ``"hierarchical"`` (the graph fuses its scales, the evaluation runs at 1.0 outside) or
            ``"average"`` (the scales are averaged outside the graph).

    Raises:
        AttnsegError: an option the exported graph cannot honour.
    """
    runtime = load_backend(weights, backend, precision=precision, compile=compile)
    sidecar = runtime.sidecar
    outside_scales = None
    if multi_scale == "hierarchical":
        if scales is not None:
            check_scales_fit(sidecar, scales, weights)
        outside_scales = (1.0,)
    description = f"{weights} ({sidecar.model}, {runtime.name}, in-graph scales {sidecar.scales})"
    model = EvalModel(BackendModule(runtime), list(sidecar.class_names), np.asarray(sidecar.palette), description,
                      tuple(sidecar.mean), tuple(sidecar.std), torch.device("cpu"))  # fmt: skip
    return BackendEvalModel(model, outside_scales)
