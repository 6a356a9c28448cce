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

The package, by job: ``camera`` (pinhole projection), ``paint`` (noise fields, colours, surface painters), ``raster``
(polygons to label images), ``sprite`` (a drawing surface in metres for upright objects), ``drawing`` (the street
layout and the layers a scene is drawn into), ``street``, ``furniture``, ``vehicles`` and ``people`` (what is drawn),
``scene`` (the composition of one scene), ``render`` (pixels and camera effects) and ``writer`` (the dataset on disk).
"""

from attnseg.data.synthetic.raster import clip_polygon
from attnseg.data.synthetic.render import SyntheticScene, render_scene
from attnseg.data.synthetic.scene import SCENES_VERSION
from attnseg.data.synthetic.writer import SPLIT_CITIES, class_pixel_counts, make_synthetic_dataset

__all__ = [
    "SCENES_VERSION",
    "SPLIT_CITIES",
    "SyntheticScene",
    "class_pixel_counts",
    "clip_polygon",
    "make_synthetic_dataset",
    "render_scene",
]
