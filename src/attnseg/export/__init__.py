"""Deployment: ONNX / OpenVINO export with a pre-processing sidecar, and inference backends with one interface.

- `export_onnx`, `read_export_sidecar` (`attnseg.export.onnx`)
- `export_openvino`, `compile_openvino` (`attnseg.export.openvino`; needs the optional `openvino` package)
- `quantize_ir`, `compare_int8` (`attnseg.export.quantize`: NNCF INT8 of an exported graph and its accuracy report)
  and `quantize_torch` (`attnseg.export.quantize_finetune`: INT8 of the PyTorch model, optionally fine-tuned to
  reproduce fp32); both need the ``int8`` extra
- `TorchBackend`, `OnnxRuntimeBackend`, `OpenVinoBackend`, `load_backend` (`attnseg.export.runtime`)
"""

from attnseg.export.onnx import ExportError, ExportSidecar, ExportWrapper, export_onnx, read_export_sidecar
from attnseg.export.runtime import (
    Backend,
    OnnxRuntimeBackend,
    OpenVinoBackend,
    TorchBackend,
    load_backend,
    predictor_from_export,
)

__all__ = [
    "Backend",
    "ExportError",
    "ExportSidecar",
    "ExportWrapper",
    "OnnxRuntimeBackend",
    "OpenVinoBackend",
    "TorchBackend",
    "export_onnx",
    "load_backend",
    "predictor_from_export",
    "read_export_sidecar",
]
