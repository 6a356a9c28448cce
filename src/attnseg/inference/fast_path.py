"""The eager PyTorch fast path for CPU inference: channels-last weights and inputs, bf16 autocast (AMX/AVX512-BF16
through oneDNN) and optionally `torch.compile`, as `attnseg eval`, `attnseg predict` and `TorchBackend` use it."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from attnseg.models.outputs import logits_of


def bf16_supported() -> bool:
    """Whether this CPU has native bf16 arithmetic for oneDNN (AVX512-BF16 or AMX); autocast works without it,
    only slowly."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def prepare_fast_model(model: nn.Module, *, channels_last: bool = True, compile: bool = False) -> nn.Module:
    """Put `model` (in place) on the fast CPU inference path and return it.

    Args:
        model: module to run in eval mode.
        channels_last: store conv weights NHWC, so oneDNN runs its NHWC kernels without reorders (essential for
            bf16: ~2x on top of autocast alone, PERF_NOTES).
        compile: `nn.Module.compile` in place (Inductor fuses BN/ReLU/add/upsample around the convolutions;
            the first call compiles, 15-130 s). The module object stays the same, so callers keep passing
            ``scales=`` to MscaleOCR's forward (other scales trigger a recompile).
    """
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile:
        model.compile(dynamic=False)
    return model


def apply_fast_path(model: nn.Module, precision: str, device: torch.device | str, compile: bool = False) -> bool:
    """Put a loaded torch model on the fast path where asked for (``compile``) or where it pays off (bf16 on the
    CPU: channels-last); the one rule `attnseg eval` and `attnseg predict` share.

    Args:
        model: the loaded model (modified in place).
        precision: the resolved precision, ``"fp32"`` or ``"bf16"``.
        device: where it runs.
        compile: `torch.compile` it.

    Returns:
        Whether the model was changed.
    """
    if not (compile or (precision == "bf16" and torch.device(device).type == "cpu")):
        return False
    prepare_fast_model(model, channels_last=precision == "bf16", compile=compile)
    return True


def fast_forward(module: nn.Module, images: torch.Tensor, precision: str, channels_last: bool) -> torch.Tensor:
    """(N, K, H, W) float32 logits of `module` on CPU under inference mode, channels-last inputs and bf16 autocast
    as asked."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())  # fmt: skip
    with torch.inference_mode(), autocast:
        logits = logits_of(module(images))
    return logits.float()
