"""The demo's pictures: overlays, input | truth | prediction, and for MscaleOCR each scale's attention and its share
of the fused prediction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def effective_scale_weights(
    attention: Mapping[float, torch.Tensor], scales: Sequence[float]
) -> dict[float, torch.Tensor]:
    """Per-pixel share of each scale in MscaleOCR's hierarchically fused prediction, at the input size.

    The fusion runs from the largest scale down: ``p <- a_s * p_s + (1 - a_s) * p``, so scale s contributes
    ``a_s * prod(1 - a_t for smaller t)`` and the largest scale what is left. The shares sum to 1 at every pixel.

    Args:
        attention: scale -> (N, 1, h, w) attention maps of the fusion (all scales but the largest), any sizes.
        scales: the fused scales (containing 1.0).

    Returns:
        scale -> (N, 1, H, W) weights at the size of the scale-1.0 attention (the input size).
    """
    ordered = sorted((float(s) for s in scales), reverse=True)
    if 1.0 not in ordered:
        raise ValueError(f"scales {list(scales)} must contain 1.0")
    if len(ordered) == 1:
        return {}
    reference = attention[1.0] if 1.0 in attention else next(iter(attention.values()))
    size = reference.shape[-2:]

    def at_input_size(map_: torch.Tensor) -> torch.Tensor:
        map_ = map_.float()
        if map_.shape[-2:] == size:
            return map_
        return torch.nn.functional.interpolate(map_, size=tuple(size), mode="bilinear", align_corners=False)

    remaining = torch.ones_like(reference, dtype=torch.float32)
    weights: dict[float, torch.Tensor] = {}
    for scale in reversed(ordered[1:]):  # smallest first: it is applied last, so it keeps its attention
        a = at_input_size(attention[scale]).clamp(0, 1)
        weights[scale] = a * remaining
        remaining = remaining * (1 - a)
    weights[ordered[0]] = remaining
    return {scale: weights[scale] for scale in sorted(weights)}



class PictureWriter:
    """``on_prediction`` callback that draws the first `limit` images: overlay, input | truth | prediction, and for
    hierarchical models the per-scale attention and each scale's share of the fused prediction (colour-mapped).

    `written` maps picture kinds to lists of paths relative to the demo folder's parent of `out_dir`.
    """

    def __init__(self, out_dir: Path, palette: np.ndarray, mean: Sequence[float], std: Sequence[float], limit: int,
                 scales: Sequence[float] | None, recipe_title: str = ""):  # fmt: skip
        from attnseg.inference.dump import PredictionDumper

        self.out_dir = Path(out_dir)
        self.limit = limit
        self.scales = tuple(scales) if scales else None
        self.dumper = PredictionDumper(out_dir, palette, mean, std, kinds=("overlay", "compare"))
        self.palette = palette
        self.recipe_title = recipe_title
        self.written: list[dict[str, Any]] = []

    def __call__(self, names: list[str], predictions: np.ndarray, extras: dict[str, Any]) -> None:
        from attnseg.inference.dump import safe_name

        keep = max(0, min(len(names), self.limit - len(self.written)))
        if keep == 0:
            return
        batch = extras.get("batch", {})
        subset = {**extras, "batch": _slice_batch(batch, keep)}
        self.dumper(names[:keep], predictions[:keep], subset)
        output = extras.get("output")
        for index, name in enumerate(names[:keep]):
            stem = safe_name(name)
            entry: dict[str, Any] = {"name": str(name), "recipe": self.recipe_title,
                                     "overlay": f"pictures/overlay/{stem}.png",
                                     "compare": f"pictures/compare/{stem}.png"}  # fmt: skip
            if self.scales and output is not None and getattr(output, "scale_attention", None):
                entry.update(self._write_attention(stem, output, index, batch))
            self.written.append(entry)

    def _write_attention(self, stem: str, output: Any, index: int, batch: Mapping[str, Any]) -> dict[str, Any]:
        import cv2

        from attnseg.inference.dump import colorize, write_png
        from attnseg.inference.preprocess import denormalize_image

        attention = {scale: maps[index : index + 1] for scale, maps in output.scale_attention.items()}
        weights = effective_scale_weights(attention, self.scales)
        image = denormalize_image(batch["image"][index], self.dumper.mean, self.dumper.std)
        height, width = image.shape[:2]
        entry: dict[str, Any] = {"attention": {}, "weights": {}, "scale_predictions": {}}
        for scale, maps in sorted(attention.items()):
            path = self.out_dir / "attention" / f"{stem}_attn_{scale:g}x.png"
            write_png(path, _heatmap(maps[0, 0], (height, width)))
            entry["attention"][f"{scale:g}"] = f"pictures/attention/{path.name}"
        for scale, maps in weights.items():
            path = self.out_dir / "attention" / f"{stem}_share_{scale:g}x.png"
            write_png(path, _heatmap(maps[0, 0], (height, width)))
            entry["weights"][f"{scale:g}"] = f"pictures/attention/{path.name}"
        for scale, logits in sorted(output.scale_logits.items()):
            ids = logits[index].float().max(dim=0).indices.to(torch.uint8).cpu().numpy()
            colors = cv2.resize(colorize(ids, self.palette), (width, height), interpolation=cv2.INTER_NEAREST)
            path = self.out_dir / "attention" / f"{stem}_pred_{scale:g}x.png"
            write_png(path, colors)
            entry["scale_predictions"][f"{scale:g}"] = f"pictures/attention/{path.name}"
        if weights:
            # One picture of who decides where: red, green, blue = the share of the smallest, middle, largest scale.
            entry["shares_scales"] = sorted(weights)[:3]
            channels = [weights[s][0, 0].cpu().numpy() for s in sorted(weights)][:3]
            while len(channels) < 3:
                channels.append(np.zeros_like(channels[0]))
            mix = (np.clip(np.stack(channels, axis=-1), 0, 1) * 255).round().astype(np.uint8)
            mix = cv2.resize(mix, (width, height), interpolation=cv2.INTER_LINEAR)
            path = self.out_dir / "attention" / f"{stem}_shares_rgb.png"
            write_png(path, cv2.addWeighted(image, 0.35, mix, 0.65, 0.0))
            entry["shares_rgb"] = f"pictures/attention/{path.name}"
        return entry


def _slice_batch(batch: Mapping[str, Any], count: int) -> dict[str, Any]:
    return {key: (value[:count] if isinstance(value, (list, tuple, torch.Tensor)) else value)
            for key, value in batch.items()}  # fmt: skip


def _heatmap(values: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) values in [0, 1] -> (H, W, 3) RGB viridis picture at `size`."""
    import cv2

    gray = (values.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    gray = cv2.resize(gray, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(cv2.applyColorMap(gray, cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
