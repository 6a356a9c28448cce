"""Procedural street scenes written in the exact Cityscapes layout, for tests, demos and CPU-sized training runs.

Every image starts as a list of labelled polygons (the ``*_gtFine_polygons.json`` is the source of truth): a pinhole
camera 1.5 m above a flat street projects 3D planes (road, sidewalks, facades, walls, fences) and upright sprites
(cars, trucks, buses, trams, bikes, people, poles, signs, lights, trees) placed at a depth ``Z`` metres ahead.
Label images are rasterised from that json by cityscapesscripts' own ``createLabelImage``, so ``attnseg prepare``
reproduces them exactly, and the RGB image is painted pixel by pixel from the same polygons (through an object-index
map drawn with the same PIL polygon filler): no pixel of the image disagrees with its label.

What makes the task non-trivial: perspective and scale (a car spans 150 px near and 5 px at the horizon), thin
structures (1-3 px poles, bicycle frames), busy streets (several poles, signs, people and two-wheelers per image),
texture noise per class, colour, white-balance, gamma and lighting changes per image, cast shadows and occlusion.
What keeps it learnable by a small network in minutes on a CPU: every class keeps one look, as in a single city
whose buses, trams, trucks and shared bikes wear their operators' liveries, whose cyclists wear hi-vis vests and
whose garden walls are brick. Colour alone still does not decide a pixel (grey poles against grey facades, cars
against asphalt, people in any shirt); shape, thinness and context do.

Layout written under ``root``::

    leftImg8bit/{train,val}/<city>/<city>_<seq:06d>_000019_leftImg8bit.png
    gtFine/{train,val}/<city>/<city>_<seq:06d>_000019_gtFine_{polygons.json,labelIds.png,instanceIds.png,color.png}
"""

from __future__ import annotations

import json
import math
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image, ImageDraw

from attnseg.data.labels import (
    INSTANCE_LABEL_IDS,
    LABELS_BY_NAME,
    colorize_label_ids,
    id_to_train_id,
)
from attnseg.fileio import atomic_write_text, atomic_write_with

__all__ = [
    "SPLIT_CITIES",
    "make_synthetic_dataset",
    "render_scene",
    "SyntheticScene",
]

#: Fictional city names (no underscores: Cityscapes file names split on them); distinct per split like the real set.
SPLIT_CITIES: dict[str, tuple[str, ...]] = {
    "train": ("arden", "brookfield", "cedarville"),
    "val": ("dunmore", "elmstead"),
}
FRAME_NUMBER = 19  # the annotated frame of every real Cityscapes fine snippet is _000019
# Bumped whenever the same seed draws different scenes, so that a cached copy (the demo's) is not reused.
SCENES_VERSION = 4

CAMERA_HEIGHT = 1.5  # metres
Z_NEAR = 1.0  # metres; planes are cut here so that projected coordinates stay bounded
Z_FAR = 400.0

# Classes every split must contain somewhere (besides road and sky, which every image has); a few are forced into
# each image round-robin so that even a 4-image val split shows all 19 trainIds.
FORCED_CLASSES: tuple[str, ...] = (
    "train", "bus", "truck", "motorcycle", "rider", "bicycle", "wall", "fence", "terrain",
    "traffic light", "traffic sign", "person", "pole", "car", "vegetation", "building", "sidewalk",
)  # fmt: skip

Painter = Callable[[int, int, int, int], np.ndarray]  # (x0, y0, x1, y1) -> (y1 - y0, x1 - x0, 3) float32 RGB


@dataclass
class Shape:
    """One json object: a label, its polygon in image pixels, and how to paint the pixels it ends up owning."""

    label: str
    polygon: np.ndarray  # (N, 2) int32, x then y, already clipped to the image
    painter: Painter


@dataclass
class SyntheticScene:
    """A rendered scene: the json dict, the RGB image and the label images derived from the polygons."""

    annotation: dict
    image: np.ndarray  # (H, W, 3) uint8 RGB
    label_ids: np.ndarray  # (H, W) uint8
    instance_ids: np.ndarray  # (H, W) int32 (labelId, or labelId * 1000 + k for instance classes)
    shapes: list[Shape] = field(repr=False, default_factory=list)


# --------------------------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """Pinhole camera looking along +Z, horizontal; X to the right, Y up from the ground plane."""

    focal: float
    cx: float
    horizon: float
    width: int
    height: int
    elevation: float = CAMERA_HEIGHT

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) world points (X, Y, Z) -> (N, 2) image points."""
        points = np.asarray(points, dtype=np.float64)
        z = points[:, 2]
        x = self.cx + self.focal * points[:, 0] / z
        y = self.horizon + self.focal * (self.elevation - points[:, 1]) / z
        return np.stack([x, y], axis=1)

    def ground_xy(self, x_world: float, z: float) -> tuple[float, float]:
        return self.cx + self.focal * x_world / z, self.horizon + self.focal * self.elevation / z

    def scale(self, z: float) -> float:
        """Pixels per metre at depth z."""
        return self.focal / z


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


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    cross = np.dot(x[:-1], y[1:]) - np.dot(y[:-1], x[1:]) + x[-1] * y[0] - y[-1] * x[0]
    return 0.5 * abs(float(cross))


# --------------------------------------------------------------------------------------------------------------------
# Painting helpers
# --------------------------------------------------------------------------------------------------------------------


class Canvas:
    """Per-image random fields shared by the painters (fine grain, blotches, large-scale lighting)."""

    def __init__(self, rng: np.random.Generator, camera: Camera):
        self.rng = rng
        self.camera = camera
        height, width = camera.height, camera.width
        self.fine = rng.standard_normal((height, width), dtype=np.float32)
        self.mid = self._smooth_noise(rng, height, width, 6)
        self.coarse = self._smooth_noise(rng, height, width, 40)
        # Pixel coordinates as broadcast views: slicing works as on full arrays, without filling two H x W arrays.
        self.xs = np.broadcast_to(np.arange(width, dtype=np.float32)[None, :], (height, width))
        self.ys = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None], (height, width))

    @staticmethod
    def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
        small = rng.standard_normal((height // cell + 2, width // cell + 2), dtype=np.float32)
        big = cv2.resize(small, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
        return np.ascontiguousarray(big[cell : cell + height, cell : cell + width]) / 0.8

    def textured(self, color, box, fine: float, mid: float, coarse: float = 0.0, tint: float = 0.0) -> np.ndarray:
        """Colour `color` modulated by the noise fields inside `box` = (x0, y0, x1, y1)."""
        x0, y0, x1, y1 = box
        gain = 1.0 + fine * self.fine[y0:y1, x0:x1] + mid * self.mid[y0:y1, x0:x1]
        if coarse:
            gain += coarse * self.coarse[y0:y1, x0:x1]
        patch = gain[..., None] * np.asarray(color, dtype=np.float32)
        if tint:  # slight hue wander, e.g. leaves or grass
            patch[..., 1] += tint * 40.0 * self.mid[y0:y1, x0:x1][::-1, ::-1][: y1 - y0, : x1 - x0]
        return patch

    def ground_coordinates(self, box) -> tuple[np.ndarray, np.ndarray]:
        """World (X, Z) of the ground-plane point seen at each pixel of `box` (Z = inf above the horizon)."""
        cam = self.camera
        x0, y0, x1, y1 = box
        below = np.maximum(self.ys[y0:y1, x0:x1] - cam.horizon, 1e-3)
        z = cam.focal * cam.elevation / below
        x_world = (self.xs[y0:y1, x0:x1] - cam.cx) * z / cam.focal
        return x_world, z

    def wall_coordinates(self, box, x_plane: float) -> tuple[np.ndarray, np.ndarray]:
        """(Z, Y) on the vertical plane X = x_plane (a facade parallel to the street) at each pixel of `box`."""
        cam = self.camera
        x0, y0, x1, y1 = box
        dx = self.xs[y0:y1, x0:x1] - cam.cx
        dx = np.where(np.abs(dx) < 1e-3, 1e-3, dx)
        z = np.clip(cam.focal * x_plane / dx, Z_NEAR, Z_FAR)
        y_world = cam.elevation - (self.ys[y0:y1, x0:x1] - cam.horizon) * z / cam.focal
        return z, y_world

    def front_coordinates(self, box, z_plane: float) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y) on the vertical plane Z = z_plane (facing the camera) at each pixel of `box`."""
        cam = self.camera
        x0, y0, x1, y1 = box
        x_world = (self.xs[y0:y1, x0:x1] - cam.cx) * z_plane / cam.focal
        y_world = cam.elevation - (self.ys[y0:y1, x0:x1] - cam.horizon) * z_plane / cam.focal
        return x_world, y_world


def _frac(values: np.ndarray) -> np.ndarray:
    return values - np.floor(values)


def _jitter(rng: np.random.Generator, color, amount: float = 18.0) -> np.ndarray:
    shifted = np.asarray(color, dtype=np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)
    return np.minimum(np.maximum(shifted, 0), 255)  # np.clip's dispatch costs more than the work on 3 values


def _mix(a, b, t) -> np.ndarray:
    return np.asarray(a, dtype=np.float32) * (1 - t) + np.asarray(b, dtype=np.float32) * t


# --------------------------------------------------------------------------------------------------------------------
# Sprites: upright objects drawn on a local canvas in metres, outlined by their mask's contour
# --------------------------------------------------------------------------------------------------------------------


class Sprite:
    """A local drawing surface for one upright object at depth z, in metres: u to the right, v up from the ground."""

    def __init__(self, camera: Camera, x_world: float, z: float, half_width: float, height: float, base_color):
        self.scale = camera.scale(z)
        ground_x, ground_y = camera.ground_xy(x_world, z)
        pad = 2
        self.left = int(math.floor(ground_x - half_width * self.scale)) - pad
        self.top = int(math.floor(ground_y - height * self.scale)) - pad
        self.ground_x = ground_x - self.left
        self.ground_y = ground_y - self.top
        width_px = int(math.ceil(2 * half_width * self.scale)) + 2 * pad + 1
        height_px = int(math.ceil(height * self.scale)) + 2 * pad + 1
        self.mask = np.zeros((height_px, width_px), dtype=np.uint8)
        self.base = np.asarray(base_color, dtype=np.float32)
        self.rgb = np.empty((height_px, width_px, 3), dtype=np.float32)
        self.rgb[:] = self.base

    def px(self, u: float, v: float) -> tuple[int, int]:
        return int(round(self.ground_x + u * self.scale)), int(round(self.ground_y - v * self.scale))

    def pts(self, uv: Sequence[tuple[float, float]]) -> np.ndarray:
        return np.array([self.px(u, v) for u, v in uv], dtype=np.int32)

    def thickness(self, metres: float) -> int:
        return max(1, int(round(metres * self.scale)))

    def poly(self, uv, color=None, shape: bool = True) -> None:
        pts = self.pts(uv)
        if shape:
            cv2.fillPoly(self.mask, [pts], 255)
        if color is not None:
            cv2.fillPoly(self.rgb, [pts], tuple(float(c) for c in color))

    def circle(self, u, v, radius, color=None, shape: bool = True) -> None:
        center, r = self.px(u, v), max(1, int(round(radius * self.scale)))
        if shape:
            cv2.circle(self.mask, center, r, 255, -1)
        if color is not None:
            cv2.circle(self.rgb, center, r, tuple(float(c) for c in color), -1)

    def line(self, uv0, uv1, width, color=None, shape: bool = True) -> None:
        p0, p1, t = self.px(*uv0), self.px(*uv1), self.thickness(width)
        if shape:
            cv2.line(self.mask, p0, p1, 255, t)
        if color is not None:
            cv2.line(self.rgb, p0, p1, tuple(float(c) for c in color), t)

    def rect(self, u0, v0, u1, v1, color=None, shape: bool = True) -> None:
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], color, shape)

    def outline(self) -> np.ndarray:
        """Image-space polygon of the largest connected part of the mask (empty if nothing was drawn)."""
        contours, _ = cv2.findContours(self.mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            return np.zeros((0, 2), dtype=np.int32)
        contour = max(contours, key=cv2.contourArea)
        if len(contour) > 12:
            contour = cv2.approxPolyDP(contour, 0.6, True)
        return contour.reshape(-1, 2) + np.array([self.left, self.top], dtype=np.int32)

    def painter(self, canvas: Canvas, grain: float = 0.04) -> Painter:
        rgb = self.rgb
        left, top, base = self.left, self.top, self.base

        def paint(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
            patch = np.empty((y1 - y0, x1 - x0, 3), dtype=np.float32)
            patch[:] = base
            sx0, sy0 = max(x0 - left, 0), max(y0 - top, 0)
            sx1, sy1 = min(x1 - left, rgb.shape[1]), min(y1 - top, rgb.shape[0])
            if sx1 > sx0 and sy1 > sy0:
                patch[sy0 + top - y0 : sy1 + top - y0, sx0 + left - x0 : sx1 + left - x0] = rgb[sy0:sy1, sx0:sx1]
            return patch * (1.0 + grain * canvas.fine[y0:y1, x0:x1, None])

        return paint


# --------------------------------------------------------------------------------------------------------------------
# Scene builder
# --------------------------------------------------------------------------------------------------------------------

CAR_COLORS = [(200, 200, 205), (30, 30, 35), (140, 145, 150), (160, 25, 30), (235, 235, 235), (90, 95, 100),
              (40, 80, 60), (190, 170, 120), (110, 20, 25)]  # fmt: skip
BUILDING_COLORS = [(150, 140, 130), (180, 165, 140), (120, 110, 105), (200, 190, 170),
                   (170, 150, 120), (140, 120, 100)]  # fmt: skip
SHIRT_COLORS = [(200, 40, 40), (40, 60, 160), (230, 230, 230), (30, 30, 30), (60, 130, 70), (120, 60, 140),
                (150, 120, 90)]  # fmt: skip
HI_VIS = (205, 235, 40)  # riders wear high-visibility vests


class SceneBuilder:
    """Draws one random street scene as a list of `Shape` in painter's order (far/background first)."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, forced: Sequence[str] = ()):
        self.rng = rng
        self.width, self.height = width, height
        self.forced = set(forced)
        horizon = height * rng.uniform(0.36, 0.47)
        self.camera = Camera(
            focal=width * rng.uniform(0.95, 1.35), cx=width * rng.uniform(0.42, 0.58), horizon=horizon,
            width=width, height=height,
        )  # fmt: skip
        self.canvas = Canvas(rng, self.camera)
        self.background: list[Shape] = []
        self.sides: list[Shape] = []
        self.upright: list[tuple[float, list[Shape]]] = []  # (depth, shapes) sorted far to near later
        self.foreground: list[Shape] = []
        self.shadows: list[tuple[np.ndarray, float]] = []  # image-space ground polygons and their darkening
        # Street cross-section in metres, relative to the camera (X = 0).
        half_road = rng.uniform(3.5, 7.5)
        offset = rng.uniform(-0.45, 0.45) * half_road
        self.road_left, self.road_right = offset - half_road, offset + half_road
        self.walk_left = self.road_left - rng.uniform(2.0, 5.0)
        self.walk_right = self.road_right + rng.uniform(2.0, 5.0)
        self.terrain_left = rng.random() < 0.45 or "terrain" in self.forced
        self.terrain_right = rng.random() < 0.4
        self.verge_left = self.walk_left - (rng.uniform(3.0, 7.0) if self.terrain_left else 0.0)
        self.verge_right = self.walk_right + (rng.uniform(3.0, 7.0) if self.terrain_right else 0.0)
        self.skyline_z = rng.uniform(110, 250)  # the street ends at a row of buildings facing the camera

    # -- shape bookkeeping ------------------------------------------------------------------------------------------

    def _shape(self, label: str, points: np.ndarray, painter: Painter) -> Shape | None:
        polygon = clip_polygon(points, self.width, self.height)
        if len(polygon) < 3 or _polygon_area(polygon) < 0.5:
            return None
        return Shape(label, polygon, painter)

    def _add(self, layer: list[Shape], label: str, points: np.ndarray, painter: Painter) -> None:
        shape = self._shape(label, points, painter)
        if shape is not None:
            layer.append(shape)

    def _add_sprite(self, z: float, label: str, sprite: Sprite, grain: float = 0.04, extra: list[Shape] = ()) -> None:
        outline = sprite.outline()
        shapes = list(extra)
        if len(outline) >= 3:
            shape = self._shape(label, outline, sprite.painter(self.canvas, grain))
            if shape is not None:
                shapes.append(shape)
        if shapes:
            self.upright.append((z, shapes))

    def _ground_quad(self, x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
        return self.camera.project(np.array([[x0, 0, z0], [x1, 0, z0], [x1, 0, z1], [x0, 0, z1]]))

    def _side_quad(self, x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
        return self.camera.project(np.array([[x, y0, z0], [x, y1, z0], [x, y1, z1], [x, y0, z1]]))

    # -- the scene ---------------------------------------------------------------------------------------------------

    def build(self) -> list[Shape]:
        rng = self.rng
        self._sky()
        self._far_skyline()
        for side in (-1, 1):
            self._street_side(side)
        self._ground()
        wants = {name: name in self.forced for name in FORCED_CLASSES}
        self._trees(rng.integers(1, 6) + (2 if wants["vegetation"] else 0))
        self._poles(rng.integers(3, 9) + (1 if wants["pole"] else 0))
        n_signs = rng.integers(1, 4) + (1 if wants["traffic sign"] else 0)
        n_lights = rng.integers(0, 3) + (1 if wants["traffic light"] else 0)
        self._signs(n_signs)
        self._traffic_lights(n_lights)
        self._cars(rng.integers(1, 8) + (2 if wants["car"] else 0))
        if wants["truck"] or rng.random() < 0.4:
            self._truck()
        if wants["bus"] or rng.random() < 0.3:
            self._bus()
        if wants["train"] or rng.random() < 0.12:
            self._tram()
        self._people(rng.integers(2, 8) + (2 if wants["person"] else 0))
        n_cyclists = rng.integers(0, 3) + (1 if wants["rider"] or wants["bicycle"] else 0)
        for _ in range(n_cyclists):
            self._two_wheeler("bicycle", ridden=rng.random() < 0.6 or wants["rider"])
        if wants["bicycle"] or rng.random() < 0.4:
            self._two_wheeler("bicycle", ridden=False)
        if wants["motorcycle"] or rng.random() < 0.4:
            self._two_wheeler("motorcycle", ridden=rng.random() < 0.7)
        if rng.random() < 0.5:
            self._ego_vehicle()
        ordered = sorted(self.upright, key=lambda item: -item[0])
        return self.background + self.sides + [s for _, group in ordered for s in group] + self.foreground

    def _sky(self) -> None:
        rng, cam, canvas = self.rng, self.camera, self.canvas
        top = _jitter(rng, rng.choice([(60, 110, 190), (90, 135, 200), (70, 95, 150)]), 20)
        low = _jitter(rng, rng.choice([(180, 205, 230), (200, 215, 235), (170, 185, 205)]), 15)
        cloudiness = rng.uniform(0.0, 1.0)
        horizon = cam.horizon

        def paint(x0, y0, x1, y1):
            t = np.clip(canvas.ys[y0:y1, x0:x1] / max(horizon, 1.0), 0, 1)[..., None] ** 0.8
            sky = top * (1 - t) + low * t
            clouds = np.clip(canvas.coarse[y0:y1, x0:x1] * 0.7 + canvas.mid[y0:y1, x0:x1] * 0.3 - 0.3, 0, 1)
            sky = sky + (cloudiness * clouds)[..., None] * (np.float32(235) - sky)
            return sky * (1 + 0.01 * canvas.fine[y0:y1, x0:x1, None])

        w, h = self.width, self.height
        self._add(self.background, "sky", np.array([[0, 0], [w - 1, 0], [w - 1, horizon + 2], [0, horizon + 2]]), paint)

    def _facade_painter(self, color, coordinates: Callable, along0: float, floor: float, bay: float) -> Painter:
        """Windows on a facade whose (along, height) coordinates at each pixel come from `coordinates(box)`."""
        rng, canvas = self.rng, self.canvas
        glass = _jitter(rng, rng.choice([(50, 60, 75), (80, 95, 110), (35, 40, 45), (120, 135, 150)]), 12)
        frame = _mix(color, (235, 235, 230), rng.uniform(0.0, 0.5))
        win_w, win_h = rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.65)
        shop = rng.random() < 0.5
        shop_color = _jitter(rng, (60, 55, 50), 25)
        grain = rng.uniform(0.03, 0.09)

        def paint(x0, y0, x1, y1):
            along, up = coordinates((x0, y0, x1, y1))
            patch = canvas.textured(color, (x0, y0, x1, y1), grain, 0.06, 0.05)
            u = _frac((along - along0) / bay)
            v = _frac(up / floor)
            window = (np.abs(u - 0.5) < win_w / 2) & (np.abs(v - 0.5) < win_h / 2) & (up > floor)
            sill = (np.abs(u - 0.5) < win_w / 2 + 0.06) & (np.abs(v - 0.5 + win_h / 2 + 0.03) < 0.04) & (up > floor)
            patch[sill] = frame
            reflect = (0.6 + 0.4 * v)[..., None]
            patch = np.where(window[..., None], glass * reflect * (1 + 0.05 * canvas.fine[y0:y1, x0:x1, None]), patch)
            if shop:
                ground_floor = (up < floor * 0.85) & (up > 0.3) & (np.abs(u - 0.5) < 0.42)
                patch[ground_floor] = shop_color * (0.8 + 0.4 * v[ground_floor, None])
            return patch

        return paint

    def _far_skyline(self) -> None:
        rng, cam = self.rng, self.camera
        z = self.skyline_z
        span = (self.width / cam.focal) * z  # metres across the whole image at that depth
        x = -cam.cx / cam.focal * z - 5
        while x < span:
            width = rng.uniform(8, 30)
            height = rng.uniform(6, 40)
            if rng.random() < 0.2:
                self._tree_crown(self.background, x + width / 2, z - 1, rng.uniform(4, 8), rng.uniform(3, 8))
            else:
                color = _jitter(rng, BUILDING_COLORS[rng.integers(len(BUILDING_COLORS))], 15) * 0.9
                quad = cam.project(np.array([[x, 0, z], [x + width, 0, z], [x + width, height, z], [x, height, z]]))
                coords = lambda box, zz=z: self.canvas.front_coordinates(box, zz)  # noqa: E731
                self._add(self.background, "building", quad,
                          self._facade_painter(color, coords, x, rng.uniform(3, 3.6), rng.uniform(2, 3.5)))
            x += width

    def _street_side(self, side: int) -> None:
        """A continuous row of facades along one side, some fronted by a wall, fence or hedge; far to near."""
        rng = self.rng
        x_line = self.verge_left if side < 0 else self.verge_right
        has_terrain = self.terrain_left if side < 0 else self.terrain_right
        walk_edge = self.walk_left if side < 0 else self.walk_right
        front_line = walk_edge if has_terrain else x_line - side * 0.2
        segments = []
        z = Z_NEAR
        while z < self.skyline_z - 5:
            length = rng.uniform(8, 28)
            segments.append((z, min(z + length, self.skyline_z)))
            z += length
        kinds = list(rng.choice(["none", "wall", "fence", "vegetation"], size=len(segments),
                                p=[0.55, 0.15, 0.15, 0.15]))
        for forced, forced_side in (("wall", -1), ("fence", 1)):
            if forced in self.forced and forced not in kinds[:3] and side == forced_side:
                kinds[rng.integers(0, min(3, len(kinds)))] = forced
        for (z0, z1), kind in sorted(zip(segments, kinds), key=lambda item: -item[0][0]):
            self._facade(side, x_line, z0, z1)
            if kind == "wall":
                self._wall(side, front_line, z0, z1)
            elif kind == "fence":
                self._fence(side, front_line, z0, z1)
            elif kind == "vegetation":
                self._hedge(side, front_line, z0, z1)
            if rng.random() < 0.4:
                # Sun from the side: the facade's shadow falls across the sidewalk and part of the road.
                reach = rng.uniform(2, 9)
                quad = self._ground_quad(x_line, x_line - side * reach, max(z0, Z_NEAR), z1)
                self.shadows.append((quad, rng.uniform(0.45, 0.75)))

    def _facade(self, side: int, x_line: float, z0: float, z1: float) -> None:
        rng = self.rng
        height = rng.uniform(7, 30)
        color = _jitter(rng, BUILDING_COLORS[rng.integers(len(BUILDING_COLORS))], 20)
        quad = self._side_quad(x_line, z0, z1, 0, height)
        coords = lambda box, xx=x_line: self.canvas.wall_coordinates(box, xx)  # noqa: E731
        self._add(self.sides, "building", quad,
                  self._facade_painter(color, coords, z0, rng.uniform(2.9, 3.6), rng.uniform(1.6, 3.2)))

    def _wall(self, side: int, x_line: float, z0: float, z1: float) -> None:
        rng, canvas = self.rng, self.canvas
        height = rng.uniform(1.0, 3.0)
        color = _jitter(rng, rng.choice([(150, 70, 50), (130, 60, 45), (165, 85, 60)]), 12)  # brick
        block = rng.uniform(0.3, 0.9)

        def paint(x0, y0, x1, y1):
            _, up = canvas.wall_coordinates((x0, y0, x1, y1), x_line)
            patch = canvas.textured(color, (x0, y0, x1, y1), 0.05, 0.08, 0.06)
            joints = np.abs(_frac(up / block) - 0.5) > 0.46
            patch[joints] *= 0.8
            return patch

        self._add(self.sides, "wall", self._side_quad(x_line - side * 0.2, z0, z1, 0, height), paint)

    def _fence(self, side: int, x_line: float, z0: float, z1: float) -> None:
        # One look, as walls are brick: a white-painted palisade (slats, two rails, a post every few metres) in front
        # of a dark gap. A fine wire mesh in random colours was the weakest class (IoU 0.11, read as facade).
        rng, canvas = self.rng, self.canvas
        height = rng.uniform(1.0, 2.0)
        paint_colour = _jitter(rng, (225, 225, 215), 12)
        gap = _jitter(rng, (55, 60, 58), 10)
        pitch, post = rng.uniform(0.18, 0.28), rng.uniform(2.0, 3.0)

        def paint(x0, y0, x1, y1):
            along, up = canvas.wall_coordinates((x0, y0, x1, y1), x_line)
            slats = np.abs(_frac(along / pitch) - 0.5) < 0.3
            posts = np.abs(_frac(along / post) - 0.5) > 0.45
            rails = (np.abs(up - 0.8 * height) < 0.05) | (np.abs(up - 0.2) < 0.05)
            solid = slats | posts | rails
            patch = np.where(solid[..., None], paint_colour, gap * (0.8 + 0.2 * canvas.mid[y0:y1, x0:x1, None]))
            return patch * (1 + 0.05 * canvas.fine[y0:y1, x0:x1, None])

        self._add(self.sides, "fence", self._side_quad(x_line - side * 0.3, z0, z1, 0, height), paint)

    def _hedge(self, side: int, x_line: float, z0: float, z1: float) -> None:
        rng = self.rng
        height = rng.uniform(0.8, 2.5)
        zs = np.linspace(z0, z1, 12)
        tops = height + rng.uniform(-0.25, 0.25, len(zs))
        points = [[x_line, 0, z0]] + [[x_line, t, zz] for zz, t in zip(zs, tops)] + [[x_line, 0, z1]]
        self._add(self.sides, "vegetation", self.camera.project(np.array(points)), self._leaves_painter())

    def _leaves_painter(self) -> Painter:
        rng, canvas = self.rng, self.canvas
        color = _jitter(rng, rng.choice([(70, 110, 40), (50, 85, 35), (95, 125, 50), (60, 95, 60)]), 15)

        def paint(x0, y0, x1, y1):
            patch = canvas.textured(color, (x0, y0, x1, y1), 0.22, 0.25, 0.1, tint=0.3)
            return patch

        return paint

    def _ground(self) -> None:
        rng, canvas = self.rng, self.canvas
        asphalt = _jitter(rng, rng.choice([(95, 90, 95), (110, 108, 112), (80, 78, 82), (125, 120, 125)]), 10)
        marks = _jitter(rng, (225, 225, 215), 10)
        lane = rng.uniform(2.8, 3.6)
        dash = rng.uniform(6, 12)
        center = (self.road_left + self.road_right) / 2
        zebra_z = rng.uniform(8, 25) if rng.random() < 0.25 else None
        road_left, road_right = self.road_left, self.road_right

        def road(x0, y0, x1, y1):
            x_world, z = canvas.ground_coordinates((x0, y0, x1, y1))
            patch = canvas.textured(asphalt, (x0, y0, x1, y1), 0.07, 0.05, 0.06)
            width = 0.08 + 0.004 * z  # keeps far markings from vanishing below a pixel
            lanes = np.abs(_frac((x_world - center) / lane + 0.5) - 0.5) * lane < width
            dashed = lanes & (_frac(z / dash) < 0.45)
            edges = (np.abs(x_world - road_left - 0.3) < width) | (np.abs(x_world - road_right + 0.3) < width)
            paint = dashed | edges
            if zebra_z is not None:
                paint |= (np.abs(z - zebra_z) < 2.0) & (_frac(x_world / 1.0) < 0.5)
            patch[paint] = marks * (0.9 + 0.1 * canvas.fine[y0:y1, x0:x1][paint, None])
            return patch

        self._add(self.background, "road", self._ground_quad(road_left, road_right, Z_NEAR, self.skyline_z), road)
        paving = _jitter(rng, rng.choice([(170, 130, 125), (185, 150, 140), (160, 120, 120), (190, 160, 150)]), 12)
        curb = _mix(paving, (200, 200, 200), 0.5)
        tile = rng.uniform(0.25, 0.6)

        def sidewalk_painter(edge: float) -> Painter:
            def paint(x0, y0, x1, y1):
                x_world, z = canvas.ground_coordinates((x0, y0, x1, y1))
                patch = canvas.textured(paving, (x0, y0, x1, y1), 0.06, 0.07, 0.05)
                grout = (np.abs(_frac(x_world / tile) - 0.5) > 0.45) | (np.abs(_frac(z / tile) - 0.5) > 0.45)
                patch[grout & (z < 40)] *= 0.82
                patch[np.abs(x_world - edge) < 0.18] = curb
                return patch

            return paint

        self._add(self.background, "sidewalk", self._ground_quad(self.walk_left, road_left, Z_NEAR, self.skyline_z),
                  sidewalk_painter(road_left))  # fmt: skip
        self._add(self.background, "sidewalk", self._ground_quad(road_right, self.walk_right, Z_NEAR, self.skyline_z),
                  sidewalk_painter(road_right))  # fmt: skip
        grass = _jitter(rng, rng.choice([(135, 160, 80), (150, 150, 90), (120, 145, 70), (160, 140, 95)]), 12)

        def terrain(x0, y0, x1, y1):
            return canvas.textured(grass, (x0, y0, x1, y1), 0.12, 0.18, 0.1, tint=0.15)

        if self.terrain_left:
            quad = self._ground_quad(self.verge_left, self.walk_left, Z_NEAR, self.skyline_z)
            self._add(self.background, "terrain", quad, terrain)
        if self.terrain_right:
            quad = self._ground_quad(self.walk_right, self.verge_right, Z_NEAR, self.skyline_z)
            self._add(self.background, "terrain", quad, terrain)

    # -- upright objects ---------------------------------------------------------------------------------------------

    def _sidewalk_x(self, side: int | None = None) -> float:
        side = side if side is not None else (-1 if self.rng.random() < 0.5 else 1)
        if side < 0:
            return self.rng.uniform(self.walk_left + 0.3, self.road_left - 0.3)
        return self.rng.uniform(self.road_right + 0.3, self.walk_right - 0.3)

    def _depth(self, near: float = 5.0, far: float = 80.0, x_world: float = 0.0) -> float:
        """Random depth, log-uniform (as many far objects as near ones), far enough for X = x_world to be in view."""
        cam = self.camera
        half_view = cam.cx if x_world < 0 else cam.width - cam.cx
        near = max(near, abs(x_world) * cam.focal / (0.9 * half_view))
        far = max(far, near * 1.5)
        return float(np.exp(self.rng.uniform(np.log(near), np.log(far))))

    def _tree_crown(self, layer, x_world, z, radius, center_height) -> None:
        rng = self.rng
        angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        radii = radius * rng.uniform(0.75, 1.15, len(angles))
        pts = np.stack([x_world + radii * np.cos(angles), center_height + 0.8 * radii * np.sin(angles),
                        np.full_like(angles, z)], axis=1)  # fmt: skip
        self._add(layer, "vegetation", self.camera.project(pts), self._leaves_painter())

    def _trees(self, count: int) -> None:
        rng = self.rng
        for _ in range(count):
            side = -1 if rng.random() < 0.5 else 1
            x = (self.walk_left + 0.6 if side < 0 else self.walk_right - 0.6) + rng.uniform(-0.4, 0.4)
            z = self._depth(6, 90, x)
            crown, trunk_top = rng.uniform(1.2, 3.2), rng.uniform(2.0, 4.5)
            trunk_color = _jitter(self.rng, (85, 65, 50), 12)
            sprite = Sprite(self.camera, x, z, 0.2, trunk_top + 0.3, trunk_color)
            sprite.rect(-0.13, 0, 0.13, trunk_top + 0.3, trunk_color)
            shapes: list[Shape] = []
            outline = sprite.outline()
            trunk = self._shape("vegetation", outline, sprite.painter(self.canvas, 0.12)) if len(outline) >= 3 else None
            if trunk is not None:
                shapes.append(trunk)
            self._tree_crown(shapes, x, z, crown, trunk_top + crown * 0.7)
            if shapes:
                self.upright.append((z, shapes))

    def _poles(self, count: int) -> None:
        rng = self.rng
        metal = _jitter(rng, (170, 172, 178), 12)  # galvanised steel
        for _ in range(count):
            side = -1 if rng.random() < 0.5 else 1
            x = (self.road_left - 0.5 if side < 0 else self.road_right + 0.5) + rng.uniform(-0.3, 0.3)
            z = self._depth(5, 70, x)
            height, width = rng.uniform(3.5, 9), rng.uniform(0.08, 0.25)
            sprite = Sprite(self.camera, x, z, 1.8, height + 0.2, metal)
            sprite.rect(-width / 2, 0, width / 2, height, metal)
            sprite.rect(-width / 2, 0, -width / 6, height, metal * 1.15, shape=False)  # lit side of the cylinder
            if rng.random() < 0.4:  # street lamp arm reaching over the road
                reach = -side * rng.uniform(0.8, 1.6)
                sprite.line((0, height), (reach, height + 0.15), max(width * 0.6, 0.05), metal)
            self._add_sprite(z, "pole", sprite, 0.05)

    def _pole_sprite(self, x: float, z: float, top: float, metal) -> Sprite:
        sprite = Sprite(self.camera, x, z, 0.1, top, metal)
        sprite.rect(-0.05, 0, 0.05, top, metal)
        return sprite

    def _signs(self, count: int) -> None:
        rng = self.rng
        for _ in range(count):
            x = self._sidewalk_x()
            z = self._depth(5, 45, x)
            mount = rng.uniform(1.8, 2.8)
            metal = _jitter(rng, (170, 172, 178), 12)
            pole = self._pole_sprite(x, z + 0.05, mount, metal)
            pole_shape = self._shape("pole", pole.outline(), pole.painter(self.canvas)) if pole.outline().size else None
            kind = rng.integers(4)
            size = rng.uniform(0.5, 0.9)
            back = (230, 230, 230)
            sprite = Sprite(self.camera, x, z, size / 2 + 0.05, mount + size + 0.1, back)
            center = mount + size / 2
            if kind == 0:  # prohibition: red ring on white
                sprite.circle(0, center, size / 2, (200, 30, 35))
                sprite.circle(0, center, size * 0.36, (235, 235, 235), shape=False)
            elif kind == 1:  # mandatory: blue disc with white arrow
                sprite.circle(0, center, size / 2, (30, 70, 170))
                sprite.line((0, center - size * 0.3), (0, center + size * 0.3), size * 0.12, (240, 240, 240), False)
            elif kind == 2:  # warning: red-bordered triangle
                tri = [(-size / 2, mount), (size / 2, mount), (0, mount + size)]
                sprite.poly(tri, (200, 30, 35))
                low = mount + size * 0.1
                inner = [(-size * 0.33, low), (size * 0.33, low), (0, mount + size * 0.75)]
                sprite.poly(inner, (240, 240, 235), shape=False)
            else:  # information: blue or yellow rectangle
                color = (30, 70, 170) if rng.random() < 0.5 else (235, 190, 20)
                sprite.rect(-size / 2, mount, size / 2, mount + size * 0.8, color)
                sprite.rect(-size * 0.3, mount + size * 0.3, size * 0.3, mount + size * 0.5, (245, 245, 245), False)
            self._add_sprite(z, "traffic sign", sprite, 0.03, extra=[pole_shape] if pole_shape else [])

    def _traffic_lights(self, count: int) -> None:
        rng = self.rng
        for _ in range(count):
            side = -1 if rng.random() < 0.5 else 1
            x = (self.road_left - 0.4 if side < 0 else self.road_right + 0.4)
            z = self._depth(7, 55, x)
            mount = rng.uniform(2.2, 3.5)
            metal = _jitter(rng, (170, 172, 178), 12)
            pole = self._pole_sprite(x, z + 0.05, mount, metal)
            pole_shape = self._shape("pole", pole.outline(), pole.painter(self.canvas)) if pole.outline().size else None
            housing = _jitter(rng, rng.choice([(30, 30, 30), (40, 45, 40), (150, 120, 20)]), 8)
            sprite = Sprite(self.camera, x, z, 0.25, mount + 1.05, housing)
            sprite.rect(-0.18, mount, 0.18, mount + 0.95, housing)
            lit = rng.integers(3)
            for k, color in enumerate([(40, 220, 90), (250, 180, 30), (240, 40, 30)]):
                on = k == lit
                shade = color if on else tuple(0.25 * c + 20 for c in color)
                sprite.circle(0, mount + 0.17 + 0.3 * k, 0.11, shade, shape=False)
            self._add_sprite(z, "traffic light", sprite, 0.03, extra=[pole_shape] if pole_shape else [])

    def _road_x(self, margin: float = 1.2) -> float:
        return self.rng.uniform(self.road_left + margin, self.road_right - margin)

    def _cars(self, count: int) -> None:
        rng = self.rng
        for _ in range(count):
            color = _jitter(rng, CAR_COLORS[rng.integers(len(CAR_COLORS))], 15)
            if rng.random() < 0.35:  # parked along the curb, seen from the side
                side = -1 if rng.random() < 0.5 else 1
                x = (self.road_left + 1.0 if side < 0 else self.road_right - 1.0)
                self._car_side(x, self._depth(6, 60, x), color)
            else:
                x = self._road_x()
                self._car_rear(x, self._depth(5, 120, x), color)

    def _vehicle_shadow(self, x: float, z: float, half_width: float) -> None:
        quad = self._ground_quad(x - half_width * 1.1, x + half_width * 1.1, z - 0.2, z + 1.5)
        self.shadows.append((quad, 0.55))

    def _wheel(self, sprite: Sprite, u: float, radius: float) -> None:
        sprite.circle(u, radius, radius, (25, 25, 25))
        sprite.circle(u, radius, radius * 0.5, (120, 120, 125), shape=False)

    def _car_rear(self, x: float, z: float, color) -> None:
        rng = self.rng
        width, height = rng.uniform(1.65, 1.95), rng.uniform(1.35, 1.65)
        sprite = Sprite(self.camera, x, z, width / 2 + 0.1, height + 0.1, color)
        w = width / 2
        sprite.rect(-w, 0, -w + 0.25, 0.35, (20, 20, 20))
        sprite.rect(w - 0.25, 0, w, 0.35, (20, 20, 20))
        body = [(-w, 0.22), (w, 0.22), (w, height * 0.6), (w * 0.85, height * 0.66), (-w * 0.85, height * 0.66),
                (-w, height * 0.6)]  # fmt: skip
        sprite.poly(body, color)
        cabin = [(-w * 0.86, height * 0.64), (w * 0.86, height * 0.64), (w * 0.7, height), (-w * 0.7, height)]
        sprite.poly(cabin, color)
        glass = [(-w * 0.76, height * 0.68), (w * 0.76, height * 0.68), (w * 0.64, height * 0.95),
                 (-w * 0.64, height * 0.95)]  # fmt: skip
        sprite.poly(glass, _jitter(rng, (40, 50, 60), 10), shape=False)
        light = (210, 30, 30) if rng.random() < 0.7 else (240, 240, 220)  # tail or head lights
        sprite.rect(-w * 0.95, height * 0.45, -w * 0.65, height * 0.55, light, False)
        sprite.rect(w * 0.65, height * 0.45, w * 0.95, height * 0.55, light, False)
        sprite.rect(-w, 0.22, w, 0.32, color * 0.5, False)  # bumper
        sprite.rect(-0.25, 0.35, 0.25, 0.47, (235, 235, 235), False)  # number plate
        self._vehicle_shadow(x, z, w)
        self._add_sprite(z, "car", sprite)

    def _car_side(self, x: float, z: float, color) -> None:
        rng = self.rng
        length, height = rng.uniform(3.8, 4.8), rng.uniform(1.35, 1.6)
        half = length / 2
        sprite = Sprite(self.camera, x, z, half + 0.1, height + 0.1, color)
        body = [(-half, 0.3), (half, 0.3), (half, 0.85), (half * 0.55, 0.95), (half * 0.3, height),
                (-half * 0.45, height), (-half * 0.8, 0.95), (-half, 0.85)]  # fmt: skip
        sprite.poly(body, color)
        glass = [(half * 0.45, 0.97), (half * 0.25, height * 0.95), (-half * 0.4, height * 0.95), (-half * 0.68, 0.97)]
        sprite.poly(glass, _jitter(rng, (45, 55, 65), 10), shape=False)
        sprite.line((-0.02, 0.97), (-0.02, height * 0.95), 0.06, color, shape=False)
        for u in (-half * 0.62, half * 0.62):
            self._wheel(sprite, u, 0.32)
        self._add_sprite(z, "car", sprite)

    def _truck(self) -> None:
        rng = self.rng
        cargo = _jitter(rng, rng.choice([(60, 90, 150), (45, 75, 140)]), 12)  # the haulier's blue livery
        cab = _jitter(rng, rng.choice([(220, 220, 220), (30, 60, 130)]), 15)
        if rng.random() < 0.5:  # from behind: a tall box with doors
            x = self._road_x(1.5)
            z = self._depth(8, 70, x)
            width, height = rng.uniform(2.3, 2.55), rng.uniform(3.0, 3.9)
            w = width / 2
            sprite = Sprite(self.camera, x, z, w + 0.1, height + 0.1, cargo)
            for u in (-w * 0.8, w * 0.8):
                sprite.rect(u - 0.2, 0, u + 0.2, 0.55, (25, 25, 25))
            sprite.rect(-w, 0.45, w, height, cargo)
            for u in np.arange(-w + 0.2, w, 0.4):  # corrugated doors
                sprite.line((u, 0.6), (u, height - 0.1), 0.05, cargo * 0.8, shape=False)
            sprite.line((0, 0.6), (0, height - 0.1), 0.04, cargo * 0.6, shape=False)
            for v in (0.9, height - 0.3):
                sprite.line((-w, v), (w, v), 0.05, cargo * 0.7, shape=False)
            sprite.rect(-w, 0.45, w, 0.6, (40, 40, 40), shape=False)
            sprite.rect(-w * 0.95, 0.65, -w * 0.75, 0.8, (210, 30, 30), shape=False)
            sprite.rect(w * 0.75, 0.65, w * 0.95, 0.8, (210, 30, 30), shape=False)
            self._vehicle_shadow(x, z, w)
        else:  # from the side: cab and cargo box
            side = -1 if rng.random() < 0.5 else 1
            x = (self.road_left + 1.4 if side < 0 else self.road_right - 1.4)
            z = self._depth(8, 70, x)
            length, height = rng.uniform(6.5, 9.0), rng.uniform(3.0, 3.8)
            half = length / 2
            sprite = Sprite(self.camera, x, z, half + 0.1, height + 0.1, cargo)
            front = -side  # the cab points away from the curb's near end
            cab_u0, cab_u1 = sorted((front * half, front * (half - 2.0)))
            sprite.rect(cab_u0, 0.45, cab_u1, 2.8, cab)
            win_u0, win_u1 = sorted((front * (half - 0.1), front * (half - 1.0)))
            sprite.rect(win_u0, 1.7, win_u1, 2.55, (45, 55, 65), shape=False)
            box_u0, box_u1 = sorted((front * (half - 2.1), -front * half))
            sprite.rect(box_u0, 0.5, box_u1, height, cargo)
            for u in np.arange(box_u0 + 0.3, box_u1, 0.45):  # corrugated box sides
                sprite.line((u, 0.6), (u, height - 0.1), 0.06, cargo * 0.75, shape=False)
            sprite.rect(-half, 0.45, half, 0.6, (40, 40, 40), shape=False)
            for u in (front * (half - 1.2), -front * (half - 1.5), -front * (half - 2.6)):
                self._wheel(sprite, u, 0.5)
        self._add_sprite(z, "truck", sprite)

    def _bus(self) -> None:
        rng = self.rng
        paint = _jitter(rng, rng.choice([(230, 190, 30), (240, 150, 30)]), 12)  # the operator's yellow/orange livery
        glass = _jitter(rng, (35, 45, 55), 8)
        if rng.random() < 0.5:
            x = self._road_x(1.5)
            z = self._depth(8, 80, x)
            w, height = rng.uniform(1.22, 1.28), rng.uniform(2.9, 3.2)
            sprite = Sprite(self.camera, x, z, w + 0.1, height + 0.1, paint)
            for u in (-w * 0.8, w * 0.8):
                sprite.rect(u - 0.2, 0, u + 0.2, 0.5, (25, 25, 25))
            body = [(-w, 0.3), (w, 0.3), (w, height - 0.2), (w - 0.2, height), (-w + 0.2, height), (-w, height - 0.2)]
            sprite.poly(body, paint)
            sprite.rect(-w * 0.85, height * 0.55, w * 0.85, height * 0.92, glass, shape=False)
            sprite.rect(-w * 0.5, height * 0.93, w * 0.5, height * 0.98, (250, 160, 20), shape=False)  # route display
            sprite.rect(-w * 0.95, 0.6, -w * 0.7, 0.8, (230, 230, 210), shape=False)
            sprite.rect(w * 0.7, 0.6, w * 0.95, 0.8, (230, 230, 210), shape=False)
            self._vehicle_shadow(x, z, w)
        else:
            side = -1 if rng.random() < 0.5 else 1
            x = (self.road_left + 1.4 if side < 0 else self.road_right - 1.4)
            z = self._depth(8, 80, x)
            half, height = rng.uniform(5.5, 6.2), rng.uniform(2.9, 3.2)
            sprite = Sprite(self.camera, x, z, half + 0.1, height + 0.1, paint)
            body = [(-half, 0.3), (half, 0.3), (half, height - 0.25), (half - 0.25, height), (-half + 0.25, height),
                    (-half, height - 0.25)]  # fmt: skip
            sprite.poly(body, paint)
            sprite.rect(-half + 0.3, 1.3, half - 0.3, height - 0.35, glass, shape=False)
            for k in range(int(2 * half / 1.6)):
                u = -half + 0.3 + 1.6 * (k + 1)
                if u < half - 0.3:
                    sprite.line((u, 1.3), (u, height - 0.35), 0.08, paint, shape=False)
            for u in (-half * 0.6, half * 0.7):
                self._wheel(sprite, u, 0.48)
        self._add_sprite(z, "bus", sprite)

    def _tram(self) -> None:
        rng, cam = self.rng, self.camera
        body = _jitter(rng, rng.choice([(40, 140, 150), (30, 115, 135)]), 10)  # the tram operator's teal livery
        stripe = _jitter(rng, rng.choice([(235, 230, 210), (30, 30, 30)]), 10)
        glass = _jitter(rng, (40, 50, 60), 8)
        crossing = rng.random() < 0.5
        if crossing:  # passing across the street at an intersection: long side with segments
            half, x = rng.uniform(12, 18), rng.uniform(-4, 4)
            z = self._depth(12, 60, x)
            track = cam.project(np.array([[-80, 0, z - 0.8], [80, 0, z - 0.8], [80, 0, z + 0.8], [-80, 0, z + 0.8]]))
        else:  # ahead in the street, seen from behind
            half, x = 1.2, self._road_x(1.5)
            z = self._depth(10, 70, x)
            track = self._ground_quad(x - 0.75, x + 0.75, Z_NEAR, self.skyline_z)
        self._add(self.background, "rail track", track, self._rails_painter(crossing, z if crossing else x))
        height = rng.uniform(3.2, 3.6)
        sprite = Sprite(cam, x, z, half + 0.1, height + 0.8, body)
        sprite.poly([(-half, 0.2), (half, 0.2), (half, height - 0.2), (half - 0.3, height), (-half + 0.3, height),
                     (-half, height - 0.2)], body)  # fmt: skip
        sprite.rect(-half, 0.9, half, 1.2, stripe, shape=False)
        if crossing:
            sprite.rect(-half + 0.2, 1.5, half - 0.2, height - 0.45, glass, shape=False)
            for k in range(1, 4):  # articulations and pillars
                u = -half + 2 * half * k / 4
                sprite.line((u, 0.2), (u, height), 0.25, stripe, shape=False)
            for k in range(int(2 * half / 1.4)):
                u = -half + 1.4 * (k + 1)
                sprite.line((u, 1.5), (u, height - 0.45), 0.08, body, shape=False)
        else:
            sprite.rect(-half * 0.85, 1.6, half * 0.85, height - 0.4, glass, shape=False)
        sprite.line((-0.3, height), (0.2, height + 0.6), 0.04, (60, 60, 60))  # pantograph
        sprite.line((0.2, height + 0.6), (-0.4, height + 0.6), 0.04, (60, 60, 60))
        self._add_sprite(z, "train", sprite)

    def _rails_painter(self, crossing: bool, where: float) -> Painter:
        canvas = self.canvas
        bed = _jitter(self.rng, (110, 105, 100), 10)

        def paint(x0, y0, x1, y1):
            x_world, z = canvas.ground_coordinates((x0, y0, x1, y1))
            patch = canvas.textured(bed, (x0, y0, x1, y1), 0.12, 0.1)
            across = (z - where) if crossing else (x_world - where)
            rails = np.abs(np.abs(across) - 0.72) < 0.05 + (0.004 * z if not crossing else 0.02)
            patch[rails] = (190, 190, 195)
            return patch

        return paint

    def _person_sprite(self, x: float, z: float, riding: bool, helmet: bool = False) -> Sprite:
        rng = self.rng
        height = rng.uniform(1.55, 1.95)
        skin = _jitter(rng, rng.choice([(225, 185, 160), (170, 120, 90), (110, 75, 55)]), 10)
        shirt = _jitter(rng, HI_VIS if riding else SHIRT_COLORS[rng.integers(len(SHIRT_COLORS))], 15)
        pants = _jitter(rng, rng.choice([(40, 45, 70), (30, 30, 30), (120, 110, 90), (70, 70, 75)]), 12)
        s = height / 1.75
        seat = 0.95 if riding else 0.0  # riders sit on the bike; their hips are ~0.95 m above ground
        sprite = Sprite(self.camera, x, z, 0.45 * s + 0.1, (seat + (0.85 if riding else 1.75)) * s + 0.2, shirt)
        hip = seat + (0.0 if riding else 0.88 * s)
        shoulder = hip + 0.55 * s
        lean = 0.12 * s if riding else 0.0
        if riding:  # thighs forward, shins down to the pedals
            sprite.line((0, hip), (0.3 * s, hip + 0.05), 0.14 * s, pants)
            sprite.line((0.3 * s, hip + 0.05), (0.25 * s, 0.35), 0.12 * s, pants)
            sprite.line((0, hip), (0.22 * s, 0.45), 0.12 * s, pants)
        else:
            stride = rng.uniform(0.0, 0.22) * s
            sprite.line((-0.07 * s, hip), (-0.07 * s - stride, 0.04), 0.13 * s, pants)
            sprite.line((0.07 * s, hip), (0.07 * s + stride, 0.04), 0.13 * s, pants)
            sprite.rect(-0.07 * s - stride - 0.07, 0, -0.07 * s - stride + 0.08, 0.06, (30, 25, 25))
            sprite.rect(0.07 * s + stride - 0.08, 0, 0.07 * s + stride + 0.07, 0.06, (30, 25, 25))
        torso = [(-0.17 * s, hip), (0.17 * s, hip), (0.2 * s + lean, shoulder), (-0.2 * s + lean, shoulder)]
        sprite.poly(torso, shirt)
        swing = rng.uniform(-0.15, 0.15) * s
        hand_u = 0.45 * s if riding else 0.22 * s + swing
        sprite.line((0.17 * s + lean, shoulder - 0.05), (hand_u, shoulder - 0.5 * s), 0.09 * s, shirt)
        sprite.line((-0.17 * s + lean, shoulder - 0.05), (-0.22 * s - swing if not riding else 0.4 * s,
                                                           shoulder - 0.5 * s), 0.09 * s, shirt)  # fmt: skip
        sprite.line((lean, shoulder), (lean, shoulder + 0.06 * s), 0.08 * s, skin)  # neck
        head_v = shoulder + 0.15 * s
        sprite.circle(lean, head_v, 0.11 * s, skin)
        cap = (30, 30, 30) if helmet else _jitter(rng, rng.choice([(40, 30, 20), (90, 60, 30), (20, 20, 20)]), 10)
        sprite.poly([(lean - 0.115 * s, head_v), (lean + 0.115 * s, head_v), (lean + 0.09 * s, head_v + 0.11 * s),
                     (lean - 0.09 * s, head_v + 0.11 * s)], cap, shape=helmet)  # fmt: skip
        if rng.random() < 0.3 and not riding:  # bag
            sprite.rect(0.17 * s, hip - 0.1, 0.3 * s, hip + 0.2, _jitter(rng, (60, 40, 30), 20))
        return sprite

    def _people(self, count: int) -> None:
        for _ in range(count):
            x = self._sidewalk_x()
            z = self._depth(5, 50, x)
            self._add_sprite(z, "person", self._person_sprite(x, z, riding=False), 0.05)
            if self.rng.random() < 0.3:  # someone walking alongside
                self._add_sprite(z + 0.3, "person", self._person_sprite(x + 0.6, z + 0.3, riding=False), 0.05)

    def _two_wheeler(self, kind: str, ridden: bool) -> None:
        rng = self.rng
        if ridden:
            side = -1 if rng.random() < 0.5 else 1
            x = (self.road_left + 0.8 if side < 0 else self.road_right - 0.8)
        else:
            x = self._sidewalk_x()
        z = self._depth(5, 45, x)
        facing = 1 if rng.random() < 0.5 else -1
        if kind == "bicycle":
            frame = _jitter(rng, rng.choice([(30, 150, 220), (20, 130, 200)]), 12)  # the city's bike-share cyan
            sprite = Sprite(self.camera, x, z, 0.95, 1.15, frame)
            r = 0.34
            for u in (-0.52, 0.52):
                sprite.circle(u, r, r, (25, 25, 25))
                sprite.circle(u, r, r * 0.82, (95, 100, 105), shape=False)  # spokes and what is seen through
                sprite.circle(u, r, r * 0.12, frame, shape=False)
            points = {"rear": (-0.52, r), "front": (0.52, r), "pedal": (0.0, r), "seat": (-0.15, 0.85),
                      "bar": (0.42, 0.95)}  # fmt: skip
            flip = lambda p: (facing * p[0], p[1])  # noqa: E731
            for a, b in (("rear", "pedal"), ("pedal", "seat"), ("seat", "rear"), ("pedal", "bar"), ("bar", "front"),
                         ("seat", "bar")):  # fmt: skip
                sprite.line(flip(points[a]), flip(points[b]), 0.045, frame)
            sprite.line(flip((-0.25, 0.88)), flip((-0.05, 0.88)), 0.06, (20, 20, 20))
            sprite.line(flip((0.35, 1.0)), flip((0.5, 1.0)), 0.04, (20, 20, 20))
        else:
            body = _jitter(rng, rng.choice([(140, 40, 150), (120, 30, 130)]), 12)  # purple: unlike any car
            sprite = Sprite(self.camera, x, z, 1.1, 1.3, body)
            for u in (-0.72, 0.72):
                sprite.circle(u, 0.31, 0.31, (20, 20, 20))
                sprite.circle(u, 0.31, 0.14, (150, 150, 155), shape=False)
            sprite.poly([(facing * -0.75, 0.55), (facing * 0.35, 0.5), (facing * 0.6, 0.9), (facing * 0.1, 0.95),
                         (facing * -0.55, 0.85)], body)  # fmt: skip
            sprite.rect(-0.35, 0.35, 0.25, 0.55, (90, 90, 95))  # engine
            sprite.line((facing * 0.6, 0.9), (facing * 0.55, 1.15), 0.05, (30, 30, 30))
        self._add_sprite(z, kind, sprite, 0.05)
        if ridden:
            rider = self._person_sprite(x - facing * 0.05, z - 0.05, riding=True, helmet=kind == "motorcycle")
            if facing < 0:  # mirror the rider to face the same way as the bike
                rider.mask = np.ascontiguousarray(rider.mask[:, ::-1])
                rider.rgb = np.ascontiguousarray(rider.rgb[:, ::-1])
                rider.ground_x = rider.mask.shape[1] - 1 - rider.ground_x
            self._add_sprite(z - 0.05, "rider", rider, 0.05)

    def _ego_vehicle(self) -> None:
        rng = self.rng
        w, h = self.width, self.height
        top = h * rng.uniform(0.9, 0.96)
        xs = np.linspace(0, w - 1, 12)
        ys = top + (h - top) * 0.6 * ((xs - w / 2) / (w / 2)) ** 2
        points = np.concatenate([[[0, h - 1]], np.stack([xs, ys], 1), [[w - 1, h - 1]]])
        color = _jitter(rng, CAR_COLORS[rng.integers(len(CAR_COLORS))], 10) * 0.7
        canvas = self.canvas

        def paint(x0, y0, x1, y1):
            return canvas.textured(color, (x0, y0, x1, y1), 0.03, 0.05, 0.1)

        self._add(self.foreground, "ego vehicle", points, paint)


# --------------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------------


def _object_index_map(shapes: Sequence[Shape], width: int, height: int) -> np.ndarray:
    """(H, W) int32 with 1 + the index of the shape owning each pixel (0 = none), drawn like cityscapesscripts."""
    index_image = Image.new("I", (width, height), 0)
    drawer = ImageDraw.Draw(index_image)
    for k, shape in enumerate(shapes, start=1):
        drawer.polygon([tuple(p) for p in shape.polygon.tolist()], fill=k)
    return np.asarray(index_image, dtype=np.int32)


def _label_table(shapes: Sequence[Shape]) -> np.ndarray:
    table = np.zeros(len(shapes) + 1, dtype=np.uint8)  # 0 = unlabeled
    for k, shape in enumerate(shapes, start=1):
        table[k] = LABELS_BY_NAME[shape.label].id
    return table


def _promote_hidden(
    shapes: list[Shape], index_map: np.ndarray, forced: set[str], min_pixels: int
) -> list[Shape] | None:
    """If a forced class ended up (almost) fully occluded, move its shapes to the top so it shows; None if all fine."""
    visible = np.bincount(_label_table(shapes)[index_map].ravel(), minlength=256)
    hidden = {name for name in forced if visible[LABELS_BY_NAME[name].id] < min_pixels}
    if not hidden:
        return None
    keep = [s for s in shapes if s.label not in hidden or s.label == "ego vehicle"]
    lifted = [s for s in shapes if s.label in hidden and s.label != "ego vehicle"]
    egos = [s for s in keep if s.label == "ego vehicle"]
    return [s for s in keep if s.label != "ego vehicle"] + lifted + egos


def _annotation_dict(shapes: Sequence[Shape], width: int, height: int) -> dict:
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


def _instance_ids(shapes: Sequence[Shape], index_map: np.ndarray) -> np.ndarray:
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


_GROUND_IDS = np.zeros(256, dtype=bool)
_GROUND_IDS[[LABELS_BY_NAME[n].id for n in ("road", "sidewalk", "terrain", "rail track")]] = True


def _finish_image(builder: SceneBuilder, image: np.ndarray, label_ids: np.ndarray) -> np.ndarray:
    """Cast shadows, global lighting, white balance, gamma, blur and sensor noise; returns uint8 RGB."""
    rng, canvas = builder.rng, builder.canvas
    height, width = label_ids.shape
    gain = 1.0 + rng.uniform(0.05, 0.25) * canvas.coarse  # large-scale light fall-off
    if builder.shadows:
        shade = np.ones((height, width), dtype=np.float32)
        for quad, factor in builder.shadows:
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
    required = set(forced) & set(FORCED_CLASSES)
    min_pixels = max(4, (height * width) // 8000)
    for _attempt in range(4):  # a forced object can still fall outside the view; then draw another street
        builder = SceneBuilder(rng, width, height, forced)
        shapes = builder.build()
        index_map = _object_index_map(shapes, width, height)
        promoted = _promote_hidden(shapes, index_map, required, min_pixels)
        if promoted is None:
            break
        shapes = promoted
        index_map = _object_index_map(shapes, width, height)
        if _promote_hidden(shapes, index_map, required, min_pixels) is None:
            break
    annotation = _annotation_dict(shapes, width, height)
    label_ids = rasterize_annotation(annotation, "ids")
    if not np.array_equal(label_ids, _label_table(shapes)[index_map]):  # pragma: no cover - rasteriser mismatch
        raise RuntimeError("object map and cityscapesscripts' label image disagree")
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
    image = _finish_image(builder, image, label_ids)
    return SyntheticScene(annotation, image, label_ids, _instance_ids(shapes, index_map), shapes)


# --------------------------------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    root: str
    split: str
    index: int
    count: int
    height: int
    width: int
    seed: int


def _split_code(split: str) -> int:
    return {"train": 1, "val": 2, "test": 3}[split]


def _forced_for(index: int, count: int) -> tuple[str, ...]:
    """Round-robin share of `FORCED_CLASSES` for image `index` of `count`, so every split holds all of them."""
    return tuple(name for k, name in enumerate(FORCED_CLASSES) if k % max(count, 1) == index % max(count, 1))


def image_stem(split: str, index: int) -> tuple[str, str]:
    """(city, '<city>_<seq:06d>_000019') of image `index` in `split`."""
    cities = SPLIT_CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{FRAME_NUMBER:06d}"


def _write_png(path: Path, array: np.ndarray) -> None:
    atomic_write_with(path, lambda temp: cv2.imwrite(str(temp), array, [cv2.IMWRITE_PNG_COMPRESSION, 1]))


def _generate(job: _Job) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng([job.seed, _split_code(job.split), job.index])
    scene = render_scene(rng, job.height, job.width, _forced_for(job.index, job.count))
    city, stem = image_stem(job.split, job.index)
    image_dir = Path(job.root, "leftImg8bit", job.split, city)
    label_dir = Path(job.root, "gtFine", job.split, city)
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    _write_png(image_dir / f"{stem}_leftImg8bit.png", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    base = label_dir / f"{stem}_gtFine"
    atomic_write_text(f"{base}_polygons.json", json.dumps(scene.annotation))
    _write_png(Path(f"{base}_labelIds.png"), scene.label_ids)
    _write_png(Path(f"{base}_instanceIds.png"), scene.instance_ids.astype(np.uint16))  # 16-bit like the official files
    color = colorize_label_ids(scene.label_ids)
    rgba = np.concatenate([color[..., ::-1], np.full(color.shape[:2] + (1,), 255, np.uint8)], axis=2)
    _write_png(Path(f"{base}_color.png"), rgba)
    return job.split, np.bincount(id_to_train_id[scene.label_ids].ravel(), minlength=256)[:19]


def make_synthetic_dataset(
    root: str | Path,
    num_train: int = 8,
    num_val: int = 4,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset in the Cityscapes layout and return its root.

    Images are independent functions of ``(seed, split, index)``, so the output does not depend on `workers`.

    Args:
        root: dataset folder (created; existing files with the same names are overwritten).
        num_train: images in ``train``.
        num_val: images in ``val``; every trainId class appears in it at least once when num_val >= 1.
        height: image height (the default 256x512 keeps Cityscapes' 1:2 aspect at 1/4 of its side, where poles are
            still 1-3 px wide, which a small HRNet can train on in minutes on a CPU).
        width: image width.
        seed: base random seed.
        workers: processes to use (1 = in this process).
        progress: show a tqdm bar.
    """
    if height < 32 or width < 64:
        raise ValueError(f"synthetic images must be at least 32x64 pixels, got {height}x{width}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [_Job(str(root), split, k, count, height, width, seed)
            for split, count in (("train", num_train), ("val", num_val)) for k in range(count)]  # fmt: skip
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            results = pool.imap_unordered(_generate, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
            results = list(_maybe_progress(results, len(jobs), progress))
    else:
        results = list(_maybe_progress(map(_generate, jobs), len(jobs), progress))
    return root


def _maybe_progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="synthetic", unit="img")


def class_pixel_counts(root: str | Path, split: str) -> np.ndarray:
    """(19,) int64 trainId pixel counts over the labelIds files of one split (handy to check class coverage)."""
    counts = np.zeros(19, dtype=np.int64)
    for path in sorted(Path(root, "gtFine", split).glob("*/*_gtFine_labelIds.png")):
        label_ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        counts += np.bincount(id_to_train_id[label_ids].ravel(), minlength=256)[:19]
    return counts
