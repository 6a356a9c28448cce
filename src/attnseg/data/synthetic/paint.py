"""Colours and textures: the per-image noise fields, colour helpers and the painters of the street's surfaces.

A painter is called with the bounding box (x0, y0, x1, y1) of the pixels its shape owns and returns their RGB; the
scene copies only the owned pixels. The painter factories that take `rng` draw their colours from it when called (so
the order of those calls is part of what a seed draws) and return the closure.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from attnseg.data.synthetic.camera import Z_FAR, Z_NEAR, Camera

Painter = Callable[[int, int, int, int], np.ndarray]  # (x0, y0, x1, y1) -> (y1 - y0, x1 - x0, 3) float32 RGB
Box = tuple[int, int, int, int]

CAR_COLORS = [(200, 200, 205), (30, 30, 35), (140, 145, 150), (160, 25, 30), (235, 235, 235), (90, 95, 100),
              (40, 80, 60), (190, 170, 120), (110, 20, 25)]  # fmt: skip
BUILDING_COLORS = [(150, 140, 130), (180, 165, 140), (120, 110, 105), (200, 190, 170),
                   (170, 150, 120), (140, 120, 100)]  # fmt: skip
SHIRT_COLORS = [(200, 40, 40), (40, 60, 160), (230, 230, 230), (30, 30, 30), (60, 130, 70), (120, 60, 140),
                (150, 120, 90)]  # fmt: skip
HI_VIS = (205, 235, 40)  # riders wear high-visibility vests
METAL = (170, 172, 178)  # galvanised steel of poles


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

    def textured(self, color, box: Box, fine: float, mid: float, coarse: float = 0.0, tint: float = 0.0) -> np.ndarray:
        """Colour `color` modulated by the noise fields inside `box` = (x0, y0, x1, y1)."""
        x0, y0, x1, y1 = box
        gain = 1.0 + fine * self.fine[y0:y1, x0:x1] + mid * self.mid[y0:y1, x0:x1]
        if coarse:
            gain += coarse * self.coarse[y0:y1, x0:x1]
        patch = gain[..., None] * np.asarray(color, dtype=np.float32)
        if tint:  # slight hue wander, e.g. leaves or grass
            patch[..., 1] += tint * 40.0 * self.mid[y0:y1, x0:x1][::-1, ::-1][: y1 - y0, : x1 - x0]
        return patch

    def ground_coordinates(self, box: Box) -> tuple[np.ndarray, np.ndarray]:
        """World (X, Z) of the ground-plane point seen at each pixel of `box` (Z = inf above the horizon)."""
        cam = self.camera
        x0, y0, x1, y1 = box
        below = np.maximum(self.ys[y0:y1, x0:x1] - cam.horizon, 1e-3)
        z = cam.focal * cam.elevation / below
        x_world = (self.xs[y0:y1, x0:x1] - cam.cx) * z / cam.focal
        return x_world, z

    def wall_coordinates(self, box: Box, x_plane: float) -> tuple[np.ndarray, np.ndarray]:
        """(Z, Y) on the vertical plane X = x_plane (a facade parallel to the street) at each pixel of `box`."""
        cam = self.camera
        x0, y0, x1, y1 = box
        dx = self.xs[y0:y1, x0:x1] - cam.cx
        dx = np.where(np.abs(dx) < 1e-3, 1e-3, dx)
        z = np.clip(cam.focal * x_plane / dx, Z_NEAR, Z_FAR)
        y_world = cam.elevation - (self.ys[y0:y1, x0:x1] - cam.horizon) * z / cam.focal
        return z, y_world

    def front_coordinates(self, box: Box, z_plane: float) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y) on the vertical plane Z = z_plane (facing the camera) at each pixel of `box`."""
        cam = self.camera
        x0, y0, x1, y1 = box
        x_world = (self.xs[y0:y1, x0:x1] - cam.cx) * z_plane / cam.focal
        y_world = cam.elevation - (self.ys[y0:y1, x0:x1] - cam.horizon) * z_plane / cam.focal
        return x_world, y_world


def frac(values: np.ndarray) -> np.ndarray:
    """Fractional part, for repeating patterns (tiles, windows, slats)."""
    return values - np.floor(values)


def jitter(rng: np.random.Generator, color, amount: float = 18.0) -> np.ndarray:
    """`color` with each channel shifted by up to `amount`, kept in [0, 255]."""
    shifted = np.asarray(color, dtype=np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)
    return np.minimum(np.maximum(shifted, 0), 255)  # np.clip's dispatch costs more than the work on 3 values


def mix(a, b, t) -> np.ndarray:
    """Linear blend of colours `a` and `b` (t = 0 gives a)."""
    return np.asarray(a, dtype=np.float32) * (1 - t) + np.asarray(b, dtype=np.float32) * t


def sky_painter(rng: np.random.Generator, canvas: Canvas) -> Painter:
    """Blue gradient towards a pale horizon, with clouds from the coarse noise."""
    top = jitter(rng, rng.choice([(60, 110, 190), (90, 135, 200), (70, 95, 150)]), 20)
    low = jitter(rng, rng.choice([(180, 205, 230), (200, 215, 235), (170, 185, 205)]), 15)
    cloudiness = rng.uniform(0.0, 1.0)
    horizon = canvas.camera.horizon

    def paint(x0, y0, x1, y1):
        t = np.clip(canvas.ys[y0:y1, x0:x1] / max(horizon, 1.0), 0, 1)[..., None] ** 0.8
        sky = top * (1 - t) + low * t
        clouds = np.clip(canvas.coarse[y0:y1, x0:x1] * 0.7 + canvas.mid[y0:y1, x0:x1] * 0.3 - 0.3, 0, 1)
        sky = sky + (cloudiness * clouds)[..., None] * (np.float32(235) - sky)
        return sky * (1 + 0.01 * canvas.fine[y0:y1, x0:x1, None])

    return paint


def facade_painter(
    rng: np.random.Generator, canvas: Canvas, color, coordinates: Callable, along0: float, floor: float, bay: float
) -> Painter:
    """Windows on a facade whose (along, height) coordinates at each pixel come from `coordinates(box)`."""
    glass = jitter(rng, rng.choice([(50, 60, 75), (80, 95, 110), (35, 40, 45), (120, 135, 150)]), 12)
    frame = mix(color, (235, 235, 230), rng.uniform(0.0, 0.5))
    win_w, win_h = rng.uniform(0.35, 0.7), rng.uniform(0.35, 0.65)
    shop = rng.random() < 0.5
    shop_color = jitter(rng, (60, 55, 50), 25)
    grain = rng.uniform(0.03, 0.09)

    def paint(x0, y0, x1, y1):
        along, up = coordinates((x0, y0, x1, y1))
        patch = canvas.textured(color, (x0, y0, x1, y1), grain, 0.06, 0.05)
        u = frac((along - along0) / bay)
        v = frac(up / floor)
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


def brick_painter(rng: np.random.Generator, canvas: Canvas, x_plane: float) -> Painter:
    """Brick courses on the plane X = x_plane (garden walls are all brick, one look per class)."""
    color = jitter(rng, rng.choice([(150, 70, 50), (130, 60, 45), (165, 85, 60)]), 12)
    block = rng.uniform(0.3, 0.9)

    def paint(x0, y0, x1, y1):
        _, up = canvas.wall_coordinates((x0, y0, x1, y1), x_plane)
        patch = canvas.textured(color, (x0, y0, x1, y1), 0.05, 0.08, 0.06)
        joints = np.abs(frac(up / block) - 0.5) > 0.46
        patch[joints] *= 0.8
        return patch

    return paint


def palisade_painter(rng: np.random.Generator, canvas: Canvas, x_plane: float, height: float) -> Painter:
    """White slats, two rails and a post every few metres in front of a dark gap, on the plane X = x_plane."""
    # One look, as walls are brick: a fine wire mesh in random colours was the weakest class (IoU 0.11, read as facade).
    paint_colour = jitter(rng, (225, 225, 215), 12)
    gap = jitter(rng, (55, 60, 58), 10)
    pitch, post = rng.uniform(0.18, 0.28), rng.uniform(2.0, 3.0)

    def paint(x0, y0, x1, y1):
        along, up = canvas.wall_coordinates((x0, y0, x1, y1), x_plane)
        slats = np.abs(frac(along / pitch) - 0.5) < 0.3
        posts = np.abs(frac(along / post) - 0.5) > 0.45
        rails = (np.abs(up - 0.8 * height) < 0.05) | (np.abs(up - 0.2) < 0.05)
        solid = slats | posts | rails
        patch = np.where(solid[..., None], paint_colour, gap * (0.8 + 0.2 * canvas.mid[y0:y1, x0:x1, None]))
        return patch * (1 + 0.05 * canvas.fine[y0:y1, x0:x1, None])

    return paint


def leaves_painter(rng: np.random.Generator, canvas: Canvas) -> Painter:
    """Noisy green of hedges and tree crowns."""
    color = jitter(rng, rng.choice([(70, 110, 40), (50, 85, 35), (95, 125, 50), (60, 95, 60)]), 15)

    def paint(x0, y0, x1, y1):
        patch = canvas.textured(color, (x0, y0, x1, y1), 0.22, 0.25, 0.1, tint=0.3)
        return patch

    return paint


def road_painter(rng: np.random.Generator, canvas: Canvas, road_left: float, road_right: float) -> Painter:
    """Asphalt with dashed lane lines, edge lines and sometimes a zebra crossing."""
    asphalt = jitter(rng, rng.choice([(95, 90, 95), (110, 108, 112), (80, 78, 82), (125, 120, 125)]), 10)
    marks = jitter(rng, (225, 225, 215), 10)
    lane = rng.uniform(2.8, 3.6)
    dash = rng.uniform(6, 12)
    center = (road_left + road_right) / 2
    zebra_z = rng.uniform(8, 25) if rng.random() < 0.25 else None

    def road(x0, y0, x1, y1):
        x_world, z = canvas.ground_coordinates((x0, y0, x1, y1))
        patch = canvas.textured(asphalt, (x0, y0, x1, y1), 0.07, 0.05, 0.06)
        width = 0.08 + 0.004 * z  # keeps far markings from vanishing below a pixel
        lanes = np.abs(frac((x_world - center) / lane + 0.5) - 0.5) * lane < width
        dashed = lanes & (frac(z / dash) < 0.45)
        edges = (np.abs(x_world - road_left - 0.3) < width) | (np.abs(x_world - road_right + 0.3) < width)
        paint = dashed | edges
        if zebra_z is not None:
            paint |= (np.abs(z - zebra_z) < 2.0) & (frac(x_world / 1.0) < 0.5)
        patch[paint] = marks * (0.9 + 0.1 * canvas.fine[y0:y1, x0:x1][paint, None])
        return patch

    return road


def paving_painters(rng: np.random.Generator, canvas: Canvas, edges: tuple[float, ...]) -> list[Painter]:
    """Tiled sidewalks sharing one paving, with a lighter curb along each X in `edges`: one painter per edge."""
    paving = jitter(rng, rng.choice([(170, 130, 125), (185, 150, 140), (160, 120, 120), (190, 160, 150)]), 12)
    curb = mix(paving, (200, 200, 200), 0.5)
    tile = rng.uniform(0.25, 0.6)

    def sidewalk_painter(edge: float) -> Painter:
        def paint(x0, y0, x1, y1):
            x_world, z = canvas.ground_coordinates((x0, y0, x1, y1))
            patch = canvas.textured(paving, (x0, y0, x1, y1), 0.06, 0.07, 0.05)
            grout = (np.abs(frac(x_world / tile) - 0.5) > 0.45) | (np.abs(frac(z / tile) - 0.5) > 0.45)
            patch[grout & (z < 40)] *= 0.82
            patch[np.abs(x_world - edge) < 0.18] = curb
            return patch

        return paint

    return [sidewalk_painter(edge) for edge in edges]


def grass_painter(rng: np.random.Generator, canvas: Canvas) -> Painter:
    """Terrain: grass with a wandering hue."""
    grass = jitter(rng, rng.choice([(135, 160, 80), (150, 150, 90), (120, 145, 70), (160, 140, 95)]), 12)

    def terrain(x0, y0, x1, y1):
        return canvas.textured(grass, (x0, y0, x1, y1), 0.12, 0.18, 0.1, tint=0.15)

    return terrain


def rails_painter(rng: np.random.Generator, canvas: Canvas, crossing: bool, where: float) -> Painter:
    """Track bed with two rails, along the street at X = where or across it at Z = where when `crossing`."""
    bed = jitter(rng, (110, 105, 100), 10)

    def paint(x0, y0, x1, y1):
        x_world, z = canvas.ground_coordinates((x0, y0, x1, y1))
        patch = canvas.textured(bed, (x0, y0, x1, y1), 0.12, 0.1)
        across = (z - where) if crossing else (x_world - where)
        rails = np.abs(np.abs(across) - 0.72) < 0.05 + (0.004 * z if not crossing else 0.02)
        patch[rails] = (190, 190, 195)
        return patch

    return paint


def plain_painter(canvas: Canvas, color, fine: float, mid: float, coarse: float) -> Painter:
    """`color` with noise only (the ego vehicle's bonnet)."""

    def paint(x0, y0, x1, y1):
        return canvas.textured(color, (x0, y0, x1, y1), fine, mid, coarse)

    return paint
