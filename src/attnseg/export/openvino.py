"""OpenVINO IR export (``model.xml`` + ``model.bin`` + ``model.xml.json``) and compilation with a precision hint.

`openvino` is an optional extra (``pip install openvino``, ~60 MB wheel). The IR is converted from the ONNX graph
`export_onnx` makes, so both formats compute exactly the same thing and share the sidecar contents.

Precision: on CPUs with bf16 units (AMX / AVX512-BF16) OpenVINO runs fp32 models in **bf16 by default**
(``INFERENCE_PRECISION_HINT``). `compile_openvino` therefore always sets the hint explicitly: ``"fp32"`` gives
fp32 arithmetic (parity with PyTorch ~1e-5), ``"bf16"`` the fast path (PERF_NOTES: 5-7x PyTorch fp32 eager).
The weights in the IR stay fp32 (``compress_to_fp16=False``); the hint only changes how they are computed.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from attnseg.errors import require_optional
from attnseg.fileio import temporary_path_for
from attnseg.export.onnx import ExportSidecar, OutputOp, export_onnx, read_export_sidecar, write_export_sidecar

PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def require_openvino():
    """The `openvino` module, or an `AttnsegError` saying how to install it."""
    return require_optional("openvino")


def export_openvino(
    source: nn.Module | str | os.PathLike,
    path: str | os.PathLike,
    input_shape: Sequence[int] = (1, 3, 1024, 2048),
    *,
    dynamic: bool = False,
    output: OutputOp = "logits",
    scales: Sequence[float] | None = None,
    opset: int = 17,
    sidecar: Any = None,
    precision: str = "fp32",
    trace_size: Sequence[int] | None = None,
    verify: bool | None = None,
) -> ExportSidecar:
    """Write OpenVINO IR ``path`` (``.xml``, with its ``.bin``) and the sidecar ``<path>.json``.

    Args:
        source: an attnseg model (exported to ONNX on the way, in a temporary folder) or an ``.onnx`` file written
            by `export_onnx` (its sidecar is reused; the shape/scale/output arguments are then ignored).
        path: target ``.xml`` file.
        input_shape, dynamic, output, scales, opset, sidecar, trace_size, verify: as for `export_onnx`.
        precision: the default precision hint recorded in the sidecar (``"fp32"`` or ``"bf16"``); runtimes may
            override it.

    Returns:
        The `ExportSidecar` written next to the IR.
    """
    ov = require_openvino()
    if precision not in PRECISION_HINTS:
        raise ValueError(f"precision must be one of {sorted(PRECISION_HINTS)}, got {precision!r}")
    path = Path(path)
    if path.suffix != ".xml":
        path = path.with_suffix(".xml")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="attnseg-export-") as folder:
        if isinstance(source, nn.Module):
            onnx_path = Path(folder) / "model.onnx"
            export_onnx(source, onnx_path, input_shape, dynamic=dynamic, output=output, scales=scales, opset=opset,
                        sidecar=sidecar, trace_size=trace_size, verify=verify)  # fmt: skip
        else:
            onnx_path = Path(source)
        onnx_sidecar = read_export_sidecar(onnx_path)
        converted = ov.convert_model(str(onnx_path))
        save_ir_atomically(ov, converted, path)
    result = dataclasses.replace(onnx_sidecar, model_format="openvino", precision=precision)
    write_export_sidecar(path, result)
    return result


def save_ir_atomically(ov: Any, model: Any, path: Path) -> None:
    """Save IR under temporary names beside `path`, then rename the ``.bin`` and, last, the ``.xml`` (the file
    readers open): a killed export never leaves a final-named ``.xml`` whose weights are missing or partial.

    OpenVINO finds the weights as the ``.xml`` name with a ``.bin`` suffix and the IR does not record the file
    name, so the pair can be renamed; the temporaries keep fileio's naming for `remove_stale_temporaries`.
    """
    temp_xml = temporary_path_for(path)
    temp_bin = temp_xml.with_suffix(".bin")
    try:
        ov.save_model(model, str(temp_xml), compress_to_fp16=False)
        os.replace(temp_bin, path.with_suffix(".bin"))
        os.replace(temp_xml, path)
    finally:
        temp_xml.unlink(missing_ok=True)
        temp_bin.unlink(missing_ok=True)


def move_ir(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move an IR with its ``.bin`` and sidecar to `target` (same file system), the ``.xml`` last: a reader never
    finds the final ``.xml`` without its weights and sidecar."""
    source, target = Path(source), Path(target)
    os.replace(source.with_suffix(".bin"), target.with_suffix(".bin"))
    os.replace(Path(f"{source}.json"), Path(f"{target}.json"))
    os.replace(source, target)


def compile_openvino(path: str | os.PathLike, precision: str = "fp32", input_shape: Sequence[int] | None = None,
                     threads: int | None = None):
    """A compiled OpenVINO model for the CPU with an explicit precision hint.

    Args:
        path: ``.xml`` IR (or an ``.onnx`` file; OpenVINO reads both).
        precision: ``"fp32"`` or ``"bf16"`` (``INFERENCE_PRECISION_HINT``).
        input_shape: reshape a dynamic graph to this static (N, 3, H, W) first (lets the CPU plugin plan memory
            and pick kernels for that size).
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice, all cores).
    """
    ov = require_openvino()
    if precision not in PRECISION_HINTS:
        raise ValueError(f"precision must be one of {sorted(PRECISION_HINTS)}, got {precision!r}")
    core = ov.Core()
    model = core.read_model(str(path))
    if input_shape is not None:
        model.reshape({model.inputs[0].get_any_name(): ov.PartialShape([int(s) for s in input_shape])})
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(model, "CPU", config)
