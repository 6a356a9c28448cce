"""The same seed draws the same scenes: pinned hashes of rendered scenes and of a written dataset.

The hashes were recorded from the scene code as it was before it was split into a package; any change to what a
seed draws (an extra random draw, a reordered step, another colour) changes them. A change that is meant to alter
the scenes must bump `SCENES_VERSION` (so the demo's cached copy is regenerated) and record the new hashes here.
"""

import hashlib
import json

import cv2
import numpy as np
import pytest

from attnseg.data.synthetic import SCENES_VERSION, make_synthetic_dataset, render_scene

# (seed sequence, height, width, forced classes) -> sha256 (first 24 hex digits) of the image, labelIds, instanceIds
# and polygon json.
RENDERED = [
    ((0,), 256, 512, (), "dbedf5f26d30a41778163716"),
    ((1,), 256, 512, (), "e22e9ff26a1eafe6f4e03043"),
    ((0, 2, 1), 96, 160, ("train", "wall", "rider"), "2ac382da9d4cdd2875202fa8"),
    ((1, 1, 3), 64, 128, ("bus", "fence", "terrain", "traffic light"),
     "ebca083a95adf71902a29e0e"),
    ((7,), 200, 300, ("bicycle", "motorcycle"), "19c47d3e140ff8284b76094a"),
]  # fmt: skip

# make_synthetic_dataset(root, 2, 2, 64, 128, seed=5): sha256 (24 hex digits) of each file's decoded pixels (of the
# json: its text).
WRITTEN = {
    "gtFine/train/arden/arden_000000_000019_gtFine_color.png": "407ed52da2639107d0652711",
    "gtFine/train/arden/arden_000000_000019_gtFine_instanceIds.png": "6a340745b0ff5f9fd068d004",
    "gtFine/train/arden/arden_000000_000019_gtFine_labelIds.png": "5f1b74e538288598017f0ca8",
    "gtFine/train/arden/arden_000000_000019_gtFine_polygons.json": "b3af97a4829612570d8bdc5d",
    "gtFine/train/brookfield/brookfield_000000_000019_gtFine_color.png": "ed07d186910e256ec5a129ca",
    "gtFine/train/brookfield/brookfield_000000_000019_gtFine_instanceIds.png": "524977da259e13935706b73d",
    "gtFine/train/brookfield/brookfield_000000_000019_gtFine_labelIds.png": "30f31d68a9318460528144ef",
    "gtFine/train/brookfield/brookfield_000000_000019_gtFine_polygons.json": "bcafdbedd2d57b1d21ff67d7",
    "gtFine/val/dunmore/dunmore_000000_000019_gtFine_color.png": "d48e6a0fe500d3d81813fced",
    "gtFine/val/dunmore/dunmore_000000_000019_gtFine_instanceIds.png": "7ddc2614da23c16b692d5384",
    "gtFine/val/dunmore/dunmore_000000_000019_gtFine_labelIds.png": "07a6b50209641fe886a5444f",
    "gtFine/val/dunmore/dunmore_000000_000019_gtFine_polygons.json": "6ea3131d4e949d4ddfddd45c",
    "gtFine/val/elmstead/elmstead_000000_000019_gtFine_color.png": "f618b98097002bc0aae2bc3b",
    "gtFine/val/elmstead/elmstead_000000_000019_gtFine_instanceIds.png": "401cfbbb0df86002e3e45d5a",
    "gtFine/val/elmstead/elmstead_000000_000019_gtFine_labelIds.png": "17488cdbe4f92d6c7e5787b6",
    "gtFine/val/elmstead/elmstead_000000_000019_gtFine_polygons.json": "a1c6ef8fbe5fec6b7a09f50e",
    "leftImg8bit/train/arden/arden_000000_000019_leftImg8bit.png": "aa0d60d7e9788acd653ef9cf",
    "leftImg8bit/train/brookfield/brookfield_000000_000019_leftImg8bit.png": "fd16eee8ef517e46c21588fe",
    "leftImg8bit/val/dunmore/dunmore_000000_000019_leftImg8bit.png": "9a858854be97479d1d2c448b",
    "leftImg8bit/val/elmstead/elmstead_000000_000019_leftImg8bit.png": "1be4260d0b39b3308c375dc2",
}  # fmt: skip


def _scene_digest(scene) -> str:
    digest = hashlib.sha256()
    for array in (scene.image, scene.label_ids, scene.instance_ids):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps(scene.annotation, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def _file_digest(path) -> str:
    if path.suffix == ".json":
        return hashlib.sha256(path.read_bytes()).hexdigest()[:24]
    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return hashlib.sha256(pixels.dtype.str.encode() + str(pixels.shape).encode() + pixels.tobytes()).hexdigest()[:24]


def test_scenes_version_is_the_one_the_hashes_belong_to():
    assert SCENES_VERSION == 4


@pytest.mark.parametrize("seed, height, width, forced, expected", RENDERED)
def test_rendered_scene_is_pinned(seed, height, width, forced, expected):
    scene = render_scene(np.random.default_rng(list(seed)), height, width, forced)
    assert scene.image.shape == (height, width, 3) and scene.image.dtype == np.uint8
    assert _scene_digest(scene) == expected


def test_written_dataset_is_pinned(tmp_path):
    root = make_synthetic_dataset(tmp_path / "scenes", 2, 2, 64, 128, seed=5)
    found = {p.relative_to(root).as_posix(): _file_digest(p) for p in sorted(root.rglob("*")) if p.is_file()}
    assert found == WRITTEN
