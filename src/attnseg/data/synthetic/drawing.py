"""What the scene's drawing steps share: the random street cross-section, the camera, the canvas and the layers.

The layers are drawn in painter's order: background (sky, skyline, ground), sides (facades, walls, fences, hedges),
upright objects sorted far to near, then the foreground (the ego vehicle's bonnet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from attnseg.data.synthetic.camera import random_camera
from attnseg.data.synthetic.paint import Canvas, Painter
from attnseg.data.synthetic.raster import Shape, clip_polygon, polygon_area
from attnseg.data.synthetic.sprite import Sprite


@dataclass(frozen=True)
class StreetLayout:
    """Street cross-section in metres, relative to the camera (X = 0), and the depth where the street ends."""

    road_left: float
    road_right: float
    walk_left: float
    walk_right: float
    terrain_left: bool
    terrain_right: bool
    verge_left: float
    verge_right: float
    skyline_z: float  # the street ends at a row of buildings facing the camera


def random_layout(rng: np.random.Generator, forced: set[str]) -> StreetLayout:
    """Road, sidewalks and grass verges of random widths; a forced ``terrain`` puts grass on the left."""
    half_road = rng.uniform(3.5, 7.5)
    offset = rng.uniform(-0.45, 0.45) * half_road
    road_left, road_right = offset - half_road, offset + half_road
    walk_left = road_left - rng.uniform(2.0, 5.0)
    walk_right = road_right + rng.uniform(2.0, 5.0)
    terrain_left = rng.random() < 0.45 or "terrain" in forced
    terrain_right = rng.random() < 0.4
    verge_left = walk_left - (rng.uniform(3.0, 7.0) if terrain_left else 0.0)
    verge_right = walk_right + (rng.uniform(3.0, 7.0) if terrain_right else 0.0)
    skyline_z = rng.uniform(110, 250)
    return StreetLayout(road_left, road_right, walk_left, walk_right, terrain_left, terrain_right, verge_left,
                        verge_right, skyline_z)  # fmt: skip


class SceneDrawing:
    """One scene being drawn: its randomness, camera, canvas, street layout and the shapes added so far."""

    def __init__(self, rng: np.random.Generator, width: int, height: int, forced: Sequence[str] = ()):
        self.rng = rng
        self.width, self.height = width, height
        self.forced = set(forced)
        self.camera = random_camera(rng, width, height)
        self.canvas = Canvas(rng, self.camera)
        self.street = random_layout(rng, self.forced)
        self.background: list[Shape] = []
        self.sides: list[Shape] = []
        self.upright: list[tuple[float, list[Shape]]] = []  # (depth, shapes) sorted far to near later
        self.foreground: list[Shape] = []
        self.shadows: list[tuple[np.ndarray, float]] = []  # image-space ground polygons and their darkening

    def shapes(self) -> list[Shape]:
        """Every shape in painter's order."""
        ordered = sorted(self.upright, key=lambda item: -item[0])
        return self.background + self.sides + [s for _, group in ordered for s in group] + self.foreground

    # -- shape bookkeeping ------------------------------------------------------------------------------------------

    def shape(self, label: str, points: np.ndarray, painter: Painter) -> Shape | None:
        """The shape of `points` clipped to the image, or None when nothing (or under half a pixel) is left."""
        polygon = clip_polygon(points, self.width, self.height)
        if len(polygon) < 3 or polygon_area(polygon) < 0.5:
            return None
        return Shape(label, polygon, painter)

    def add(self, layer: list[Shape], label: str, points: np.ndarray, painter: Painter) -> None:
        """Append the shape of `points` to `layer` when it is visible."""
        shape = self.shape(label, points, painter)
        if shape is not None:
            layer.append(shape)

    def sprite_shape(self, label: str, sprite: Sprite, grain: float = 0.04) -> Shape | None:
        """The shape of a sprite's outline, or None when nothing of it is visible."""
        outline = sprite.outline()
        if len(outline) < 3:
            return None
        return self.shape(label, outline, sprite.painter(self.canvas, grain))

    def add_sprite(
        self, z: float, label: str, sprite: Sprite, grain: float = 0.04, extra: Sequence[Shape] = ()
    ) -> None:
        """Add an upright object at depth z: the `extra` shapes (e.g. its pole) then the sprite's own."""
        shapes = list(extra)
        shape = self.sprite_shape(label, sprite, grain)
        if shape is not None:
            shapes.append(shape)
        if shapes:
            self.upright.append((z, shapes))

    # -- geometry ----------------------------------------------------------------------------------------------------

    def ground_quad(self, x0: float, x1: float, z0: float, z1: float) -> np.ndarray:
        """Image polygon of the ground rectangle [x0, x1] x [z0, z1]."""
        return self.camera.project(np.array([[x0, 0, z0], [x1, 0, z0], [x1, 0, z1], [x0, 0, z1]]))

    def side_quad(self, x: float, z0: float, z1: float, y0: float, y1: float) -> np.ndarray:
        """Image polygon of the vertical rectangle on the plane X = x, [z0, z1] deep and [y0, y1] high."""
        return self.camera.project(np.array([[x, y0, z0], [x, y1, z0], [x, y1, z1], [x, y0, z1]]))

    def depth(self, near: float = 5.0, far: float = 80.0, x_world: float = 0.0) -> float:
        """Random depth, log-uniform (as many far objects as near ones), far enough for X = x_world to be in view."""
        cam = self.camera
        half_view = cam.cx if x_world < 0 else cam.width - cam.cx
        near = max(near, abs(x_world) * cam.focal / (0.9 * half_view))
        far = max(far, near * 1.5)
        return float(np.exp(self.rng.uniform(np.log(near), np.log(far))))

    def sidewalk_x(self, side: int | None = None) -> float:
        """Random X on the left (side < 0) or right sidewalk; a random side when None."""
        street = self.street
        side = side if side is not None else (-1 if self.rng.random() < 0.5 else 1)
        if side < 0:
            return self.rng.uniform(street.walk_left + 0.3, street.road_left - 0.3)
        return self.rng.uniform(street.road_right + 0.3, street.walk_right - 0.3)

    def road_x(self, margin: float = 1.2) -> float:
        """Random X on the road, `margin` metres from its edges."""
        return self.rng.uniform(self.street.road_left + margin, self.street.road_right - margin)

    def random_side(self) -> int:
        """-1 (left) or 1 (right), evenly."""
        return -1 if self.rng.random() < 0.5 else 1
