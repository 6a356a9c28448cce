"""The street itself: sky, the skyline where the street ends, facades with walls, fences and hedges, and the ground."""

from __future__ import annotations

import numpy as np

from attnseg.data.synthetic.camera import Z_NEAR
from attnseg.data.synthetic.drawing import SceneDrawing
from attnseg.data.synthetic.paint import (
    BUILDING_COLORS,
    brick_painter,
    facade_painter,
    grass_painter,
    jitter,
    leaves_painter,
    paving_painters,
    palisade_painter,
    road_painter,
    sky_painter,
)
from attnseg.data.synthetic.raster import Shape


def draw_street(d: SceneDrawing) -> None:
    """Sky, skyline, both rows of facades, then the ground (road, sidewalks, terrain)."""
    draw_sky(d)
    draw_far_skyline(d)
    for side in (-1, 1):
        draw_street_side(d, side)
    draw_ground(d)


def draw_sky(d: SceneDrawing) -> None:
    """The sky down to just below the horizon (everything else is drawn over it)."""
    paint = sky_painter(d.rng, d.canvas)
    w, horizon = d.width, d.camera.horizon
    d.add(d.background, "sky", np.array([[0, 0], [w - 1, 0], [w - 1, horizon + 2], [0, horizon + 2]]), paint)


def draw_far_skyline(d: SceneDrawing) -> None:
    """A row of buildings and a few trees facing the camera at the depth where the street ends."""
    rng, cam = d.rng, d.camera
    z = d.street.skyline_z
    span = (d.width / cam.focal) * z  # metres across the whole image at that depth
    x = -cam.cx / cam.focal * z - 5
    while x < span:
        width = rng.uniform(8, 30)
        height = rng.uniform(6, 40)
        if rng.random() < 0.2:
            draw_tree_crown(d, d.background, x + width / 2, z - 1, rng.uniform(4, 8), rng.uniform(3, 8))
        else:
            color = jitter(rng, BUILDING_COLORS[rng.integers(len(BUILDING_COLORS))], 15) * 0.9
            quad = cam.project(np.array([[x, 0, z], [x + width, 0, z], [x + width, height, z], [x, height, z]]))
            coords = lambda box, zz=z: d.canvas.front_coordinates(box, zz)  # noqa: E731
            d.add(d.background, "building", quad,
                  facade_painter(rng, d.canvas, color, coords, x, rng.uniform(3, 3.6), rng.uniform(2, 3.5)))
        x += width


def _side_segments(d: SceneDrawing, side: int) -> list[tuple[tuple[float, float], str]]:
    """(z0, z1) stretches of one side with what fronts each ('none', 'wall', 'fence', 'vegetation'), near to far."""
    rng = d.rng
    segments = []
    z = Z_NEAR
    while z < d.street.skyline_z - 5:
        length = rng.uniform(8, 28)
        segments.append((z, min(z + length, d.street.skyline_z)))
        z += length
    kinds = list(rng.choice(["none", "wall", "fence", "vegetation"], size=len(segments),
                            p=[0.55, 0.15, 0.15, 0.15]))  # fmt: skip
    for forced, forced_side in (("wall", -1), ("fence", 1)):
        if forced in d.forced and forced not in kinds[:3] and side == forced_side:
            kinds[rng.integers(0, min(3, len(kinds)))] = forced
    return list(zip(segments, kinds))


def draw_street_side(d: SceneDrawing, side: int) -> None:
    """A continuous row of facades along one side, some fronted by a wall, fence or hedge; far to near."""
    rng, street = d.rng, d.street
    x_line = street.verge_left if side < 0 else street.verge_right
    has_terrain = street.terrain_left if side < 0 else street.terrain_right
    walk_edge = street.walk_left if side < 0 else street.walk_right
    front_line = walk_edge if has_terrain else x_line - side * 0.2
    for (z0, z1), kind in sorted(_side_segments(d, side), key=lambda item: -item[0][0]):
        draw_facade(d, x_line, z0, z1)
        if kind == "wall":
            draw_wall(d, side, front_line, z0, z1)
        elif kind == "fence":
            draw_fence(d, side, front_line, z0, z1)
        elif kind == "vegetation":
            draw_hedge(d, front_line, z0, z1)
        if rng.random() < 0.4:
            # Sun from the side: the facade's shadow falls across the sidewalk and part of the road.
            reach = rng.uniform(2, 9)
            quad = d.ground_quad(x_line, x_line - side * reach, max(z0, Z_NEAR), z1)
            d.shadows.append((quad, rng.uniform(0.45, 0.75)))


def draw_facade(d: SceneDrawing, x_line: float, z0: float, z1: float) -> None:
    """A building front on the plane X = x_line between depths z0 and z1."""
    rng = d.rng
    height = rng.uniform(7, 30)
    color = jitter(rng, BUILDING_COLORS[rng.integers(len(BUILDING_COLORS))], 20)
    quad = d.side_quad(x_line, z0, z1, 0, height)
    coords = lambda box, xx=x_line: d.canvas.wall_coordinates(box, xx)  # noqa: E731
    d.add(d.sides, "building", quad,
          facade_painter(rng, d.canvas, color, coords, z0, rng.uniform(2.9, 3.6), rng.uniform(1.6, 3.2)))


def draw_wall(d: SceneDrawing, side: int, x_line: float, z0: float, z1: float) -> None:
    """A brick garden wall in front of the facade."""
    height = d.rng.uniform(1.0, 3.0)
    paint = brick_painter(d.rng, d.canvas, x_line)
    d.add(d.sides, "wall", d.side_quad(x_line - side * 0.2, z0, z1, 0, height), paint)


def draw_fence(d: SceneDrawing, side: int, x_line: float, z0: float, z1: float) -> None:
    """A white palisade in front of the facade."""
    height = d.rng.uniform(1.0, 2.0)
    paint = palisade_painter(d.rng, d.canvas, x_line, height)
    d.add(d.sides, "fence", d.side_quad(x_line - side * 0.3, z0, z1, 0, height), paint)


def draw_hedge(d: SceneDrawing, x_line: float, z0: float, z1: float) -> None:
    """A hedge with an uneven top along the plane X = x_line."""
    rng = d.rng
    height = rng.uniform(0.8, 2.5)
    zs = np.linspace(z0, z1, 12)
    tops = height + rng.uniform(-0.25, 0.25, len(zs))
    points = [[x_line, 0, z0]] + [[x_line, t, zz] for zz, t in zip(zs, tops)] + [[x_line, 0, z1]]
    d.add(d.sides, "vegetation", d.camera.project(np.array(points)), leaves_painter(rng, d.canvas))


def draw_tree_crown(d: SceneDrawing, layer: list[Shape], x_world: float, z: float, radius: float,
                    center_height: float) -> None:  # fmt: skip
    """A ragged ellipse of leaves facing the camera at depth z, added to `layer`."""
    rng = d.rng
    angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    radii = radius * rng.uniform(0.75, 1.15, len(angles))
    pts = np.stack([x_world + radii * np.cos(angles), center_height + 0.8 * radii * np.sin(angles),
                    np.full_like(angles, z)], axis=1)  # fmt: skip
    d.add(layer, "vegetation", d.camera.project(pts), leaves_painter(rng, d.canvas))


def draw_ground(d: SceneDrawing) -> None:
    """Road, the two sidewalks and the grass verges, from the near plane to the skyline."""
    rng, canvas, street = d.rng, d.canvas, d.street
    far = street.skyline_z
    road = road_painter(rng, canvas, street.road_left, street.road_right)
    d.add(d.background, "road", d.ground_quad(street.road_left, street.road_right, Z_NEAR, far), road)
    left_walk, right_walk = paving_painters(rng, canvas, (street.road_left, street.road_right))
    d.add(d.background, "sidewalk", d.ground_quad(street.walk_left, street.road_left, Z_NEAR, far), left_walk)
    d.add(d.background, "sidewalk", d.ground_quad(street.road_right, street.walk_right, Z_NEAR, far), right_walk)
    terrain = grass_painter(rng, canvas)
    if street.terrain_left:
        d.add(d.background, "terrain", d.ground_quad(street.verge_left, street.walk_left, Z_NEAR, far), terrain)
    if street.terrain_right:
        d.add(d.background, "terrain", d.ground_quad(street.walk_right, street.verge_right, Z_NEAR, far), terrain)
