"""ONNX export of attnseg models, with a sidecar JSON that makes the file usable without attnseg's configs.

What gets exported is `ExportWrapper(model)`: normalised NCHW float32 images in, ONE tensor out:

- ``output="logits"``: (N, K, H, W) float32 class scores at the input size (named ``logits``);
- ``output="softmax"``: (N, K, H, W) float32 probabilities (named ``probabilities``);
- ``output="argmax"``: (N, H, W) **uint8** class ids (named ``labels``; int64 when K > 256). uint8 because a
  Cityscapes label map is then 2 MB instead of 16 MB at 1024x2048, and an id fits in it exactly. The graph ends
  with ArgMax (first maximal index, like ``torch.argmax``) followed by Cast.

MscaleOCR's hierarchical multi-scale inference is exported as ONE graph (`attnseg.models.FixedScales`): the Python
loop over the scales is unrolled by tracing, so the scale list is fixed at export time (``scales``) and recorded in
the sidecar.

Memory: the tracing exporter keeps every intermediate of the example forward, so exporting at 1024x2048 takes
15-19 GB (PERF_NOTES). With ``dynamic=True`` the graph is traced at a small size (`DYNAMIC_TRACE_SIZE`) with
symbolic batch/height/width and the runtime reshapes it; speed is the same. Resizes by a scale factor are traced
as shape arithmetic (``floor(side * scale)``), so they stay correct at any size.

The sidecar (``<model file>.json``, e.g. ``model.onnx.json``) holds the pre-processing (mean/std on 0-255 RGB,
NCHW float32), input/output names, shapes and dynamic axes, the output op and dtype, class names, palette, scales
and the attnseg version; `read_export_sidecar` reads it back.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from attnseg.errors import AttnsegError, WeightsError, require_optional
from attnseg.fileio import atomic_path, atomic_write_text
from attnseg.inference.evaluate import eval_mode
from attnseg.models import FixedScales
from attnseg.models.outputs import logits_of
from attnseg.weights import ModelDescription

OutputOp = Literal["logits", "softmax", "argmax"]
OUTPUT_OPS: tuple[str, ...] = ("logits", "softmax", "argmax")
OUTPUT_NAMES = {"logits": "logits", "softmax": "probabilities", "argmax": "labels"}
INPUT_NAME = "images"
EXPORT_SIDECAR_FORMAT = "attnseg.export"
EXPORT_SIDECAR_VERSION = 1
# Spatial size traced for a dynamic export: small enough to export any model here in a few GB, divisible by 32 so
# every backbone stride divides it.
DYNAMIC_TRACE_SIZE = (256, 512)
# Operator domains of the ONNX standard ("" and its alias "ai.onnx").
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})


class ExportError(AttnsegError):
    """An export failed or produced a graph that does not reproduce the PyTorch model."""


# ---------------------------------------------------------------------------------------------------------------
# Sidecar
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportSidecar(ModelDescription):
    """How to feed and read an exported model (the ``.json`` next to it).

    Attributes (beyond `ModelDescription`: model, its kwargs, classes, palette, preprocessing):
        input_name: graph input name; the tensor is (N, 3, H, W) float32, normalised.
        input_shape: (N, C, H, W) with a string (``"batch"``, ``"height"``, ``"width"``) for each dynamic axis.
        output_name: graph output name.
        output: ``"logits"``, ``"softmax"`` or ``"argmax"``.
        output_dtype: ``"float32"``, ``"uint8"`` or ``"int64"``.
        scales: the scales fused inside the graph (hierarchical attention), ``[1.0]`` for a single scale.
        opset: ONNX opset (ONNX files only).
        model_format: ``"onnx"`` or ``"openvino"``.
        precision: default inference precision hint (OpenVINO: ``"fp32"``/``"bf16"``); ``"fp32"`` for ONNX.
        trace_shape: the example input shape the graph was traced with.
        attnseg_version: version that wrote the file.
        extra: provenance (source weights, parity measured at export).
    """

    input_name: str = INPUT_NAME
    input_shape: list[int | str] = field(default_factory=lambda: [1, 3, 1024, 2048])
    output_name: str = "logits"
    output: str = "logits"
    output_dtype: str = "float32"
    scales: list[float] = field(default_factory=lambda: [1.0])
    opset: int | None = 17
    model_format: str = "onnx"
    precision: str = "fp32"
    trace_shape: list[int] = field(default_factory=list)
    attnseg_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        """Axis index -> symbolic name of the input's dynamic axes."""
        return {i: d for i, d in enumerate(self.input_shape) if isinstance(d, str)}

    def to_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        pre = {"mean": data.pop("mean"), "std": data.pop("std"), "channel_order": data.pop("channel_order"),
               "value_range": [0, 255], "layout": "NCHW", "dtype": "float32"}  # fmt: skip
        return {"format": EXPORT_SIDECAR_FORMAT, "format_version": EXPORT_SIDECAR_VERSION, "preprocessing": pre,
                "dynamic_axes": {str(k): v for k, v in self.dynamic_axes.items()}, **data}  # fmt: skip

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], path: Path) -> ExportSidecar:
        if data.get("format") != EXPORT_SIDECAR_FORMAT:
            raise WeightsError(f"{path}: not an attnseg export sidecar (format {data.get('format')!r})")
        if int(data.get("format_version", 0)) > EXPORT_SIDECAR_VERSION:
            raise WeightsError(f"{path}: export sidecar version {data['format_version']} is newer than this attnseg")
        try:
            pre = data["preprocessing"]
            names = {f for f in cls.__dataclass_fields__} - {"mean", "std", "channel_order"}
            values = {k: data[k] for k in names if k in data}
            return cls(mean=[float(v) for v in pre["mean"]], std=[float(v) for v in pre["std"]],
                       channel_order=str(pre.get("channel_order", "RGB")), **values)  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            raise WeightsError(f"{path}: malformed export sidecar ({error!r})") from error


def export_sidecar_path(model_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json`` (the sidecar sits beside the model under its full name)."""
    path = Path(model_path)
    return path if path.suffix == ".json" else path.with_name(path.name + ".json")


def write_export_sidecar(model_path: str | os.PathLike, sidecar: ExportSidecar) -> Path:
    """Write `sidecar` next to `model_path`; returns the sidecar's path."""
    target = export_sidecar_path(model_path)
    atomic_write_text(target, json.dumps(sidecar.to_json_dict(), indent=2) + "\n")
    return target


def read_export_sidecar(path: str | os.PathLike) -> ExportSidecar:
    """The `ExportSidecar` of an exported model (``path``: the model file or its ``.json``).

    Raises:
        WeightsError: the sidecar is missing or malformed.
    """
    target = export_sidecar_path(path)
    if not target.is_file():
        raise WeightsError(f"{target}: export sidecar not found (written by `attnseg export` beside the model)")
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsError(f"{target}: cannot read export sidecar ({error})") from error
    return ExportSidecar.from_json_dict(data, target)


def default_checkpoint_info(num_classes: int) -> dict[str, Any]:
    """Class names, palette and ImageNet mean/std for a model without a checkpoint sidecar (random weights)."""
    from attnseg.data.labels import fallback_class_table
    from attnseg.data.statistics import IMAGENET_MEAN, IMAGENET_STD

    names, palette = fallback_class_table(num_classes)
    return {"class_names": names, "palette": palette.astype(int).tolist(), "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD)}


# ---------------------------------------------------------------------------------------------------------------
# The exported module
# ---------------------------------------------------------------------------------------------------------------
def labels_dtype(num_classes: int) -> torch.dtype:
    """uint8 ids when every class id fits in a byte, else int64."""
    return torch.uint8 if num_classes <= 256 else torch.int64


class ExportWrapper(nn.Module):
    """``images -> one tensor``: the model's fused logits, their softmax, or their argmax (see module docstring).

    Args:
        model: a segmentation model in eval mode returning a `SegmentationOutput` or a logits tensor.
        output: ``"logits"``, ``"softmax"`` or ``"argmax"``.
    """

    def __init__(self, model: nn.Module, output: OutputOp = "logits"):
        super().__init__()
        if output not in OUTPUT_OPS:
            raise ValueError(f"output must be one of {OUTPUT_OPS}, got {output!r}")
        self.model = model
        self.output = output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        result = self.model(images)
        logits = logits_of(result)
        if self.output == "softmax":
            return torch.softmax(logits, dim=1)
        if self.output == "argmax":
            return logits.argmax(dim=1).to(labels_dtype(logits.shape[1]))
        return logits


# ---------------------------------------------------------------------------------------------------------------
# Graph checks
# ---------------------------------------------------------------------------------------------------------------
def non_standard_ops(onnx_model: Any) -> list[str]:
    """``domain::op`` of every node (subgraphs included) outside the standard ONNX operator set."""
    onnx = require_optional("onnx")

    found: set[str] = set()

    def visit(graph) -> None:
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS or not onnx.defs.has(node.op_type, node.domain):
                found.add(f"{node.domain or 'ai.onnx'}::{node.op_type}")
            for attribute in node.attribute:
                if attribute.g is not None and len(attribute.g.node):
                    visit(attribute.g)
                for sub in attribute.graphs:
                    visit(sub)

    visit(onnx_model.graph)
    return sorted(found)


def op_types(onnx_model: Any) -> set[str]:
    """Operator types used by the top-level graph."""
    return {node.op_type for node in onnx_model.graph.node}


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max|actual - expected| / max|expected|``: error relative to the scale of the reference output."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs {expected.shape}")
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


def label_agreement(actual: np.ndarray, expected: np.ndarray) -> float:
    """Fraction of equal entries of two label maps."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs {expected.shape}")
    return float((actual == expected).mean())


# ---------------------------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------------------------
def example_input(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """A deterministic normalised image batch (standard normal values) of `shape`."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(int(s) for s in shape), generator=generator)


def _checkpoint_fields(sidecar: Any, model: nn.Module, num_classes: int) -> dict[str, Any]:
    """model name/kwargs, classes, palette, mean/std from a `CheckpointSidecar`, a mapping, or defaults."""
    info = {"model": type(model).__name__, "model_kwargs": {}, **default_checkpoint_info(num_classes)}
    if sidecar is None:
        return info
    source = sidecar if isinstance(sidecar, Mapping) else {k: getattr(sidecar, k) for k in
                                                          ("model", "model_kwargs", "class_names", "palette", "mean",
                                                           "std") if hasattr(sidecar, k)}  # fmt: skip
    for key in ("model", "model_kwargs", "class_names", "palette", "mean", "std"):
        if source.get(key) is not None:
            info[key] = source[key]
    info["palette"] = np.asarray(info["palette"]).astype(int).tolist()
    info["mean"], info["std"] = [float(v) for v in info["mean"]], [float(v) for v in info["std"]]
    return info


def _declared_classes(sidecar: Any) -> int | None:
    """Class count a checkpoint sidecar states (saves a forward pass just to learn it)."""
    if sidecar is None:
        return None
    names = sidecar.get("class_names") if isinstance(sidecar, Mapping) else getattr(sidecar, "class_names", None)
    return len(names) if names else None


def _num_classes(wrapper: ExportWrapper, images: torch.Tensor) -> int:
    with torch.inference_mode():
        result = wrapper.model(images)
    return int(logits_of(result).shape[1])


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int] = (1, 3, 1024, 2048),
    *,
    dynamic: bool = False,
    output: OutputOp = "logits",
    scales: Sequence[float] | None = None,
    opset: int = 17,
    sidecar: Any = None,
    trace_size: Sequence[int] | None = None,
    verify: bool | None = None,
    tolerance: float = 1e-4,
) -> ExportSidecar:
    """Export `model` to an ONNX file plus its sidecar ``<path>.json``.

    Args:
        model: an attnseg segmentation model (its train/eval mode is restored afterwards).
        path: target ``.onnx`` file.
        input_shape: (N, 3, H, W) the graph is made for; with `dynamic` only recorded as the typical shape.
        dynamic: symbolic batch, height and width; the graph is traced at `trace_size` (default
            `DYNAMIC_TRACE_SIZE`) instead of `input_shape`, which keeps the export's memory small.
        output: ``"logits"``, ``"softmax"`` or ``"argmax"`` (uint8 ids).
        scales: scales fused inside the graph for MscaleOCR (default: the model's `eval_scales`): the graph is
            that of `attnseg.models.FixedScales`; a model without multi-scale fusion accepts only ``[1.0]``.
        opset: ONNX opset version.
        sidecar: the checkpoint's `CheckpointSidecar` (or a mapping with model/model_kwargs/class_names/palette/
            mean/std); None uses Cityscapes names/palette (19 classes) and ImageNet mean/std.
        trace_size: (H, W) traced for a dynamic export.
        verify: run the file in ONNX Runtime and compare with PyTorch at the traced size (and, if `dynamic`, at a
            second size, which catches most shapes frozen into the graph). Default: on for dynamic exports (small
            sizes), off otherwise (a full-size PyTorch forward can take minutes). Passing at small sizes does not
            prove a graph generic: PSANet's attention-window arithmetic takes another branch on larger grids, so
            export PSANet with a fixed input shape.
        tolerance: largest accepted `relative_error` of float outputs (see `verify_onnx`).

    The graph is written, checked and verified under a temporary name beside `path` and renamed only then, so
    `path` never holds a partial or failed export; the sidecar follows it.

    Returns:
        The written `ExportSidecar` (its ``extra`` has the measured parity when verified).

    Raises:
        ExportError: non-standard operators in the graph, or a verification failure.
    """
    path = Path(path)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"input_shape must be (N, 3, H, W), got {shape}")
    if output not in OUTPUT_OPS:
        raise ValueError(f"output must be one of {OUTPUT_OPS}, got {output!r}")
    trace_shape = shape
    if dynamic:
        height, width = tuple(trace_size) if trace_size is not None else DYNAMIC_TRACE_SIZE
        trace_shape = (shape[0], 3, min(height, shape[2]), min(width, shape[3]))
    verify = dynamic if verify is None else verify
    path.parent.mkdir(parents=True, exist_ok=True)

    fixed = FixedScales(model, scales)
    with eval_mode(model), atomic_path(path) as temp:
        wrapper = ExportWrapper(fixed, output).eval()
        num_classes = _declared_classes(sidecar) or _num_classes(wrapper, example_input((1, *trace_shape[1:])))
        _trace_to_file(wrapper, temp, path, trace_shape, output=output, dynamic=dynamic, opset=opset)
        result = _export_sidecar(sidecar, model, num_classes, shape, trace_shape, dynamic=dynamic, output=output,
                                 scales=fixed.scales, opset=opset)  # fmt: skip
        if verify:
            sizes = [trace_shape[2:]]
            if dynamic:
                sizes.append((trace_shape[2] + 32, trace_shape[3] - 32 if trace_shape[3] > 64 else trace_shape[3] + 64))
            parity = verify_onnx(wrapper, temp, [(1, 3, h, w) for h, w in sizes], output=output, tolerance=tolerance)
            result.extra["parity"] = parity
    write_export_sidecar(path, result)
    return result


def _trace_to_file(
    wrapper: ExportWrapper, temp: Path, path: Path, trace_shape: tuple[int, ...], *, output: OutputOp,
    dynamic: bool, opset: int,
) -> None:
    """Trace `wrapper` at `trace_shape` into the ONNX file `temp` (renamed to `path` later) and check the graph."""
    onnx = require_optional("onnx")

    output_name = OUTPUT_NAMES[output]
    dynamic_axes = None
    if dynamic:
        out_axes = {0: "batch", 2: "height", 3: "width"} if output != "argmax" else {0: "batch", 1: "height",
                                                                                     2: "width"}  # fmt: skip
        dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, output_name: out_axes}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes, deprecation notices
        torch.onnx.export(
            wrapper, (example_input(trace_shape),), str(temp), input_names=[INPUT_NAME], output_names=[output_name],
            opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False,
        )  # fmt: skip
    onnx.checker.check_model(str(temp))
    foreign = non_standard_ops(onnx.load(str(temp), load_external_data=False))
    if foreign:
        raise ExportError(f"{path}: the graph uses non-standard operators {foreign}")


def _export_sidecar(
    sidecar: Any, model: nn.Module, num_classes: int, shape: tuple[int, ...], trace_shape: tuple[int, ...], *,
    dynamic: bool, output: OutputOp, scales: Sequence[float], opset: int,
) -> ExportSidecar:
    """The `ExportSidecar` of a traced graph, from the checkpoint's sidecar (or defaults) and the export options.

    Raises:
        ExportError: the checkpoint names another number of classes than the model predicts.
    """
    from attnseg._version import __version__

    out_dtype = "float32" if output != "argmax" else str(labels_dtype(num_classes)).removeprefix("torch.")
    info = _checkpoint_fields(sidecar, model, num_classes)
    input_dims: list[int | str] = ["batch", 3, "height", "width"] if dynamic else list(shape)
    if len(info["class_names"]) != num_classes:
        named = len(info["class_names"])
        raise ExportError(f"the model predicts {num_classes} classes but the sidecar names {named}")
    return ExportSidecar(
        model=str(info["model"]), model_kwargs=dict(info["model_kwargs"]), num_classes=num_classes,
        class_names=[str(n) for n in info["class_names"]], palette=info["palette"], mean=info["mean"],
        std=info["std"], input_shape=input_dims, output_name=OUTPUT_NAMES[output], output=output,
        output_dtype=out_dtype, scales=[float(s) for s in scales], opset=opset, model_format="onnx",
        trace_shape=list(trace_shape), attnseg_version=__version__,
    )  # fmt: skip


def quiet_onnxruntime_session(path: str | os.PathLike) -> Any:
    """A CPU ONNX Runtime session that logs only fatal errors: for checks whose failures we report ourselves
    (as `ExportError`, naming the file and the shape) instead of ONNX Runtime's own error lines."""
    onnxruntime = require_optional("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def verify_onnx(
    wrapper: nn.Module,
    path: str | os.PathLike,
    shapes: Sequence[Sequence[int]],
    *,
    output: OutputOp = "logits",
    tolerance: float = 1e-4,
) -> list[dict[str, Any]]:
    """Compare ONNX Runtime with the PyTorch `wrapper` on example inputs of each shape.

    Float outputs must agree within `tolerance` (`relative_error`); argmax outputs must agree on at least
    ``1 - 1e-3`` of the pixels (float rounding can flip near-ties).

    Returns:
        One ``{"shape", "relative_error" | "agreement"}`` dict per shape.

    Raises:
        ExportError: a mismatch, or a shape the graph cannot run (a shape frozen into a "dynamic" graph).
    """
    session = quiet_onnxruntime_session(path)
    results = []
    for shape in shapes:
        images = example_input(shape, seed=1)
        with torch.inference_mode():
            expected = wrapper(images).numpy()
        try:
            (actual,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
        except Exception as error:  # onnxruntime raises its own exception types
            raise ExportError(f"{path}: the graph fails at input shape {list(shape)} (a size frozen into the graph? "
                              f"export this model with a fixed input shape, without dynamic axes): {error}") from error
        if actual.shape != expected.shape:
            raise ExportError(f"{path}: output shape {actual.shape} at input {list(shape)}, "
                              f"PyTorch gives {expected.shape}")
        if output == "argmax":
            agreement = label_agreement(actual, expected)
            results.append({"shape": list(shape), "agreement": agreement})
            if agreement < 1 - 1e-3:
                raise ExportError(f"{path}: ONNX labels agree with PyTorch on only {agreement:.4%} at {list(shape)}")
        else:
            error = relative_error(actual, expected)
            results.append({"shape": list(shape), "relative_error": error})
            if error > tolerance:
                raise ExportError(f"{path}: ONNX output differs from PyTorch by {error:.2e} (relative) at "
                                  f"{list(shape)}; a size frozen into the graph? (export with a fixed input shape)")
    return results
