"""A drawing surface in metres for one upright object (car, person, sign...), outlined by its mask's contour."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from attnseg.data.synthetic.camera import Camera
from attnseg.data.synthetic.paint import Canvas, Painter


class Sprite:
    """A local drawing surface for one upright object at depth z, in metres: u to the right, v up from the ground.

    Every primitive draws into the mask (what the object's polygon will enclose) unless ``shape=False``, and into the
    colour layer when given a colour; details painted with ``shape=False`` change the look, not the outline.
    """

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
        """Local pixel of the point (u, v) metres."""
        return int(round(self.ground_x + u * self.scale)), int(round(self.ground_y - v * self.scale))

    def pts(self, uv: Sequence[tuple[float, float]]) -> np.ndarray:
        """(N, 2) int32 local pixels of points in metres."""
        return np.array([self.px(u, v) for u, v in uv], dtype=np.int32)

    def thickness(self, metres: float) -> int:
        """Line thickness in pixels (at least 1) of `metres`."""
        return max(1, int(round(metres * self.scale)))

    def poly(self, uv, color=None, shape: bool = True) -> None:
        """Filled polygon."""
        pts = self.pts(uv)
        if shape:
            cv2.fillPoly(self.mask, [pts], 255)
        if color is not None:
            cv2.fillPoly(self.rgb, [pts], tuple(float(c) for c in color))

    def circle(self, u, v, radius, color=None, shape: bool = True) -> None:
        """Filled disc of `radius` metres."""
        center, r = self.px(u, v), max(1, int(round(radius * self.scale)))
        if shape:
            cv2.circle(self.mask, center, r, 255, -1)
        if color is not None:
            cv2.circle(self.rgb, center, r, tuple(float(c) for c in color), -1)

    def line(self, uv0, uv1, width, color=None, shape: bool = True) -> None:
        """Line `width` metres thick."""
        p0, p1, t = self.px(*uv0), self.px(*uv1), self.thickness(width)
        if shape:
            cv2.line(self.mask, p0, p1, 255, t)
        if color is not None:
            cv2.line(self.rgb, p0, p1, tuple(float(c) for c in color), t)

    def rect(self, u0, v0, u1, v1, color=None, shape: bool = True) -> None:
        """Axis-aligned rectangle between (u0, v0) and (u1, v1)."""
        self.poly([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], color, shape)

    def mirror(self) -> None:
        """Flip the drawing left-right about its ground point (e.g. a rider facing the other way)."""
        self.mask = np.ascontiguousarray(self.mask[:, ::-1])
        self.rgb = np.ascontiguousarray(self.rgb[:, ::-1])
        self.ground_x = self.mask.shape[1] - 1 - self.ground_x

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
        """Painter of the colour layer (base colour outside it) with a little of the canvas's fine grain."""
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
