"""The composition of one random street scene: which objects, how many, in which order they are drawn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnseg.data.synthetic.drawing import SceneDrawing
from attnseg.data.synthetic.furniture import draw_poles, draw_signs, draw_traffic_lights, draw_trees
from attnseg.data.synthetic.people import draw_people, draw_two_wheeler
from attnseg.data.synthetic.street import draw_street
from attnseg.data.synthetic.vehicles import draw_bus, draw_cars, draw_ego_vehicle, draw_tram, draw_truck

# Bumped whenever the same seed draws different scenes, so that a cached copy (the demo's) is not reused.
SCENES_VERSION = 4

# Classes every split must contain somewhere (besides road and sky, which every image has); a few are forced into
# each image round-robin so that even a 4-image val split shows all 19 trainIds.
FORCED_CLASSES: tuple[str, ...] = (
    "train", "bus", "truck", "motorcycle", "rider", "bicycle", "wall", "fence", "terrain",
    "traffic light", "traffic sign", "person", "pole", "car", "vegetation", "building", "sidewalk",
)  # fmt: skip


def draw_scene(rng: np.random.Generator, width: int, height: int, forced: Sequence[str] = ()) -> SceneDrawing:
    """Draw one random street scene; its shapes (``.shapes()``) come in painter's order, far/background first.

    Every call to `rng` happens here or in the steps called, in a fixed order: the same generator state draws the
    same scene. A `forced` class gets extra (or certain) objects of its kind.
    """
    d = SceneDrawing(rng, width, height, forced)
    draw_street(d)
    wants = {name: name in d.forced for name in FORCED_CLASSES}
    draw_trees(d, rng.integers(1, 6) + (2 if wants["vegetation"] else 0))
    draw_poles(d, rng.integers(3, 9) + (1 if wants["pole"] else 0))
    n_signs = rng.integers(1, 4) + (1 if wants["traffic sign"] else 0)
    n_lights = rng.integers(0, 3) + (1 if wants["traffic light"] else 0)
    draw_signs(d, n_signs)
    draw_traffic_lights(d, n_lights)
    draw_cars(d, rng.integers(1, 8) + (2 if wants["car"] else 0))
    _draw_large_vehicles(d, wants)
    draw_people(d, rng.integers(2, 8) + (2 if wants["person"] else 0))
    _draw_two_wheelers(d, wants)
    if rng.random() < 0.5:
        draw_ego_vehicle(d)
    return d


def _draw_large_vehicles(d: SceneDrawing, wants: dict[str, bool]) -> None:
    rng = d.rng
    if wants["truck"] or rng.random() < 0.4:
        draw_truck(d)
    if wants["bus"] or rng.random() < 0.3:
        draw_bus(d)
    if wants["train"] or rng.random() < 0.12:
        draw_tram(d)


def _draw_two_wheelers(d: SceneDrawing, wants: dict[str, bool]) -> None:
    rng = d.rng
    n_cyclists = rng.integers(0, 3) + (1 if wants["rider"] or wants["bicycle"] else 0)
    for _ in range(n_cyclists):
        draw_two_wheeler(d, "bicycle", ridden=rng.random() < 0.6 or wants["rider"])
    if wants["bicycle"] or rng.random() < 0.4:
        draw_two_wheeler(d, "bicycle", ridden=False)
    if wants["motorcycle"] or rng.random() < 0.4:
        draw_two_wheeler(d, "motorcycle", ridden=rng.random() < 0.7)
