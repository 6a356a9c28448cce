"""Vehicles: cars (parked or driving ahead), the haulier's trucks, the operator's buses, trams and the ego vehicle.

Buses, trucks and trams each wear one livery, as in a single city: their colour helps, their shape decides.
"""

from __future__ import annotations

import numpy as np

from attnseg.data.synthetic.camera import Z_NEAR
from attnseg.data.synthetic.drawing import SceneDrawing
from attnseg.data.synthetic.paint import CAR_COLORS, jitter, plain_painter, rails_painter
from attnseg.data.synthetic.sprite import Sprite


def draw_cars(d: SceneDrawing, count: int) -> None:
    """Cars parked along the curbs (seen from the side) or driving ahead (seen from behind)."""
    rng, street = d.rng, d.street
    for _ in range(count):
        color = jitter(rng, CAR_COLORS[rng.integers(len(CAR_COLORS))], 15)
        if rng.random() < 0.35:
            side = d.random_side()
            x = (street.road_left + 1.0 if side < 0 else street.road_right - 1.0)
            draw_car_side(d, x, d.depth(6, 60, x), color)
        else:
            x = d.road_x()
            draw_car_rear(d, x, d.depth(5, 120, x), color)


def _vehicle_shadow(d: SceneDrawing, x: float, z: float, half_width: float) -> None:
    quad = d.ground_quad(x - half_width * 1.1, x + half_width * 1.1, z - 0.2, z + 1.5)
    d.shadows.append((quad, 0.55))


def _wheel(sprite: Sprite, u: float, radius: float) -> None:
    sprite.circle(u, radius, radius, (25, 25, 25))
    sprite.circle(u, radius, radius * 0.5, (120, 120, 125), shape=False)


def draw_car_rear(d: SceneDrawing, x: float, z: float, color) -> None:
    """A car seen from behind: tyres, body, cabin, rear window, lights, bumper and number plate."""
    rng = d.rng
    width, height = rng.uniform(1.65, 1.95), rng.uniform(1.35, 1.65)
    sprite = Sprite(d.camera, x, z, width / 2 + 0.1, height + 0.1, color)
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
    sprite.poly(glass, jitter(rng, (40, 50, 60), 10), shape=False)
    light = (210, 30, 30) if rng.random() < 0.7 else (240, 240, 220)  # tail or head lights
    sprite.rect(-w * 0.95, height * 0.45, -w * 0.65, height * 0.55, light, False)
    sprite.rect(w * 0.65, height * 0.45, w * 0.95, height * 0.55, light, False)
    sprite.rect(-w, 0.22, w, 0.32, color * 0.5, False)  # bumper
    sprite.rect(-0.25, 0.35, 0.25, 0.47, (235, 235, 235), False)  # number plate
    _vehicle_shadow(d, x, z, w)
    d.add_sprite(z, "car", sprite)


def draw_car_side(d: SceneDrawing, x: float, z: float, color) -> None:
    """A car seen from the side: body, windows with a pillar, two wheels."""
    rng = d.rng
    length, height = rng.uniform(3.8, 4.8), rng.uniform(1.35, 1.6)
    half = length / 2
    sprite = Sprite(d.camera, x, z, half + 0.1, height + 0.1, color)
    body = [(-half, 0.3), (half, 0.3), (half, 0.85), (half * 0.55, 0.95), (half * 0.3, height),
            (-half * 0.45, height), (-half * 0.8, 0.95), (-half, 0.85)]  # fmt: skip
    sprite.poly(body, color)
    glass = [(half * 0.45, 0.97), (half * 0.25, height * 0.95), (-half * 0.4, height * 0.95), (-half * 0.68, 0.97)]
    sprite.poly(glass, jitter(rng, (45, 55, 65), 10), shape=False)
    sprite.line((-0.02, 0.97), (-0.02, height * 0.95), 0.06, color, shape=False)
    for u in (-half * 0.62, half * 0.62):
        _wheel(sprite, u, 0.32)
    d.add_sprite(z, "car", sprite)


def _curb_lane_x(d: SceneDrawing, inset: float) -> float:
    """X of the lane along a random curb, `inset` metres in from the road's edge."""
    side = d.random_side()
    return d.street.road_left + inset if side < 0 else d.street.road_right - inset


def _truck_rear(d: SceneDrawing, cargo) -> tuple[float, Sprite]:
    """A tall box with corrugated doors seen from behind, on the road."""
    rng = d.rng
    x = d.road_x(1.5)
    z = d.depth(8, 70, x)
    width, height = rng.uniform(2.3, 2.55), rng.uniform(3.0, 3.9)
    w = width / 2
    sprite = Sprite(d.camera, x, z, w + 0.1, height + 0.1, cargo)
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
    _vehicle_shadow(d, x, z, w)
    return z, sprite


def _truck_side(d: SceneDrawing, cargo, cab) -> tuple[float, Sprite]:
    """Cab and corrugated cargo box seen from the side, in the lane along a curb."""
    rng = d.rng
    side = d.random_side()
    x = (d.street.road_left + 1.4 if side < 0 else d.street.road_right - 1.4)
    z = d.depth(8, 70, x)
    length, height = rng.uniform(6.5, 9.0), rng.uniform(3.0, 3.8)
    half = length / 2
    sprite = Sprite(d.camera, x, z, half + 0.1, height + 0.1, cargo)
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
        _wheel(sprite, u, 0.5)
    return z, sprite


def draw_truck(d: SceneDrawing) -> None:
    """One truck in the haulier's blue, from behind or from the side."""
    rng = d.rng
    cargo = jitter(rng, rng.choice([(60, 90, 150), (45, 75, 140)]), 12)
    cab = jitter(rng, rng.choice([(220, 220, 220), (30, 60, 130)]), 15)
    z, sprite = _truck_rear(d, cargo) if rng.random() < 0.5 else _truck_side(d, cargo, cab)
    d.add_sprite(z, "truck", sprite)


def _bus_rear(d: SceneDrawing, paint, glass) -> tuple[float, Sprite]:
    rng = d.rng
    x = d.road_x(1.5)
    z = d.depth(8, 80, x)
    w, height = rng.uniform(1.22, 1.28), rng.uniform(2.9, 3.2)
    sprite = Sprite(d.camera, x, z, w + 0.1, height + 0.1, paint)
    for u in (-w * 0.8, w * 0.8):
        sprite.rect(u - 0.2, 0, u + 0.2, 0.5, (25, 25, 25))
    body = [(-w, 0.3), (w, 0.3), (w, height - 0.2), (w - 0.2, height), (-w + 0.2, height), (-w, height - 0.2)]
    sprite.poly(body, paint)
    sprite.rect(-w * 0.85, height * 0.55, w * 0.85, height * 0.92, glass, shape=False)
    sprite.rect(-w * 0.5, height * 0.93, w * 0.5, height * 0.98, (250, 160, 20), shape=False)  # route display
    sprite.rect(-w * 0.95, 0.6, -w * 0.7, 0.8, (230, 230, 210), shape=False)
    sprite.rect(w * 0.7, 0.6, w * 0.95, 0.8, (230, 230, 210), shape=False)
    _vehicle_shadow(d, x, z, w)
    return z, sprite


def _bus_side(d: SceneDrawing, paint, glass) -> tuple[float, Sprite]:
    rng = d.rng
    x = _curb_lane_x(d, 1.4)
    z = d.depth(8, 80, x)
    half, height = rng.uniform(5.5, 6.2), rng.uniform(2.9, 3.2)
    sprite = Sprite(d.camera, x, z, half + 0.1, height + 0.1, paint)
    body = [(-half, 0.3), (half, 0.3), (half, height - 0.25), (half - 0.25, height), (-half + 0.25, height),
            (-half, height - 0.25)]  # fmt: skip
    sprite.poly(body, paint)
    sprite.rect(-half + 0.3, 1.3, half - 0.3, height - 0.35, glass, shape=False)
    for k in range(int(2 * half / 1.6)):
        u = -half + 0.3 + 1.6 * (k + 1)
        if u < half - 0.3:
            sprite.line((u, 1.3), (u, height - 0.35), 0.08, paint, shape=False)
    for u in (-half * 0.6, half * 0.7):
        _wheel(sprite, u, 0.48)
    return z, sprite


def draw_bus(d: SceneDrawing) -> None:
    """One bus in the operator's yellow/orange, from behind or from the side."""
    rng = d.rng
    paint = jitter(rng, rng.choice([(230, 190, 30), (240, 150, 30)]), 12)
    glass = jitter(rng, (35, 45, 55), 8)
    z, sprite = _bus_rear(d, paint, glass) if rng.random() < 0.5 else _bus_side(d, paint, glass)
    d.add_sprite(z, "bus", sprite)


def _tram_track(d: SceneDrawing, crossing: bool) -> tuple[float, float, float]:
    """(half length, x, z) of the tram and its track: across the street at a crossing, or ahead along it."""
    rng, cam = d.rng, d.camera
    if crossing:  # passing across the street at an intersection: long side with segments
        half, x = rng.uniform(12, 18), rng.uniform(-4, 4)
        z = d.depth(12, 60, x)
        track = cam.project(np.array([[-80, 0, z - 0.8], [80, 0, z - 0.8], [80, 0, z + 0.8], [-80, 0, z + 0.8]]))
    else:  # ahead in the street, seen from behind
        half, x = 1.2, d.road_x(1.5)
        z = d.depth(10, 70, x)
        track = d.ground_quad(x - 0.75, x + 0.75, Z_NEAR, d.street.skyline_z)
    d.add(d.background, "rail track", track, rails_painter(rng, d.canvas, crossing, z if crossing else x))
    return half, x, z


def draw_tram(d: SceneDrawing) -> None:
    """A tram in the operator's teal on its track (labelled ``train`` as in Cityscapes), with a pantograph."""
    rng = d.rng
    body = jitter(rng, rng.choice([(40, 140, 150), (30, 115, 135)]), 10)
    stripe = jitter(rng, rng.choice([(235, 230, 210), (30, 30, 30)]), 10)
    glass = jitter(rng, (40, 50, 60), 8)
    crossing = rng.random() < 0.5
    half, x, z = _tram_track(d, crossing)
    height = rng.uniform(3.2, 3.6)
    sprite = Sprite(d.camera, x, z, half + 0.1, height + 0.8, body)
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
    d.add_sprite(z, "train", sprite)


def draw_ego_vehicle(d: SceneDrawing) -> None:
    """The bonnet of the car carrying the camera, across the bottom of the image."""
    rng = d.rng
    w, h = d.width, d.height
    top = h * rng.uniform(0.9, 0.96)
    xs = np.linspace(0, w - 1, 12)
    ys = top + (h - top) * 0.6 * ((xs - w / 2) / (w / 2)) ** 2
    points = np.concatenate([[[0, h - 1]], np.stack([xs, ys], 1), [[w - 1, h - 1]]])
    color = jitter(rng, CAR_COLORS[rng.integers(len(CAR_COLORS))], 10) * 0.7
    d.add(d.foreground, "ego vehicle", points, plain_painter(d.canvas, color, 0.03, 0.05, 0.1))
