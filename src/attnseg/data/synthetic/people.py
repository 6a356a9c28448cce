"""People: pedestrians on the sidewalks, and bicycles and motorcycles, parked or ridden (riders in hi-vis vests)."""

from __future__ import annotations

from attnseg.data.synthetic.drawing import SceneDrawing
from attnseg.data.synthetic.paint import HI_VIS, SHIRT_COLORS, jitter
from attnseg.data.synthetic.sprite import Sprite


def _legs(d: SceneDrawing, sprite: Sprite, s: float, hip: float, riding: bool, pants) -> None:
    """Thighs forward and shins down to the pedals when riding; a walking stride with shoes otherwise."""
    if riding:
        sprite.line((0, hip), (0.3 * s, hip + 0.05), 0.14 * s, pants)
        sprite.line((0.3 * s, hip + 0.05), (0.25 * s, 0.35), 0.12 * s, pants)
        sprite.line((0, hip), (0.22 * s, 0.45), 0.12 * s, pants)
    else:
        stride = d.rng.uniform(0.0, 0.22) * s
        sprite.line((-0.07 * s, hip), (-0.07 * s - stride, 0.04), 0.13 * s, pants)
        sprite.line((0.07 * s, hip), (0.07 * s + stride, 0.04), 0.13 * s, pants)
        sprite.rect(-0.07 * s - stride - 0.07, 0, -0.07 * s - stride + 0.08, 0.06, (30, 25, 25))
        sprite.rect(0.07 * s + stride - 0.08, 0, 0.07 * s + stride + 0.07, 0.06, (30, 25, 25))


def _upper_body(d: SceneDrawing, sprite: Sprite, s: float, hip: float, riding: bool, shirt, skin, helmet: bool) -> None:
    """Torso, arms (reaching for the handlebar when riding), neck, head and a cap or helmet."""
    rng = d.rng
    shoulder = hip + 0.55 * s
    lean = 0.12 * s if riding else 0.0
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
    cap = (30, 30, 30) if helmet else jitter(rng, rng.choice([(40, 30, 20), (90, 60, 30), (20, 20, 20)]), 10)
    sprite.poly([(lean - 0.115 * s, head_v), (lean + 0.115 * s, head_v), (lean + 0.09 * s, head_v + 0.11 * s),
                 (lean - 0.09 * s, head_v + 0.11 * s)], cap, shape=helmet)  # fmt: skip


def person_sprite(d: SceneDrawing, x: float, z: float, riding: bool, helmet: bool = False) -> Sprite:
    """A person standing or walking, or sitting on a bike (hips ~0.95 m above the ground) when `riding`."""
    rng = d.rng
    height = rng.uniform(1.55, 1.95)
    skin = jitter(rng, rng.choice([(225, 185, 160), (170, 120, 90), (110, 75, 55)]), 10)
    shirt = jitter(rng, HI_VIS if riding else SHIRT_COLORS[rng.integers(len(SHIRT_COLORS))], 15)
    pants = jitter(rng, rng.choice([(40, 45, 70), (30, 30, 30), (120, 110, 90), (70, 70, 75)]), 12)
    s = height / 1.75
    seat = 0.95 if riding else 0.0
    sprite = Sprite(d.camera, x, z, 0.45 * s + 0.1, (seat + (0.85 if riding else 1.75)) * s + 0.2, shirt)
    hip = seat + (0.0 if riding else 0.88 * s)
    _legs(d, sprite, s, hip, riding, pants)
    _upper_body(d, sprite, s, hip, riding, shirt, skin, helmet)
    if rng.random() < 0.3 and not riding:  # bag
        sprite.rect(0.17 * s, hip - 0.1, 0.3 * s, hip + 0.2, jitter(rng, (60, 40, 30), 20))
    return sprite


def draw_people(d: SceneDrawing, count: int) -> None:
    """Pedestrians on the sidewalks, some in pairs."""
    for _ in range(count):
        x = d.sidewalk_x()
        z = d.depth(5, 50, x)
        d.add_sprite(z, "person", person_sprite(d, x, z, riding=False), 0.05)
        if d.rng.random() < 0.3:  # someone walking alongside
            d.add_sprite(z + 0.3, "person", person_sprite(d, x + 0.6, z + 0.3, riding=False), 0.05)


def _bicycle_sprite(d: SceneDrawing, x: float, z: float, facing: int) -> Sprite:
    """A bike-share bicycle in the city's cyan: two wheels and a diamond frame."""
    frame = jitter(d.rng, d.rng.choice([(30, 150, 220), (20, 130, 200)]), 12)
    sprite = Sprite(d.camera, x, z, 0.95, 1.15, frame)
    r = 0.34
    for u in (-0.52, 0.52):
        sprite.circle(u, r, r, (25, 25, 25))
        sprite.circle(u, r, r * 0.82, (95, 100, 105), shape=False)  # spokes and what is seen through
        sprite.circle(u, r, r * 0.12, frame, shape=False)
    points = {"rear": (-0.52, r), "front": (0.52, r), "pedal": (0.0, r), "seat": (-0.15, 0.85), "bar": (0.42, 0.95)}
    flip = lambda p: (facing * p[0], p[1])  # noqa: E731
    for a, b in (("rear", "pedal"), ("pedal", "seat"), ("seat", "rear"), ("pedal", "bar"), ("bar", "front"),
                 ("seat", "bar")):  # fmt: skip
        sprite.line(flip(points[a]), flip(points[b]), 0.045, frame)
    sprite.line(flip((-0.25, 0.88)), flip((-0.05, 0.88)), 0.06, (20, 20, 20))
    sprite.line(flip((0.35, 1.0)), flip((0.5, 1.0)), 0.04, (20, 20, 20))
    return sprite


def _motorcycle_sprite(d: SceneDrawing, x: float, z: float, facing: int) -> Sprite:
    """A motorcycle in purple (unlike any car): wheels, body, engine and handlebar."""
    body = jitter(d.rng, d.rng.choice([(140, 40, 150), (120, 30, 130)]), 12)
    sprite = Sprite(d.camera, x, z, 1.1, 1.3, body)
    for u in (-0.72, 0.72):
        sprite.circle(u, 0.31, 0.31, (20, 20, 20))
        sprite.circle(u, 0.31, 0.14, (150, 150, 155), shape=False)
    sprite.poly([(facing * -0.75, 0.55), (facing * 0.35, 0.5), (facing * 0.6, 0.9), (facing * 0.1, 0.95),
                 (facing * -0.55, 0.85)], body)  # fmt: skip
    sprite.rect(-0.35, 0.35, 0.25, 0.55, (90, 90, 95))  # engine
    sprite.line((facing * 0.6, 0.9), (facing * 0.55, 1.15), 0.05, (30, 30, 30))
    return sprite


def draw_two_wheeler(d: SceneDrawing, kind: str, ridden: bool) -> None:
    """A ``bicycle`` or ``motorcycle``: ridden in the lane along a curb, or parked on a sidewalk."""
    rng, street = d.rng, d.street
    if ridden:
        side = d.random_side()
        x = (street.road_left + 0.8 if side < 0 else street.road_right - 0.8)
    else:
        x = d.sidewalk_x()
    z = d.depth(5, 45, x)
    facing = 1 if rng.random() < 0.5 else -1
    draw = _bicycle_sprite if kind == "bicycle" else _motorcycle_sprite
    d.add_sprite(z, kind, draw(d, x, z, facing), 0.05)
    if ridden:
        rider = person_sprite(d, x - facing * 0.05, z - 0.05, riding=True, helmet=kind == "motorcycle")
        if facing < 0:  # mirror the rider to face the same way as the bike
            rider.mirror()
        d.add_sprite(z - 0.05, "rider", rider, 0.05)
