"""Street furniture: trees on the sidewalks, poles and street lamps, traffic signs and traffic lights."""

from __future__ import annotations

import numpy as np

from attnseg.data.synthetic.drawing import SceneDrawing
from attnseg.data.synthetic.paint import METAL, jitter
from attnseg.data.synthetic.raster import Shape
from attnseg.data.synthetic.sprite import Sprite
from attnseg.data.synthetic.street import draw_tree_crown


def draw_trees(d: SceneDrawing, count: int) -> None:
    """Trees along the outer edge of the sidewalks: a trunk (labelled vegetation, as in Cityscapes) and a crown."""
    rng, street = d.rng, d.street
    for _ in range(count):
        side = d.random_side()
        x = (street.walk_left + 0.6 if side < 0 else street.walk_right - 0.6) + rng.uniform(-0.4, 0.4)
        z = d.depth(6, 90, x)
        crown, trunk_top = rng.uniform(1.2, 3.2), rng.uniform(2.0, 4.5)
        trunk_color = jitter(rng, (85, 65, 50), 12)
        sprite = Sprite(d.camera, x, z, 0.2, trunk_top + 0.3, trunk_color)
        sprite.rect(-0.13, 0, 0.13, trunk_top + 0.3, trunk_color)
        shapes: list[Shape] = []
        trunk = d.sprite_shape("vegetation", sprite, 0.12)
        if trunk is not None:
            shapes.append(trunk)
        draw_tree_crown(d, shapes, x, z, crown, trunk_top + crown * 0.7)
        if shapes:
            d.upright.append((z, shapes))


def draw_poles(d: SceneDrawing, count: int) -> None:
    """Steel poles along the curbs, some with a street lamp's arm reaching over the road."""
    rng, street = d.rng, d.street
    metal = jitter(rng, METAL, 12)
    for _ in range(count):
        side = d.random_side()
        x = (street.road_left - 0.5 if side < 0 else street.road_right + 0.5) + rng.uniform(-0.3, 0.3)
        z = d.depth(5, 70, x)
        height, width = rng.uniform(3.5, 9), rng.uniform(0.08, 0.25)
        sprite = Sprite(d.camera, x, z, 1.8, height + 0.2, metal)
        sprite.rect(-width / 2, 0, width / 2, height, metal)
        sprite.rect(-width / 2, 0, -width / 6, height, metal * 1.15, shape=False)  # lit side of the cylinder
        if rng.random() < 0.4:
            reach = -side * rng.uniform(0.8, 1.6)
            sprite.line((0, height), (reach, height + 0.15), max(width * 0.6, 0.05), metal)
        d.add_sprite(z, "pole", sprite, 0.05)


def _mount_pole(d: SceneDrawing, x: float, z: float, top: float, metal) -> list[Shape]:
    """The thin pole a sign or light hangs on, just behind it: [] when it is not visible."""
    sprite = Sprite(d.camera, x, z, 0.1, top, metal)
    sprite.rect(-0.05, 0, 0.05, top, metal)
    shape = d.shape("pole", sprite.outline(), sprite.painter(d.canvas)) if sprite.outline().size else None
    return [shape] if shape else []


def _sign_face(sprite: Sprite, rng: np.random.Generator, kind: int, mount: float, size: float) -> None:
    """One of four sign kinds: prohibition, mandatory, warning or information."""
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


def draw_signs(d: SceneDrawing, count: int) -> None:
    """Traffic signs on the sidewalks, each on its own pole."""
    rng = d.rng
    for _ in range(count):
        x = d.sidewalk_x()
        z = d.depth(5, 45, x)
        mount = rng.uniform(1.8, 2.8)
        metal = jitter(rng, METAL, 12)
        pole = _mount_pole(d, x, z + 0.05, mount, metal)
        kind = rng.integers(4)
        size = rng.uniform(0.5, 0.9)
        sprite = Sprite(d.camera, x, z, size / 2 + 0.05, mount + size + 0.1, (230, 230, 230))
        _sign_face(sprite, rng, kind, mount, size)
        d.add_sprite(z, "traffic sign", sprite, 0.03, extra=pole)


def draw_traffic_lights(d: SceneDrawing, count: int) -> None:
    """Three-lamp traffic lights at the curbs, one lamp lit."""
    rng, street = d.rng, d.street
    for _ in range(count):
        side = d.random_side()
        x = (street.road_left - 0.4 if side < 0 else street.road_right + 0.4)
        z = d.depth(7, 55, x)
        mount = rng.uniform(2.2, 3.5)
        metal = jitter(rng, METAL, 12)
        pole = _mount_pole(d, x, z + 0.05, mount, metal)
        housing = jitter(rng, rng.choice([(30, 30, 30), (40, 45, 40), (150, 120, 20)]), 8)
        sprite = Sprite(d.camera, x, z, 0.25, mount + 1.05, housing)
        sprite.rect(-0.18, mount, 0.18, mount + 0.95, housing)
        lit = rng.integers(3)
        for k, color in enumerate([(40, 220, 90), (250, 180, 30), (240, 40, 30)]):
            on = k == lit
            shade = color if on else tuple(0.25 * c + 20 for c in color)
            sprite.circle(0, mount + 0.17 + 0.3 * k, 0.11, shade, shape=False)
        d.add_sprite(z, "traffic light", sprite, 0.03, extra=pole)
