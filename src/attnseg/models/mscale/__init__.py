"""HRNet + OCR with hierarchical multi-scale attention (NVIDIA's MscaleOCR) and its fusion arithmetic."""

from attnseg.models.mscale.fusion import (
    FusedOutputs,
    ScaleOutputs,
    hierarchical_fusion,
    interpolate_size,
    resize_by_scale,
    two_scale_fusion,
)
from attnseg.models.mscale.model import (
    HRNET_OCR_VARIANTS,
    MSCALE_MODEL_BUILDERS,
    HRNetOCRArgs,
    MscaleOCR,
    OCRNet,
    ScaleAttentionHead,
    create_mscale_ocr,
    create_ocrnet,
)
from attnseg.models.mscale.nvidia import convert_nvidia_state_dict

__all__ = [
    "HRNET_OCR_VARIANTS",
    "MSCALE_MODEL_BUILDERS",
    "FusedOutputs",
    "HRNetOCRArgs",
    "MscaleOCR",
    "OCRNet",
    "ScaleAttentionHead",
    "ScaleOutputs",
    "convert_nvidia_state_dict",
    "create_mscale_ocr",
    "create_ocrnet",
    "hierarchical_fusion",
    "interpolate_size",
    "resize_by_scale",
    "two_scale_fusion",
]
