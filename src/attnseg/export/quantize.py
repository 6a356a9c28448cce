"""Post-training INT8 quantization of an exported OpenVINO graph with NNCF, and the report of what it costs.

The whole exported graph is quantized at once (for MscaleOCR: every scale, the attention heads and the fusion), so
calibration sees the activations of the real multi-scale inference. NNCF inserts quantize/dequantize pairs in front of
convolutions, matrix products and resizes: the convolutions and products then run on int8, while softmax, sigmoid, the
resizes themselves and the fusion arithmetic compute in floating point (a resize reads int8-rounded values; leaving
those unrounded changed neither the speed nor the agreement of the trained W48, 98.73% against 98.74% over three
scenes). ``keep_float`` names further parts to leave unquantized (see `KEEP_FLOAT_GROUPS`), and ``float_scales`` whole
scales of a multi-scale graph (`attnseg.export.scale_branches`). `AccuracyControl` runs NNCF's accuracy-aware mode
instead, which returns the costliest quantized operations to floating point until a bound on the mIoU drop or on the
agreement with fp32 holds.

Measured on the demo model (HRNetV2-W18-Small-v1 + OCR, 3 scales, 256x512, 30 synthetic val images, 16
calibration images): the CNN defaults lose 0.7 points of mIoU (0.737 -> 0.730, 99.1% label agreement); NNCF's
transformer model type, which keeps the attention products' inputs unquantized, loses 0.13 points (99.48%) at the
same speed; keeping the whole OCR head in floating point loses nothing but is no faster than fp32. The transformer
type is therefore the default. `nncf` (the OpenVINO toolkit's quantizer) and `openvino` form the ``int8`` extra.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from attnseg.errors import AttnsegError, require_optional
from attnseg.export.onnx import ExportSidecar, read_export_sidecar, write_export_sidecar
from attnseg.export.openvino import compile_openvino, require_openvino, save_ir_atomically
from attnseg.export.scale_branches import float_scale_operations

# Node-name patterns (regular expressions over the exported graph's node names, which follow the module paths).
KEEP_FLOAT_GROUPS: dict[str, tuple[str, ...]] = {
    "scale-attention": (r".*/scale_attn/.*",),  # MscaleOCR's per-scale attention head
    "ocr": (r".*/ocr/.*",),  # the whole OCR head (object regions, context, classifier)
    "ocr-context": (r".*object_context_block.*",),  # OCR's pixel-object attention only
    "psa": (r".*/psa/.*|.*attention.*",),  # PSANet's point-wise spatial attention branches
}
MODEL_TYPES = ("transformer", "cnn")
PRESETS = ("mixed", "performance")
BIAS_CORRECTIONS = ("fast", "full", "none")
# NNCF's fix for the int8 products of CPUs without VNNI/AMX, which add pairs of u8*s8 products in 16 bits and can
# saturate: the weights of the chosen layers get 7 bits of range instead of 8.
OVERFLOW_FIXES = {"first-layer": "FIRST_LAYER", "all": "ENABLE", "none": "DISABLE"}


def require_nncf():
    """The `nncf` module, or an `AttnsegError` naming the extra that installs it."""
    return require_optional("nncf")


@dataclasses.dataclass(frozen=True)
class QuantizationSettings:
    """How NNCF quantizes the graph.

    Attributes:
        model_type: ``"transformer"`` (NNCF keeps the inputs of attention products such as OCR's pixel-object
            MatMuls in floating point) or ``"cnn"`` (NNCF's defaults: every convolution and MatMul).
        preset: ``"mixed"`` (symmetric weights, asymmetric activations) or ``"performance"`` (both symmetric).
        keep_float: names of `KEEP_FLOAT_GROUPS` left unquantized.
        bias_correction: how NNCF corrects the biases for the shift quantization causes in each layer's mean output:
            ``"none"`` (the default here), ``"fast"`` (NNCF's default) or ``"full"`` (its slower layer-by-layer
            algorithm). ``"none"`` agreed better with fp32 on every trained model measured: W48 98.82% against
            98.67% (4 scenes at 512x1024), the demo's MscaleOCR 99.69% against 99.56% and its PSANet 99.41%
            against 98.81% (256x512, 16 train images, 30 val images); it also calibrates in half the time.
        float_scales: scales of a multi-scale graph whose branches stay in floating point
            (`attnseg.export.scale_branches`); the fusion and the other scales are quantized. The low scales flip
            labels out of proportion to their cost: their predictions are upsampled over wide regions. On the
            trained W48 (0.5/1/2 at 1024x2048, Zen 4) keeping 0.5 and 1.0 in bf16 raised the agreement with fp32
            from 98.74% to 99.07% (three scenes) and the time from 21.2 s to 25.2 s (all in bf16: 35.5 s).
        overflow_fix: which layers' weights NNCF quantizes to 7 bits of range so that CPUs without an int8
            dot-product instruction (VNNI, AMX) cannot saturate: ``"first-layer"`` (NNCF's default: the layers
            reading the image), ``"all"`` or ``"none"``. ``"none"`` is for deployment on VNNI/AMX CPUs only; on
            the trained W48 it raised the agreement with fp32 from 98.71% to 98.92% (six scenes, Zen 4).
    """

    model_type: str = "transformer"
    preset: str = "mixed"
    keep_float: tuple[str, ...] = ()
    bias_correction: str = "none"
    float_scales: tuple[float, ...] = ()
    overflow_fix: str = "first-layer"

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise AttnsegError(f"model type {self.model_type!r}: choose from {', '.join(MODEL_TYPES)}")
        if self.preset not in PRESETS:
            raise AttnsegError(f"preset {self.preset!r}: choose from {', '.join(PRESETS)}")
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise AttnsegError(f"bias correction {self.bias_correction!r}: choose from {', '.join(BIAS_CORRECTIONS)}")
        if self.overflow_fix not in OVERFLOW_FIXES:
            raise AttnsegError(f"overflow fix {self.overflow_fix!r}: choose from {', '.join(OVERFLOW_FIXES)}")
        unknown = [name for name in self.keep_float if name not in KEEP_FLOAT_GROUPS]
        if unknown:
            raise AttnsegError(f"--keep-float {','.join(unknown)}: unknown group; choose from "
                               f"{', '.join(KEEP_FLOAT_GROUPS)}")  # fmt: skip

    def patterns(self) -> list[str]:
        """The node-name patterns kept in floating point."""
        return [pattern for name in self.keep_float for pattern in KEEP_FLOAT_GROUPS[name]]

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "keep_float": list(self.keep_float), "patterns": self.patterns(),
                "float_scales": list(self.float_scales)}  # fmt: skip


def fit_to_graph(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """An (H, W, 3) uint8 image resized (bilinear) to the graph's input size, if it is not that size already."""
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def fit_label_to_graph(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """A label map resized (nearest neighbour: ids are not averaged) to the graph's input size."""
    if label.shape[:2] == (height, width):
        return label
    return cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)


def normalized_batch(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(1, 3, H, W) float32 input of an exported graph from an (H, W, 3) uint8 RGB image."""
    values = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1)[None])


def static_input_size(sidecar: ExportSidecar, path: Path) -> tuple[int, int]:
    """(H, W) of a graph exported with a fixed input shape.

    Raises:
        AttnsegError: the graph has dynamic height or width (calibration statistics belong to one input size).
    """
    height, width = sidecar.input_shape[2], sidecar.input_shape[3]
    if not (isinstance(height, int) and isinstance(width, int)):
        raise AttnsegError(f"{path}: exported with dynamic height/width; quantize a graph exported with a fixed "
                           "--input-shape (the size you will run it at)")  # fmt: skip
    return height, width


@dataclasses.dataclass(frozen=True)
class AccuracyControl:
    """NNCF's accuracy-aware quantization: after the plain quantization, the operations whose quantization costs the
    most on `samples` go back to floating point, one group after another, until the bound holds there (or nothing is
    left to revert). The bound is one of: INT8 loses at most `max_drop_points` of mIoU against the labels, or INT8
    agrees with fp32 on at least `min_agreement` percent of the labels (no labels needed).

    Attributes:
        samples: inputs on which the bound is measured (with labels for `max_drop_points`).
        num_classes: classes of the labels (ids at or above it are ignored).
        max_drop_points: the mIoU bound, in points, or None.
        min_agreement: the agreement bound, in percent of the pixels, or None.
        ranking_subset: images NNCF ranks the quantized operations on (at most len(samples)).
    """

    samples: Sequence[ReportSample]
    num_classes: int
    max_drop_points: float | None = None
    min_agreement: float | None = None
    ranking_subset: int = 16

    def __post_init__(self) -> None:
        if (self.max_drop_points is None) == (self.min_agreement is None):
            raise AttnsegError("accuracy control: give one bound, a mIoU drop or an agreement with fp32")
        if not self.samples:
            raise AttnsegError("accuracy control needs images to measure the bound on")
        if self.max_drop_points is not None:
            if any(sample.label is None for sample in self.samples):
                raise AttnsegError("accuracy control on mIoU needs labelled images (a split with labels)")
            if not self.max_drop_points >= 0:
                raise AttnsegError(f"accuracy control: the bound must be >= 0 points, got {self.max_drop_points}")
        elif not 0 < self.min_agreement <= 100:
            raise AttnsegError(f"accuracy control: the agreement must be in (0, 100] percent, got {self.min_agreement}")

    @property
    def nncf_max_drop(self) -> float:
        """The bound as NNCF's absolute drop of the validation metric (a fraction; fp32 agrees with itself on 1.0)."""
        if self.max_drop_points is not None:
            return self.max_drop_points / 100.0
        return (100.0 - self.min_agreement) / 100.0

    def describe(self) -> str:
        if self.max_drop_points is not None:
            return f"at most {self.max_drop_points} mIoU points lost"
        return f"at least {self.min_agreement}% of the labels as fp32's"

    def record(self) -> dict[str, Any]:
        bound = ({"max_drop_points": self.max_drop_points} if self.max_drop_points is not None
                 else {"min_agreement": self.min_agreement})  # fmt: skip
        return {**bound, "validation_images": len(self.samples),
                "ranking_images": min(self.ranking_subset, len(self.samples))}  # fmt: skip

    def miou(self, compiled: Any, samples: Iterable[ReportSample]) -> float:
        """mIoU of a compiled model on `samples` (NNCF's validation function: higher is better)."""
        confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        for sample in samples:
            confusion += _confusion(_labels_of(compiled, sample.inputs), sample.label, self.num_classes)
        return _mean_iou(_class_ious(confusion)) or 0.0

    def agreement(self, references: dict[int, np.ndarray]) -> Callable[[Any, Iterable[ReportSample]],
                                                                       tuple[float, list[float]]]:
        """NNCF's validation function for the agreement bound: (share of the pixels whose label is that of
        `references`, per-image shares), `references` keyed by ``id(sample)``."""

        def validate(compiled: Any, samples: Iterable[ReportSample]) -> tuple[float, list[float]]:
            same = total = 0
            per_image = []
            for sample in samples:
                reference = references[id(sample)]
                agree = int((_labels_of(compiled, sample.inputs) == reference).sum())
                same, total = same + agree, total + reference.size
                per_image.append(agree / reference.size)
            return same / max(total, 1), per_image

        return validate


def count_quantized_operations(model: Any) -> int:
    """Quantize/dequantize points (FakeQuantize nodes) in an OpenVINO model: what runs in int8."""
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def quantization_record(tool: str, settings: QuantizationSettings, calibration_images: int, graph: Any,
                        float_scale_operations: int, seconds: float, source: str) -> dict[str, Any]:
    """What the INT8 sidecar's ``extra["quantization"]`` records of how `graph` was quantized."""
    return {"tool": tool, "weights": "int8", "activations": "int8", "float_parts": "precision hint",
            "settings": settings.to_json(), "calibration_images": calibration_images,
            "quantized_operations": count_quantized_operations(graph), "float_scale_operations": float_scale_operations,
            "seconds": round(seconds, 1), "source": source}  # fmt: skip


def nncf_options(nncf: Any, settings: QuantizationSettings, subset_size: int) -> dict[str, Any]:
    """Keyword arguments of ``nncf.quantize`` for `settings` (any backend), the parts kept in float included."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    options: dict[str, Any] = dict(
        subset_size=subset_size, fast_bias_correction=settings.bias_correction != "full",
        preset=nncf.QuantizationPreset.MIXED if settings.preset == "mixed" else nncf.QuantizationPreset.PERFORMANCE,
        advanced_parameters=AdvancedQuantizationParameters(
            disable_bias_correction=settings.bias_correction == "none",
            overflow_fix=getattr(OverflowFix, OVERFLOW_FIXES[settings.overflow_fix])),
    )  # fmt: skip
    if settings.model_type == "transformer":
        options["model_type"] = nncf.ModelType.TRANSFORMER
    if settings.patterns():
        options["ignored_scope"] = nncf.IgnoredScope(patterns=settings.patterns(), validate=False)
    return options


def quantize_ir(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Sequence[np.ndarray],
    settings: QuantizationSettings = QuantizationSettings(),
    source: str | None = None,
    input_shape: Sequence[int] | None = None,
    accuracy_control: AccuracyControl | None = None,
) -> ExportSidecar:
    """Quantize an fp32 OpenVINO IR (from `attnseg export --format openvino`) and write the INT8 IR + sidecar.

    Args:
        fp32_path: the fp32 ``.xml`` (its sidecar beside it).
        out_path: target ``.xml``; written atomically with its ``.bin`` and ``.json``.
        calibration: normalised (1, 3, H, W) float32 inputs; NNCF's statistics come from all of them.
        settings: model type, preset and parts kept in floating point.
        source: what the fp32 graph came from, for the record (default: `fp32_path`).
        input_shape: reshape a graph with dynamic height/width to this static (N, 3, H, W) first: calibration
            statistics belong to one input size, and the INT8 graph then records that size.
        accuracy_control: NNCF's accuracy-aware mode (`AccuracyControl`) instead of the plain quantization.

    Returns:
        The sidecar written beside `out_path`: the fp32 graph's, with ``extra["quantization"]`` recording the tool,
        settings, calibration count and time.
    """
    nncf = require_nncf()
    ov = require_openvino()
    if not calibration:
        raise AttnsegError("quantize: no calibration images")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    sidecar = read_export_sidecar(fp32_path)
    model = ov.Core().read_model(str(fp32_path))
    if input_shape is not None:
        shape = [int(size) for size in input_shape]
        model.reshape({model.inputs[0].get_any_name(): ov.PartialShape(shape)})
        sidecar = dataclasses.replace(sidecar, input_shape=shape)
    options = nncf_options(nncf, settings, len(calibration))
    float_names: list[str] = []
    if settings.float_scales:
        probe_shape = model.inputs[0].get_partial_shape()
        shape = probe_shape.to_shape() if probe_shape.is_static else calibration[0].shape
        float_names = float_scale_operations(model, shape, settings.float_scales)
    if settings.patterns() or float_names:
        options["ignored_scope"] = nncf.IgnoredScope(names=float_names, patterns=settings.patterns(), validate=False)
    start = time.perf_counter()
    if accuracy_control is None:
        quantized = nncf.quantize(model, nncf.Dataset(list(calibration)), **options)
    else:
        quantized = _quantize_with_accuracy_control(nncf, model, calibration, options, accuracy_control)
    seconds = time.perf_counter() - start
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_ir_atomically(ov, quantized, out_path)
    record = quantization_record(f"nncf {nncf.__version__}", settings, len(calibration), quantized, len(float_names),
                                 seconds, source or str(fp32_path))  # fmt: skip
    if accuracy_control is not None:
        record["accuracy_control"] = accuracy_control.record()
    # The parts left in floating point follow the runtime's precision hint (bf16 where the CPU has it natively).
    result = dataclasses.replace(sidecar, extra={**sidecar.extra, "quantization": record})
    write_export_sidecar(out_path, result)
    return result


def _quantize_with_accuracy_control(nncf: Any, model: Any, calibration: Sequence[np.ndarray], options: dict[str, Any],
                                    control: AccuracyControl) -> Any:
    """NNCF's `quantize_with_accuracy_control` with the control's bound: mIoU on its labelled samples, or the
    agreement with the fp32 graph's labels (computed here, with the fp32 hint)."""
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    samples = list(control.samples)
    validation = nncf.Dataset(samples, lambda sample: sample.inputs)
    metric: Callable[..., Any] = control.miou
    if control.min_agreement is not None:
        ov = require_openvino()
        fp32 = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        metric = control.agreement({id(sample): _labels_of(fp32, sample.inputs) for sample in samples})
        del fp32
    restorer = AdvancedAccuracyRestorerParameters(ranking_subset_size=min(control.ranking_subset, len(samples)))
    options = dict(options)
    if "advanced_parameters" in options:  # this entry point names them differently
        options["advanced_quantization_parameters"] = options.pop("advanced_parameters")
    return nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(list(calibration)), validation, metric, max_drop=control.nncf_max_drop,
        drop_type=nncf.DropType.ABSOLUTE, advanced_accuracy_restorer_parameters=restorer, **options,
    )  # fmt: skip


@dataclasses.dataclass
class AccuracyReport:
    """INT8 against fp32 on the same images.

    Attributes:
        images: images compared.
        agreement: share of pixels (all images together) where the two argmax maps agree.
        worst_image_agreement: the lowest agreement of one image, and its name.
        fp32_miou, int8_miou: mean IoU against the labels (None without labels).
        class_names, fp32_class_iou, int8_class_iou: per-class IoU (NaN where a class is absent from both).
        fp32_seconds, int8_seconds: median time of one call of each compiled model.
    """

    images: int
    agreement: float
    worst_image_agreement: tuple[float, str]
    fp32_miou: float | None
    int8_miou: float | None
    class_names: list[str]
    fp32_class_iou: list[float]
    int8_class_iou: list[float]
    fp32_seconds: float
    int8_seconds: float

    @property
    def miou_drop_points(self) -> float | None:
        """fp32 mIoU minus INT8 mIoU, in points (percent)."""
        if self.fp32_miou is None or self.int8_miou is None:
            return None
        return 100.0 * (self.fp32_miou - self.int8_miou)

    def to_json(self) -> dict[str, Any]:
        result = dataclasses.asdict(self)
        result["worst_image_agreement"] = {"agreement": self.worst_image_agreement[0],
                                           "image": self.worst_image_agreement[1]}  # fmt: skip
        result["miou_drop_points"] = self.miou_drop_points
        result["speedup"] = self.fp32_seconds / max(self.int8_seconds, 1e-12)
        return result

    def lines(self) -> list[str]:
        """The report as printed by `attnseg quantize`."""
        out = [f"INT8 vs fp32 on {self.images} images: label agreement {self.agreement:.4%} (worst image "
               f"{self.worst_image_agreement[0]:.4%}, {self.worst_image_agreement[1]}); "
               f"{self.fp32_seconds:.3f} s -> {self.int8_seconds:.3f} s per call "
               f"({self.fp32_seconds / max(self.int8_seconds, 1e-12):.2f}x)"]  # fmt: skip
        if self.fp32_miou is not None and self.int8_miou is not None:
            out.append(f"mIoU fp32 {self.fp32_miou:.4f}, INT8 {self.int8_miou:.4f} "
                       f"(drop {self.miou_drop_points:+.2f} points)")  # fmt: skip
            out.append(f"{'class':<16} {'fp32 IoU':>9} {'INT8 IoU':>9} {'change':>8}")
            for name, before, after in zip(self.class_names, self.fp32_class_iou, self.int8_class_iou):
                if not (np.isnan(before) and np.isnan(after)):
                    out.append(f"{name:<16} {before:>9.4f} {after:>9.4f} {100 * (after - before):>+8.2f}")
        return out


@dataclasses.dataclass
class ReportSample:
    """One image of the accuracy report: normalised graph input, label at the graph's size or None, name."""

    inputs: np.ndarray
    label: np.ndarray | None
    name: str


def _class_ious(confusion: np.ndarray) -> np.ndarray:
    true_positive = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / np.maximum(union, 1), np.nan)


def _confusion(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    valid = label < num_classes
    index = label[valid].astype(np.int64) * num_classes + prediction[valid].astype(np.int64)
    return np.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _mean_iou(class_ious: np.ndarray) -> float | None:
    """Mean over the classes present in labels or predictions; None when none is."""
    return None if np.all(np.isnan(class_ious)) else float(np.nanmean(class_ious))


def _labels_of(compiled: Any, inputs: np.ndarray) -> np.ndarray:
    """(H, W) labels of one image: an argmax export's output as it is, else the argmax over the class scores."""
    result = np.asarray(compiled(inputs)[compiled.outputs[0]][0])
    return result if result.ndim == 2 else result.argmax(0)


def _median_call_seconds(compiled: Any, inputs: np.ndarray, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        compiled(inputs)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compare_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    samples: Iterable[ReportSample],
    *,
    threads: int | None = None,
    timing_runs: int = 3,
) -> AccuracyReport:
    """Run the fp32 and INT8 graphs on the same inputs and compare their labels (and both against the labels).

    Both run on OpenVINO's CPU plugin with the fp32 hint, so the difference is the quantization alone.
    """
    sidecar = read_export_sidecar(int8_path)
    num_classes = sidecar.num_classes
    height, width = static_input_size(sidecar, Path(int8_path))
    fp32 = compile_openvino(fp32_path, "fp32", (1, 3, height, width), threads)
    int8 = compile_openvino(int8_path, "fp32", (1, 3, height, width), threads)
    agree = total = 0
    worst: tuple[float, str] | None = None
    confusions = {"fp32": np.zeros((num_classes, num_classes), np.int64), "int8": np.zeros((num_classes,) * 2, np.int64)}
    labelled = False
    first = None
    count = 0
    for sample in samples:
        first = sample.inputs if first is None else first
        reference, quantized = _labels_of(fp32, sample.inputs), _labels_of(int8, sample.inputs)
        same = int((reference == quantized).sum())
        agree, total, count = agree + same, total + reference.size, count + 1
        image_agreement = (same / reference.size, sample.name)
        worst = image_agreement if worst is None or image_agreement[0] < worst[0] else worst
        if sample.label is not None:
            labelled = True
            confusions["fp32"] += _confusion(reference, sample.label, num_classes)
            confusions["int8"] += _confusion(quantized, sample.label, num_classes)
    if first is None or worst is None:
        raise AttnsegError("quantize: no images for the accuracy report")
    ious = {key: _class_ious(value) for key, value in confusions.items()}
    mious = {key: (_mean_iou(value) if labelled else None) for key, value in ious.items()}
    return AccuracyReport(
        images=count, agreement=agree / max(total, 1), worst_image_agreement=worst,
        fp32_miou=mious["fp32"], int8_miou=mious["int8"], class_names=[str(n) for n in sidecar.class_names],
        fp32_class_iou=[float(v) for v in ious["fp32"]], int8_class_iou=[float(v) for v in ious["int8"]],
        fp32_seconds=_median_call_seconds(fp32, first, timing_runs), int8_seconds=_median_call_seconds(int8, first, timing_runs),
    )  # fmt: skip


def image_samples(paths: Sequence[Path], sidecar: ExportSidecar, size: tuple[int, int]) -> Iterator[ReportSample]:
    """Unlabelled report/calibration samples from image files, fitted to the graph size."""
    from attnseg.inference.predictor import read_image

    for path in paths:
        image = fit_to_graph(read_image(path), *size)
        yield ReportSample(normalized_batch(image, sidecar.mean, sidecar.std), None, Path(path).name)


def dataset_samples(dataset: Any, sidecar: ExportSidecar, size: tuple[int, int], limit: int | None = None
                    ) -> Iterator[ReportSample]:
    """Labelled samples from a dataset of raw samples (uint8 RGB ``image``, trainId ``label``, ``name``)."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in range(count):
        sample = dataset[index]
        image = fit_to_graph(np.asarray(sample["image"]), *size)
        label = sample.get("label")
        label = None if label is None else fit_label_to_graph(np.asarray(label), *size)
        yield ReportSample(normalized_batch(image, sidecar.mean, sidecar.std), label, str(sample.get("name", index)))
