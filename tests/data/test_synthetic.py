"""make_synthetic_dataset: exact Cityscapes layout, labels that cityscapesscripts reproduces, determinism, coverage."""

import json

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage

from attnseg.data.labels import LABELS_BY_NAME
from attnseg.data.synthetic import SPLIT_CITIES, class_pixel_counts, clip_polygon, make_synthetic_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_train=3, num_val=4, height=128, width=256,
                                  seed=3)  # fmt: skip


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_layout_is_exactly_cityscapes(dataset):
    files = _files(dataset)
    expected = []
    for split, count in (("train", 3), ("val", 4)):
        cities = SPLIT_CITIES[split]
        for k in range(count):
            city = cities[k % len(cities)]
            stem = f"{city}_{k // len(cities):06d}_000019"
            expected.append(f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")
            expected += [f"gtFine/{split}/{city}/{stem}_gtFine_{kind}"
                         for kind in ("color.png", "instanceIds.png", "labelIds.png", "polygons.json")]  # fmt: skip
    assert files == sorted(expected)


def test_labels_are_what_cityscapesscripts_draws_from_the_json(dataset):
    for json_path in sorted(dataset.glob("gtFine/*/*/*_polygons.json")):
        annotation = Annotation()
        annotation.fromJsonFile(str(json_path))
        assert (annotation.imgWidth, annotation.imgHeight) == (256, 128)
        stem = str(json_path)[: -len("_polygons.json")]
        label_ids = cv2.imread(stem + "_labelIds.png", cv2.IMREAD_UNCHANGED)
        assert label_ids.dtype == np.uint8
        assert np.array_equal(label_ids, np.asarray(createLabelImage(annotation, "ids")))
        instances = cv2.imread(stem + "_instanceIds.png", cv2.IMREAD_UNCHANGED)
        assert instances.dtype == np.uint16  # 16-bit like the official files
        assert np.array_equal(instances, np.asarray(createInstanceImage(annotation, "ids")))
        assert np.array_equal(instances // 1000 * (instances >= 1000) + instances * (instances < 1000), label_ids)
        image = cv2.imread(str(json_path).replace("gtFine", "leftImg8bit", 1).replace("_gtFine_polygons.json",
                                                                                       "_leftImg8bit.png"))  # fmt: skip
        assert image.shape == (128, 256, 3)
        color = cv2.imread(stem + "_color.png", cv2.IMREAD_UNCHANGED)
        assert color.shape == (128, 256, 4)
        objects = json.loads(json_path.read_text())["objects"]
        assert any(o["label"] == "car" for o in objects)


def test_image_colours_follow_the_labels(dataset):
    """Sky pixels are blue-ish/bright and vegetation green-ish: the image is painted from the same polygons."""
    sky, veg = [], []
    for label_path in sorted(dataset.glob("gtFine/*/*/*_labelIds.png")):
        label_ids = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        image_path = str(label_path).replace("gtFine", "leftImg8bit", 1).replace("_gtFine_labelIds", "_leftImg8bit")
        rgb = cv2.imread(image_path)[..., ::-1].astype(np.float64)
        sky.append(rgb[label_ids == 23].mean(0))
        if (label_ids == 21).any():
            veg.append(rgb[label_ids == 21].mean(0))
    sky, veg = np.mean(sky, 0), np.mean(veg, 0)
    assert sky[2] > sky[0] and veg[1] > veg[2]


def _mean_colours(dataset, names):
    ids = {name: LABELS_BY_NAME[name].id for name in names}
    totals = {name: np.zeros(3) for name in names}
    counts = dict.fromkeys(names, 0)
    for label_path in sorted(dataset.glob("gtFine/*/*/*_labelIds.png")):
        label_ids = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        image_path = str(label_path).replace("gtFine", "leftImg8bit", 1).replace("_gtFine_labelIds", "_leftImg8bit")
        rgb = cv2.imread(image_path)[..., ::-1].astype(np.float64)
        for name, label_id in ids.items():
            mask = label_ids == label_id
            totals[name] += rgb[mask].sum(0)
            counts[name] += int(mask.sum())
    return {name: totals[name] / max(counts[name], 1) for name in names}


def test_classes_keep_their_looks(dataset):
    """Vehicles wear their operator's livery and riders hi-vis vests, so colour separates classes that shape alone
    separates only after long training (bus vs car, tram vs bus, rider vs person); lighting still varies it."""
    looks = _mean_colours(dataset, ["bus", "truck", "train", "bicycle", "rider", "wall", "motorcycle", "fence"])
    red, green, blue = 0, 1, 2
    assert looks["bus"][red] > 2 * looks["bus"][blue]  # yellow / orange
    assert looks["truck"][blue] > 1.5 * looks["truck"][red]  # blue boxes
    assert min(looks["train"][green], looks["train"][blue]) > 1.3 * looks["train"][red]  # teal
    assert looks["bicycle"][blue] > 1.5 * looks["bicycle"][red]  # cyan frames
    assert looks["rider"][green] > 2 * looks["rider"][blue]  # hi-vis yellow
    assert looks["wall"][red] > 2 * looks["wall"][blue]  # brick
    assert looks["motorcycle"][blue] > 1.3 * looks["motorcycle"][green]  # purple
    assert looks["fence"].max() - looks["fence"].min() < 25 and looks["fence"].mean() > 100  # white palisade


def test_every_train_id_appears_in_a_small_val_split(dataset):
    counts = class_pixel_counts(dataset, "val")
    assert (counts > 0).all(), counts


def test_deterministic_by_seed_and_independent_of_workers(tmp_path, dataset):
    again = make_synthetic_dataset(tmp_path / "again", 3, 4, 128, 256, seed=3, workers=2)
    for rel in _files(dataset):
        if rel.endswith(".json"):
            assert (dataset / rel).read_text() == (again / rel).read_text(), rel
        else:
            a = cv2.imread(str(dataset / rel), cv2.IMREAD_UNCHANGED)
            b = cv2.imread(str(again / rel), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(a, b), rel
    other = make_synthetic_dataset(tmp_path / "other", 1, 0, 128, 256, seed=4)
    rel = "leftImg8bit/train/arden/arden_000000_000019_leftImg8bit.png"
    assert not np.array_equal(cv2.imread(str(dataset / rel)), cv2.imread(str(other / rel)))


def test_clip_polygon_limiting_cases():
    inside = np.array([[1, 1], [5, 1], [5, 4]])
    assert clip_polygon(inside, 10, 8).tolist() == inside.tolist()
    assert clip_polygon(np.array([[20, 20], [30, 20], [30, 30]]), 10, 8).shape == (0, 2)
    covering = clip_polygon(np.array([[-5, -5], [50, -5], [50, 50], [-5, 50]]), 10, 8)
    assert sorted(map(tuple, covering.tolist())) == [(0, 0), (0, 7), (9, 0), (9, 7)]
    # an edge crossing the border is cut where it crosses, not where its vertex is clamped
    cut = clip_polygon(np.array([[0, 0], [18, 0], [0, 6]]), 10, 8)
    assert (9, 3) in map(tuple, cut.tolist())
