"""INT8 through NNCF's PyTorch backend, with an optional quantization-aware fine-tuning that distils fp32.

Post-training quantization rounds every weight and activation to the nearest of 256 levels once, with ranges from a
few calibration images; a pixel whose two best classes are nearly tied can then flip. Quantization-aware fine-tuning
(QAT) trains the quantized network itself for a few steps, with the rounding in the forward pass and straight-through
gradients, so that weights, biases and the quantizers' ranges adapt to the rounding. Here it needs no labels: the
target is the fp32 model's own class distribution on the same image (the KL divergence of INT8's from fp32's), which
is what the accuracy report measures, the agreement of the two.

The model quantized is the export graph in PyTorch (`ExportWrapper(FixedScales(model, scales))`, every scale and the
fusion), with the settings of `attnseg.export.quantize` (model type, preset, parts kept in float, bias correction on
or off, overflow fix), then converted to OpenVINO IR with `openvino.convert_model`. Batch norm keeps its running
statistics during the fine-tuning (the batches are a few calibration images, too few to re-estimate them).

Measured on the demo model (HRNetV2-W18-Small-v1 + OCR, 3 scales at 256x512, 16 calibration images of the train
split, the 30 val images): see the README's INT8 section.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.errors import AttnsegError
from attnseg.export.onnx import ExportSidecar, ExportWrapper, write_export_sidecar
from attnseg.export.openvino import require_openvino, save_ir_atomically
from attnseg.export.quantize import QuantizationSettings, nncf_options, quantization_record, require_nncf
from attnseg.models import FixedScales

# What the fine-tuning trains: every trainable tensor of the quantized model, the convolution weights alone, or the
# quantizers' ranges alone (NNCF's scale / input_low / input_range parameters).
FINETUNE_PARAMETERS = ("all", "weights", "ranges")


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """Quantization-aware fine-tuning by distillation from fp32.

    Attributes:
        steps: optimizer steps (0: post-training quantization only).
        learning_rate: Adam's learning rate. Small: the network starts trained, and only the rounding is new.
        batch_size: calibration images per step (random horizontal flips).
        parameters: one of `FINETUNE_PARAMETERS`.
        seed: seeds the choice and flips of the images.
    """

    steps: int = 0
    learning_rate: float = 1e-5
    batch_size: int = 2
    parameters: str = "all"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise AttnsegError(f"fine-tuning steps must be >= 0, got {self.steps}")
        if not self.learning_rate > 0:
            raise AttnsegError(f"fine-tuning learning rate must be > 0, got {self.learning_rate}")
        if self.batch_size < 1:
            raise AttnsegError(f"fine-tuning batch size must be >= 1, got {self.batch_size}")
        if self.parameters not in FINETUNE_PARAMETERS:
            raise AttnsegError(f"fine-tuning parameters {self.parameters!r}: choose from "
                               f"{', '.join(FINETUNE_PARAMETERS)}")  # fmt: skip


def check_torch_backend_settings(settings: QuantizationSettings) -> None:
    """Refuse the settings NNCF's PyTorch backend cannot apply.

    Raises:
        AttnsegError: ``bias_correction="full"`` (the PyTorch backend has only the fast one) or ``float_scales``
            (found on the OpenVINO graph, whose operations of each scale are separate; in PyTorch the scales run the
            same modules).
    """
    if settings.bias_correction == "full":
        raise AttnsegError("--bias-correction full: NNCF's PyTorch backend, which fine-tuning uses, has only the "
                           "fast bias correction (or none)")  # fmt: skip
    if settings.float_scales:
        raise AttnsegError("--float-scales: not available with fine-tuning (in PyTorch every scale runs the same "
                           "modules); use --keep-float to keep parts of the network in floating point")  # fmt: skip


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of KL(teacher || student) of the class distributions (dimension 1)."""
    teacher = torch.softmax(teacher_logits, dim=1)
    return (teacher * (torch.log_softmax(teacher_logits, 1) - torch.log_softmax(student_logits, 1))).sum(1).mean()


def _is_quantizer_parameter(name: str) -> bool:
    """NNCF keeps its quantizers (and their scale / input_low / input_range) in hook storage on the wrapped model."""
    return "__nncf_hooks" in name


def _trained_parameters(model: nn.Module, which: str) -> list[nn.Parameter]:
    """Make the tensors `which` names (see `FINETUNE_PARAMETERS`) the only trainable ones, and return them."""
    # NNCF's integer bookkeeping (bit widths, signedness) is stored as parameters too, never trained.
    named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.is_floating_point()]
    if which == "weights":
        chosen = [parameter for name, parameter in named if parameter.ndim == 4 and not _is_quantizer_parameter(name)]
    elif which == "ranges":
        chosen = [parameter for name, parameter in named if _is_quantizer_parameter(name)]
    else:
        chosen = [parameter for _, parameter in named]
    for _, parameter in named:
        parameter.requires_grad_(False)
    for parameter in chosen:
        parameter.requires_grad_(True)
    return chosen


def finetune(
    quantized: nn.Module,
    teacher: nn.Module,
    images: Sequence[torch.Tensor],
    settings: FinetuneSettings,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train `quantized` to reproduce `teacher`'s class distributions on `images` (each (1, 3, H, W)).

    Returns:
        The loss of every step.
    """
    parameters = _trained_parameters(quantized, settings.parameters)
    if not parameters:
        raise AttnsegError(f"fine-tuning: the quantized model has no {settings.parameters} parameters to train")
    optimizer = torch.optim.Adam(parameters, lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(settings.seed)
    quantized.eval()  # batch norm keeps its statistics; the quantizers keep their ranges unless trained
    teacher.eval()
    losses = []
    for step in range(settings.steps):
        chosen = torch.randint(len(images), (settings.batch_size,), generator=generator).tolist()
        flips = torch.rand(settings.batch_size, generator=generator) < 0.5
        batch = torch.cat([images[i].flip(3) if flip else images[i] for i, flip in zip(chosen, flips)])
        with torch.no_grad():
            target = teacher(batch)
        loss = distillation_loss(quantized(batch), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, losses[-1])
    for parameter in quantized.parameters():
        parameter.requires_grad_(False)
    return losses


def quantize_torch(
    model: nn.Module,
    scales: Sequence[float] | None,
    out_path: str | Path,
    calibration: Sequence[np.ndarray],
    sidecar: ExportSidecar,
    settings: QuantizationSettings = QuantizationSettings(),
    finetune_settings: FinetuneSettings = FinetuneSettings(),
    source: str | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> ExportSidecar:
    """Quantize `model` (with `scales` fused) with NNCF's PyTorch backend, fine-tune it if asked, and write the INT8
    OpenVINO IR `out_path` with its sidecar.

    Args:
        model: the float model (switched to eval mode, otherwise not modified).
        scales: scales fused in the graph (None: the model's own), as in the fp32 export.
        out_path: target ``.xml``; written atomically with its ``.bin`` and ``.json``.
        calibration: normalised (1, 3, H, W) float32 inputs at the graph's size: NNCF's statistics, and the
            fine-tuning's images.
        sidecar: the fp32 export's sidecar (preprocessing, names, shape), extended with the quantization record.
        settings: as for `attnseg.export.quantize.quantize_ir` (see `check_torch_backend_settings`).
        finetune_settings: the quantization-aware fine-tuning (``steps=0``: none).
        source: what the model came from, for the record.
        progress: called with (step, loss) after each fine-tuning step.
    """
    nncf = require_nncf()
    ov = require_openvino()
    check_torch_backend_settings(settings)
    if not calibration:
        raise AttnsegError("quantize: no calibration images")
    # NNCF quantizes a deep copy of it, so the float model itself is the fine-tuning's teacher.
    teacher = ExportWrapper(FixedScales(model.eval(), scales), "logits").eval()
    inputs = [torch.from_numpy(np.ascontiguousarray(batch)) for batch in calibration]
    options = nncf_options(nncf, settings, len(inputs))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NNCF's tracing warns about every Python-side shape computation
        quantized = nncf.quantize(teacher, nncf.Dataset(inputs), **options)
    calibration_seconds = time.perf_counter() - start
    losses: list[float] = []
    if finetune_settings.steps:
        losses = finetune(quantized, teacher, inputs, finetune_settings, progress)
    tuned_seconds = time.perf_counter() - start - calibration_seconds
    graph = _convert(ov, ExportWrapper(quantized, sidecar.output).eval(), inputs[0], sidecar)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_ir_atomically(ov, graph, out_path)
    record = quantization_record(f"nncf {nncf.__version__} (PyTorch backend)", settings, len(inputs), graph, 0,
                                 calibration_seconds, source or "PyTorch model")  # fmt: skip
    if finetune_settings.steps:
        record["finetune"] = {**dataclasses.asdict(finetune_settings), "loss": "KL(fp32 || INT8)",
                              "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:])),
                              "seconds": round(tuned_seconds, 1)}  # fmt: skip
    result = dataclasses.replace(sidecar, extra={**sidecar.extra, "quantization": record})
    write_export_sidecar(out_path, result)
    return result


def _convert(ov: Any, module: nn.Module, example: torch.Tensor, sidecar: ExportSidecar) -> Any:
    """OpenVINO model of a quantized PyTorch module (NNCF's quantizers become FakeQuantize), with the export's
    input/output names and static input shape."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's check of a quantized graph reports rounding differences
        graph = ov.convert_model(module, example_input=example)
    graph.inputs[0].get_tensor().set_names({sidecar.input_name})
    graph.outputs[0].get_tensor().set_names({sidecar.output_name})
    graph.reshape({sidecar.input_name: ov.PartialShape([int(size) for size in example.shape])})
    return graph
