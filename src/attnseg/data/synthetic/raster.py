"""Polygons to pixels: clipping to the image, the object-index map, label and instance images, the json dict."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image, ImageDraw

from attnseg.data.labels import INSTANCE_LABEL_IDS, LABELS_BY_NAME
from attnseg.data.synthetic.paint import Painter


@dataclass
class Shape:
    """One json object: a label, its polygon in image pixels, and how to paint the pixels it ends up owning."""

    label: str
    polygon: np.ndarray  # (N, 2) int32, x then y, already clipped to the image
    painter: Painter


def clip_polygon(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Sutherland-Hodgman clip of a polygon to the pixel rectangle [0, W-1] x [0, H-1]; returns rounded int32 points.

    Clipping (rather than clamping vertices) keeps edges where they are, so neighbouring polygons still meet.
    """
    points = np.asarray(points, dtype=np.float64)
    if len(points) >= 3 and points.min() >= 0 and points[:, 0].max() <= width - 1 and points[:, 1].max() <= height - 1:
        poly = points.tolist()  # already inside: nothing to cut
    else:
        poly = points.tolist()
        poly = _clip_to_rectangle(poly, width, height)
    if len(poly) < 3:
        return np.zeros((0, 2), dtype=np.int32)
    result = np.rint(np.array(poly)).astype(np.int32)
    keep = np.ones(len(result), dtype=bool)  # drop consecutive duplicates created by rounding
    keep[1:] = np.any(result[1:] != result[:-1], axis=1)
    result = result[keep]
    if len(result) > 1 and np.all(result[0] == result[-1]):
        result = result[:-1]
    return result if len(result) >= 3 else np.zeros((0, 2), dtype=np.int32)


def _clip_to_rectangle(poly: list, width: int, height: int) -> list:
    bounds = ((0, 0.0, 1), (0, width - 1.0, -1), (1, 0.0, 1), (1, height - 1.0, -1))  # (axis, limit, inside sign)
    for axis, limit, sign in bounds:
        if not poly:
            break
        clipped = []
        previous = poly[-1]
        for current in poly:
            current_in = (current[axis] - limit) * sign >= 0
            previous_in = (previous[axis] - limit) * sign >= 0
            if current_in != previous_in:
                t = (limit - previous[axis]) / (current[axis] - previous[axis])
                clipped.append(tuple(previous[k] + t * (current[k] - previous[k]) for k in range(2)))
            if current_in:
                clipped.append(current)
            previous = current
        poly = clipped
    return poly


def polygon_area(points: np.ndarray) -> float:
    """Area in square pixels of a simple polygon given as (N, 2) points (shoelace formula)."""
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    cross = np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:]) + x[-1] * y[0] - y[-1] * x[0]
    return 0.5 * abs(float(cross))


def object_index_map(shapes: Sequence[Shape], width: int, height: int) -> np.ndarray:
    """(H, W) int32 with 1 + the index of the shape owning each pixel (0 = none), drawn like cityscapesscripts."""
    index_image = Image.new("I", (width, height), 0)
    drawer = ImageDraw.Draw(index_image)
    for k, shape in enumerate(shapes, start=1):
        drawer.polygon([tuple(p) for p in shape.polygon.tolist()], fill=k)
    return np.asarray(index_image, dtype=np.int32)


def label_table(shapes: Sequence[Shape]) -> np.ndarray:
    """(len(shapes) + 1,) uint8 labelId per object index (0 = unlabeled), to look an index map up with."""
    table = np.zeros(len(shapes) + 1, dtype=np.uint8)
    for k, shape in enumerate(shapes, start=1):
        table[k] = LABELS_BY_NAME[shape.label].id
    return table


def annotation_dict(shapes: Sequence[Shape], width: int, height: int) -> dict:
    """The ``*_gtFine_polygons.json`` content of `shapes`, in drawing order."""
    return {
        "imgHeight": height,
        "imgWidth": width,
        "objects": [{"label": s.label, "polygon": s.polygon.tolist()} for s in shapes],
    }


def rasterize_annotation(annotation: dict, encoding: str = "ids") -> np.ndarray:
    """Label image of a Cityscapes polygon dict, drawn by cityscapesscripts' own `createLabelImage`."""
    parsed = Annotation()
    parsed.fromJsonText(json.dumps(annotation))
    return np.asarray(createLabelImage(parsed, encoding))


def instance_ids(shapes: Sequence[Shape], index_map: np.ndarray) -> np.ndarray:
    """Cityscapes instanceIds: labelId for stuff, labelId * 1000 + k (k counts per class) for instance classes."""
    table = np.zeros(len(shapes) + 1, dtype=np.int32)
    counters: dict[str, int] = {}
    for k, shape in enumerate(shapes, start=1):
        label_id = LABELS_BY_NAME[shape.label].id
        if label_id in INSTANCE_LABEL_IDS:
            table[k] = label_id * 1000 + counters.get(shape.label, 0)
            counters[shape.label] = counters.get(shape.label, 0) + 1
        else:
            table[k] = label_id
    return table[index_map]
