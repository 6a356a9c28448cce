"""Write predictions as images: colour maps, overlays, raw trainIds/labelIds, per-scale attention and predictions.

Layout under the output folder (one sub-folder per kind, so that e.g. ``labelIds/`` can be scored directly with
``attnseg score --pred DIR/labelIds``, which expects exactly one PNG per image)::

    color/<name>.png        prediction in the class palette
    overlay/<name>.png      prediction blended over the input image
    trainIds/<name>.png     raw 8-bit trainIds (0..18)
    labelIds/<name>.png     8-bit Cityscapes labelIds (what the benchmark reads)
    compare/<name>.png      input | ground truth | prediction side by side (when ground truth exists), each panel
                            at most 1024 pixels wide
    confidence/<name>.png   top fused class probability, round(255 * p) (`attnseg.inference.confidence`)
    scales/<name>_attn_<s>x.png, scales/<name>_pred_<s>x.png   MscaleOCR per-scale attention / predictions

PNGs are encoded with OpenCV (4x faster than PIL for overlays, PERF_NOTES), to a temporary name beside the final
one and renamed when complete (`attnseg.fileio`), so a killed run leaves no truncated PNG; the next dumper into the
same folder removes the temporaries it left.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from attnseg.fileio import atomic_write_with, remove_stale_temporaries
from attnseg.inference.confidence import confidence_of, unit_to_uint8
from attnseg.inference.preprocess import denormalize_image, to_rgb_uint8
from attnseg.models.outputs import SegmentationOutput

DUMP_KINDS = ("color", "overlay", "trainIds", "labelIds", "compare", "confidence", "scales")
# zlib level 1 instead of OpenCV's 3, and every row filtered against the one above ("up") instead of libpng trying
# all five filters per row: the five default dumps of a 1024x2048 image encode in ~165 instead of ~265 ms (an overlay
# 111 -> 79 ms) for ~5% more bytes, and the encoding is most of what evaluation spends outside the model (README,
# evaluation throughput). OpenCV before 4.11 has no filter option and keeps libpng's choice.
PNG_OPTIONS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_OPTIONS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
DEFAULT_DUMP_KINDS = ("color", "overlay", "labelIds", "compare", "confidence")


def colorize(train_ids: np.ndarray, palette: np.ndarray, ignore_color: Sequence[int] = (0, 0, 0)) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a class-id map; ids without a palette entry (e.g. 255) get `ignore_color`."""
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    table = np.tile(np.asarray(ignore_color, dtype=np.uint8), (256, 1))
    table[: len(palette)] = palette[:256]
    ids = np.asarray(train_ids).astype(np.uint8, copy=False)
    if ids.ndim != 2 or ids.size < 1 << 16:
        return table[ids]
    # Three 8-bit lookups are ~5x faster than numpy's fancy indexing on a 1024x2048 map (33 -> 6 ms).
    return cv2.merge([cv2.LUT(ids, np.ascontiguousarray(table[:, channel])) for channel in range(3)])


def overlay(image: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """`image` (H, W, 3) uint8 blended with `colors` (same size): ``(1 - alpha) * image + alpha * colors``."""
    if image.shape != colors.shape:
        image = cv2.resize(image, (colors.shape[1], colors.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.addWeighted(image, 1.0 - alpha, colors, alpha, 0.0)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an (H, W) gray or (H, W, 3) RGB uint8 image with OpenCV (which wants BGR), atomically.

    The format follows `path`'s suffix (the temporary keeps it).
    """
    path = Path(path)
    data = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    options = PNG_OPTIONS if path.suffix.lower() == ".png" else []
    try:
        atomic_write_with(path, lambda temp: cv2.imwrite(str(temp), data, options))
    except cv2.error as error:
        raise OSError(f"{path}: could not write image ({error})") from None


def safe_name(name: str) -> str:
    """A file stem for a sample name (path separators become underscores)."""
    return str(name).replace("\\", "/").strip("/").replace("/", "_") or "image"


def _scale_tag(scale: float) -> str:
    return f"{float(scale):g}x"


def scale_maps(output: SegmentationOutput, index: int) -> tuple[dict[float, np.ndarray], dict[float, np.ndarray]]:
    """Image `index` of a scale-fusing model's output: (attention (h, w) float32 in [0, 1] per scale that took part
    in the fusion, class ids (h, w) uint8 per scale whose logits were kept), each at its scale's size."""
    attention = {scale: maps[index, 0].float().clamp(0, 1).cpu().numpy()
                 for scale, maps in output.scale_attention.items()}  # fmt: skip
    labels = {scale: logits[index].float().max(dim=0).indices.to(torch.uint8).cpu().numpy()
              for scale, logits in output.scale_logits.items()}  # fmt: skip
    return attention, labels


def scale_map_images(
    attention: dict[float, np.ndarray], scale_labels: dict[float, np.ndarray], palette: np.ndarray
) -> list[tuple[str, np.ndarray]]:
    """(suffix, image) of per-scale maps: ``attn_<s>x`` gray round(255 * a), ``pred_<s>x`` in the palette.

    The one encoding of `attnseg eval --dump` (``scales/<name>_<suffix>.png``) and `attnseg predict --attention`
    (``<name>_<suffix>.png``).
    """
    images = [(f"attn_{_scale_tag(scale)}", unit_to_uint8(maps)) for scale, maps in attention.items()]
    return images + [(f"pred_{_scale_tag(scale)}", colorize(ids, palette)) for scale, ids in scale_labels.items()]


COMPARE_PANEL_WIDTH = 1024


def compare_strip(
    image: np.ndarray,
    label: np.ndarray | None,
    blended: np.ndarray,
    palette: np.ndarray,
    max_panel_width: int | None = COMPARE_PANEL_WIDTH,
) -> np.ndarray:
    """input | ground truth in the palette (ignored pixels black; left out when `label` is None) | prediction
    over the input (`blended`), side by side.

    Panels wider than `max_panel_width` are shrunk to it (area averaging for the pictures, nearest for the labels):
    a 1024x2048 frame makes a 512x3072 strip, which encodes ~9x faster than the full 1024x6144 one and is still
    wider than a screen. ``None`` keeps the full size.
    """
    if label is not None:
        label = np.asarray(label)
        label = np.where((label >= 0) & (label < 256), label, 255).astype(np.uint8)
    height, width = blended.shape[:2]
    if max_panel_width is not None and width > max_panel_width:
        size = (max_panel_width, max(1, round(height * max_panel_width / width)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        blended = cv2.resize(blended, size, interpolation=cv2.INTER_AREA)
        if label is not None:
            label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    panels = [image]
    if label is not None:
        panels.append(colorize(label, palette))
    panels.append(blended)
    return np.concatenate(panels, axis=1)


def label_of(labels: Any, index: int) -> np.ndarray | None:
    """Image `index` of a batch's ``"label"`` entry (tensor or arrays) as numpy, or None without labels."""
    if labels is None:
        return None
    return labels[index].cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels[index])


def input_image(
    batch: dict[str, Any], index: int, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """(H, W, 3) uint8 RGB input of image `index` of an evaluation batch: its file (``image_path``) when that has
    the prediction's `size`, else the normalised tensor mapped back with `mean` / `std`."""
    paths = batch.get("image_path") or []
    if index < len(paths) and paths[index]:
        image = cv2.imread(str(paths[index]), cv2.IMREAD_UNCHANGED)
        if image is not None:
            if image.ndim == 3:
                image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
            image = to_rgb_uint8(image)
            if image.shape[:2] == tuple(size):
                return image
    return denormalize_image(batch["image"][index], mean, std)


class PredictionDumper:
    """An ``on_prediction`` callback for `evaluate_model` that writes the images described in the module docstring.

    Args:
        out_dir: output folder.
        palette: (K, 3) RGB colours per trainId.
        mean, std: normalisation of the evaluated tensors, to rebuild the input when no ``image_path`` is known.
        kinds: which of `DUMP_KINDS` to write.
        train_id_to_label_id: (256,) uint8 table for ``labelIds`` (Cityscapes `attnseg.data.labels.train_id_to_id`).
        alpha: overlay opacity of the colours.
    """

    def __init__(
        self,
        out_dir: str | Path,
        palette: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        kinds: Sequence[str] = DEFAULT_DUMP_KINDS,
        train_id_to_label_id: np.ndarray | None = None,
        alpha: float = 0.5,
    ):
        unknown = set(kinds) - set(DUMP_KINDS)
        if unknown:
            raise ValueError(f"unknown dump kinds {sorted(unknown)}; choose from {DUMP_KINDS}")
        if "labelIds" in kinds and train_id_to_label_id is None:
            raise ValueError("labelIds dumps need the train_id_to_label_id table")
        self.out_dir = Path(out_dir)
        remove_stale_temporaries(self.out_dir)
        self.palette = np.asarray(palette, dtype=np.uint8)
        self.mean, self.std = tuple(mean), tuple(std)
        self.kinds = tuple(kinds)
        self.train_id_to_label_id = train_id_to_label_id
        self.alpha = alpha
        self.count = 0

    def __call__(self, names: Sequence[str], predictions: np.ndarray, extras: dict[str, Any]) -> None:
        batch = extras.get("batch", {})
        labels = batch.get("label")
        output = extras.get("output")
        confidence = None
        if "confidence" in self.kinds and extras.get("scores") is not None:
            confidence = confidence_of(extras["scores"], bool(extras.get("are_probabilities")), predictions.shape[-2:])
        for index, name in enumerate(names):
            stem = safe_name(name)
            prediction = predictions[index]
            self._write_prediction(stem, prediction, batch, index, labels)
            if confidence is not None:
                write_png(self.out_dir / "confidence" / f"{stem}.png", unit_to_uint8(confidence[index]))
            if "scales" in self.kinds and isinstance(output, SegmentationOutput):
                for suffix, image in scale_map_images(*scale_maps(output, index), self.palette):
                    write_png(self.out_dir / "scales" / f"{stem}_{suffix}.png", image)
            self.count += 1

    def _write_prediction(self, stem, prediction, batch, index, labels) -> None:
        kinds = self.kinds
        colors = colorize(prediction, self.palette) if {"color", "overlay", "compare"} & set(kinds) else None
        if "trainIds" in kinds:
            write_png(self.out_dir / "trainIds" / f"{stem}.png", prediction.astype(np.uint8))
        if "labelIds" in kinds:
            write_png(self.out_dir / "labelIds" / f"{stem}.png", self.train_id_to_label_id[prediction.astype(np.uint8)])
        if "color" in kinds:
            write_png(self.out_dir / "color" / f"{stem}.png", colors)
        if {"overlay", "compare"} & set(kinds):
            image = input_image(batch, index, prediction.shape, self.mean, self.std)
            blended = overlay(image, colors, self.alpha)
            if "overlay" in kinds:
                write_png(self.out_dir / "overlay" / f"{stem}.png", blended)
            if "compare" in kinds:
                strip = compare_strip(image, label_of(labels, index), blended, self.palette)
                write_png(self.out_dir / "compare" / f"{stem}.png", strip)
