"""The benchmark's input and random-weight model: a synthetic street scene, and BatchNorm/classifier calibration on
that very image so that a random model's labels depend on the image (and routes can disagree).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def benchmark_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB synthetic street scene (realistic statistics for the activations)."""
    from attnseg.data.synthetic import render_scene

    return np.asarray(render_scene(np.random.default_rng(seed), height, width).image, dtype=np.uint8)


def calibrate_batchnorm(model: Any, image: np.ndarray, passes: int = 2) -> None:
    """Make a random-weight model's predictions image-dependent: calibrate it on `image`, then eval mode.

    1. Every BatchNorm's running statistics are set from one forward of `image` (ImageNet normalisation).
    2. Every classifier conv (a ``Conv2d`` with as many outputs as the model has classes, with a bias) is
       standardised on the image: ``w, b <- w / std, (b - mean) / std`` per class, so each class logit has mean 0
       and standard deviation 1 over the image. Done `passes` times, since a standardised aux classifier changes
       what later classifiers see (OCR's object regions).

    Without this, random weights predict one class everywhere with a huge margin (ReLU features share a dominant
    mean direction), and every route would trivially agree 100%. The calibrated model is still unsure everywhere
    (small logit margins), so its agreement between precisions is a pessimistic proxy for a trained model's.
    Statistics from one image or size do not carry over to another (random deep nets are chaotic: calibrated at
    128x256, a 256x512 forward predicts one class again), so calibrate on the very input that is measured.
    """
    import torch

    from attnseg.data.statistics import IMAGENET_MEAN, IMAGENET_STD
    from attnseg.inference.preprocess import normalize_image
    from attnseg.models import FixedScales, fuses_scales
    from attnseg.models.outputs import SegmentationOutput

    images = normalize_image(image, IMAGENET_MEAN, IMAGENET_STD)[None]
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        output = model(images)
    model.eval()
    logits = output.logits if isinstance(output, SegmentationOutput) else output
    classifiers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == logits.shape[1]
                   and m.bias is not None]  # fmt: skip
    for _ in range(passes if classifiers else 0):
        captured: dict[torch.nn.Module, torch.Tensor] = {}
        def keep(module, args, out) -> None:  # a forward hook returning None leaves the output alone
            captured[module] = out.detach()

        hooks = [conv.register_forward_hook(keep) for conv in classifiers]
        scales = (1.0,) if fuses_scales(model) else None
        with torch.no_grad():
            FixedScales(model, scales)(images)
        for hook in hooks:
            hook.remove()
        with torch.no_grad():
            for conv, out in captured.items():
                mean = out.mean(dim=(0, 2, 3))
                std = out.std(dim=(0, 2, 3)).clamp_min(1e-6)
                conv.weight.div_(std.view(-1, 1, 1, 1))
                conv.bias.sub_(mean).div_(std)
