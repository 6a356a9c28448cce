"""FLOPs of one eval forward of a model, counted on the meta device (shape arithmetic only, nothing computed).

`torch.utils.flop_counter.FlopCounterMode` counts convolutions and matrix products: the work a matmul-bound
runtime has to do, which the benchmark table divides by each route's median time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def count_flops(model_name: str, model_kwargs: dict[str, Any], num_classes: int, shape: Sequence[int],
                scales: Sequence[float]) -> float:
    """FLOPs of one eval forward (FlopCounterMode on the meta device: no memory, no arithmetic)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from attnseg.models import FixedScales, create_model

    with torch.device("meta"):
        model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    images = torch.empty(tuple(shape), device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        FixedScales(model.eval(), scales)(images)
    return float(counter.get_total_flops())
