"""One scene from polygons to pixels: visibility of forced classes, label images, painting and camera effects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from attnseg.data.labels import LABELS_BY_NAME
from attnseg.data.synthetic.drawing import SceneDrawing
from attnseg.data.synthetic.raster import (
    Shape,
    annotation_dict,
    clip_polygon,
    instance_ids,
    label_table,
    object_index_map,
    rasterize_annotation,
)
from attnseg.data.synthetic.scene import FORCED_CLASSES, draw_scene

_GROUND_IDS = np.zeros(256, dtype=bool)
_GROUND_IDS[[LABELS_BY_NAME[n].id for n in ("road", "sidewalk", "terrain", "rail track")]] = True


@dataclass
class SyntheticScene:
    """A rendered scene: the json dict, the RGB image and the label images derived from the polygons."""

    annotation: dict
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label_ids: np.ndarray  # (H, W) uint8
    instance_ids: np.ndarray  # (H, W) int32 (labelId, or labelId * 1000 + k for instance classes)
    shapes: list[Shape] = field(repr=False, default_factory=list)


def _promote_hidden(
    shapes: list[Shape], index_map: np.ndarray, forced: set[str], min_pixels: int
) -> list[Shape] | None:
    """If a forced class ended up (almost) fully occluded, move its shapes to the top so it shows; None if all fine."""
    visible = np.bincount(label_table(shapes)[index_map].ravel(), minlength=256)
    hidden = {name for name in forced if visible[LABELS_BY_NAME[name].id] < min_pixels}
    if not hidden:
        return None
    keep = [s for s in shapes if s.label not in hidden or s.label == "ego vehicle"]
    lifted = [s for s in shapes if s.label in hidden and s.label != "ego vehicle"]
    egos = [s for s in keep if s.label == "ego vehicle"]
    return [s for s in keep if s.label != "ego vehicle"] + lifted + egos


def _visible_scene(
    rng: np.random.Generator, height: int, width: int, forced: Sequence[str]
) -> tuple[SceneDrawing, list[Shape], np.ndarray]:
    """(drawing, shapes, object-index map) of a scene where every forced class shows, trying up to 4 streets."""
    required = set(forced) & set(FORCED_CLASSES)
    min_pixels = max(4, (height * width) // 8000)
    for _attempt in range(4):  # a forced object can still fall outside the view; then draw another street
        drawing = draw_scene(rng, width, height, forced)
        shapes = drawing.shapes()
        index_map = object_index_map(shapes, width, height)
        promoted = _promote_hidden(shapes, index_map, required, min_pixels)
        if promoted is None:
            break
        shapes = promoted
        index_map = object_index_map(shapes, width, height)
        if _promote_hidden(shapes, index_map, required, min_pixels) is None:
            break
    return drawing, shapes, index_map


def _paint_shapes(shapes: Sequence[Shape], index_map: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 image where each pixel is painted by the shape owning it (grey where none does)."""
    height, width = index_map.shape
    image = np.zeros((height, width, 3), dtype=np.float32)
    image[:] = (90, 90, 90)
    for k, shape in enumerate(shapes, start=1):
        x0, y0 = shape.polygon.min(axis=0)
        x1, y1 = shape.polygon.max(axis=0) + 1
        owned = index_map[y0:y1, x0:x1] == k
        if not owned.any():
            continue
        patch = shape.painter(int(x0), int(y0), int(x1), int(y1))
        np.copyto(image[y0:y1, x0:x1], patch, where=owned[..., None])
    return image


def _finish_image(drawing: SceneDrawing, image: np.ndarray, label_ids: np.ndarray) -> np.ndarray:
    """Cast shadows, global lighting, white balance, gamma, blur and sensor noise; returns uint8 RGB."""
    rng, canvas = drawing.rng, drawing.canvas
    height, width = label_ids.shape
    gain = 1.0 + rng.uniform(0.05, 0.25) * canvas.coarse  # large-scale light fall-off
    if drawing.shadows:
        shade = np.ones((height, width), dtype=np.float32)
        for quad, factor in drawing.shadows:
            polygon = clip_polygon(quad, width, height)
            if len(polygon) >= 3:
                cv2.fillPoly(shade, [polygon], float(factor))
        gain = np.where(_GROUND_IDS[label_ids], gain * shade, gain)  # shadows fall on the ground only
    gain *= np.float32(rng.uniform(0.65, 1.25))
    white_balance = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    noise = np.float32(rng.uniform(1.5, 7.0))
    image *= gain[..., None] * white_balance
    # Sensor noise: the fine field flipped, so it does not line up with the textures drawn from it.
    image += (noise * canvas.fine[::-1, ::-1] + 0.5)[..., None]
    if rng.random() < 0.35:
        image = cv2.GaussianBlur(image, (3, 3), rng.uniform(0.4, 0.9))
    np.clip(image, 0, 255, out=image)
    image = image.astype(np.uint8)
    gamma = rng.uniform(0.8, 1.25)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


def render_scene(
    rng: np.random.Generator, height: int = 256, width: int = 512, forced: Sequence[str] = ()
) -> SyntheticScene:
    """Draw one random street scene.

    Args:
        rng: the only source of randomness (the same generator state gives the same scene).
        height: image height in pixels.
        width: image width in pixels.
        forced: label names that must be visible (placed again on top if occluded), e.g. rare classes.
    """
    drawing, shapes, index_map = _visible_scene(rng, height, width, forced)
    annotation = annotation_dict(shapes, width, height)
    label_ids = rasterize_annotation(annotation, "ids")
    if not np.array_equal(label_ids, label_table(shapes)[index_map]):  # pragma: no cover - rasteriser mismatch
        raise RuntimeError("object map and cityscapesscripts' label image disagree")
    image = _finish_image(drawing, _paint_shapes(shapes, index_map), label_ids)
    return SyntheticScene(annotation, image, label_ids, instance_ids(shapes, index_map), shapes)
