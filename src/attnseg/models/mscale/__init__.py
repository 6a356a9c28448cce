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
    MSCALE_MODEL_BUILDERS,
    MscaleOCR,
    OCRNet,
    ScaleAttentionHead,
    convert_nvidia_state_dict,
    mscale_ocr_hrnet_w18,
    mscale_ocr_hrnet_w18_small,
    mscale_ocr_hrnet_w18_small_v1,
    mscale_ocr_hrnet_w32,
    mscale_ocr_hrnet_w48,
    ocr_hrnet_w18_small,
    ocr_hrnet_w48,
)

__all__ = [
    "MSCALE_MODEL_BUILDERS",
    "FusedOutputs",
    "MscaleOCR",
    "OCRNet",
    "ScaleAttentionHead",
    "ScaleOutputs",
    "convert_nvidia_state_dict",
    "hierarchical_fusion",
    "interpolate_size",
    "mscale_ocr_hrnet_w18",
    "mscale_ocr_hrnet_w18_small",
    "mscale_ocr_hrnet_w18_small_v1",
    "mscale_ocr_hrnet_w32",
    "mscale_ocr_hrnet_w48",
    "ocr_hrnet_w18_small",
    "ocr_hrnet_w48",
    "resize_by_scale",
    "two_scale_fusion",
]
