"""The scales seam: which models fuse test scales themselves, and how a caller hands them the scales.

A model *fuses scales* when its class sets ``FUSES_SCALES = True``, its forward is
``forward(images, scales=None, keep_scale_outputs=False)`` (MscaleOCR's hierarchical attention) and it exposes the
read-only `eval_scales` used when ``scales`` is None (its constructor default). Every other model is a plain
``forward(images)`` at scale 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel and torch.compile's OptimizedModule wrappers
    (any nesting of them); any other module is returned as it is."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule":
            # Imported only here: torch._dynamo is slow to import and loaded already wherever one exists.
            from torch._dynamo.eval_frame import OptimizedModule

            if not isinstance(model, OptimizedModule):
                return model
            model = model._orig_mod
        else:
            return model


def fuses_scales(model: nn.Module) -> bool:
    """Whether `model` (unwrapped, see `unwrap_model`) fuses test scales itself, i.e. accepts ``scales=``."""
    return bool(getattr(type(unwrap_model(model)), "FUSES_SCALES", False))


def default_scales(model: nn.Module) -> tuple[float, ...]:
    """The scales `model` fuses when called without ``scales=``: MscaleOCR's `eval_scales`, else (1.0,)."""
    return _as_scales(unwrap_model(model).eval_scales) if fuses_scales(model) else (1.0,)


def _as_scales(scales: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(s) for s in scales)


class FixedScales(nn.Module):
    """A one-argument module ``images -> model(images, scales=scales)`` for export, compile and runtime paths.

    A model that does not fuse scales is called as ``model(images)`` and accepts only ``scales == (1.0,)`` (or
    None).

    Args:
        model: the segmentation model (its train/eval mode is the caller's business).
        scales: the scales fused on every call; None: the model's own default (`eval_scales` of MscaleOCR).

    Raises:
        ValueError: scales other than (1.0,) for a model that does not fuse scales.
    """

    def __init__(self, model: nn.Module, scales: Sequence[float] | None):
        super().__init__()
        self.model = model
        self.fused = fuses_scales(model)
        if scales is not None and not self.fused and _as_scales(scales) != (1.0,):
            raise ValueError(f"{type(unwrap_model(model)).__name__} has no multi-scale fusion; only scales [1.0] "
                             f"can be fixed, got {list(scales)}")  # fmt: skip
        self._scales = None if scales is None else _as_scales(scales)

    @property
    def scales(self) -> tuple[float, ...]:
        """The scales in effect (the model's default resolved)."""
        if self._scales is not None:
            return self._scales
        return default_scales(self.model)

    def forward(self, images: torch.Tensor):
        if not self.fused:
            return self.model(images)
        return self.model(images, scales=self._scales)
