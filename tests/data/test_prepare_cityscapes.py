"""prepare_cityscapes / prepare_autolabelled against cityscapesscripts' own conversion."""

import json
import shutil

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation import createTrainIdLabelImgs
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage

from attnseg.data.cityscapes import CityscapesDataset
from attnseg.data.labels import id_to_train_id
from attnseg.data.prepare import prepare_autolabelled, prepare_cityscapes
from attnseg.data.synthetic import make_synthetic_dataset
from attnseg.errors import DatasetError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("cs"), num_train=3, num_val=2, height=96, width=192, seed=7)


@pytest.fixture
def copy(synthetic, tmp_path):
    return shutil.copytree(synthetic, tmp_path / "cityscapes")


def _official_train_ids(root, monkeypatch):
    """Run the official createTrainIdLabelImgs on `root` and return {relative path: array}."""
    monkeypatch.setenv("CITYSCAPES_DATASET", str(root))
    createTrainIdLabelImgs.main()
    return {p.relative_to(root).as_posix(): cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            for p in sorted(root.glob("gtFine/*/*/*_labelTrainIds.png"))}  # fmt: skip


def test_train_ids_are_pixel_identical_to_create_train_id_label_imgs(copy, tmp_path, monkeypatch):
    official_root = shutil.copytree(copy, tmp_path / "official")
    official = _official_train_ids(official_root, monkeypatch)
    assert len(official) == 5
    summary = prepare_cityscapes(copy, workers=2, progress=False)
    assert (summary.written, summary.from_json, summary.skipped) == (5, 5, 0)
    for rel, expected in official.items():
        ours = cv2.imread(str(copy / rel), cv2.IMREAD_UNCHANGED)
        assert ours.dtype == np.uint8 and np.array_equal(ours, expected), rel
    again = prepare_cityscapes(copy, workers=1, progress=False)  # resumable: nothing left to do
    assert (again.written, again.skipped) == (0, 5)


def test_from_label_ids_when_there_is_no_json(copy, tmp_path, monkeypatch):
    official = _official_train_ids(shutil.copytree(copy, tmp_path / "official"), monkeypatch)
    for path in copy.glob("gtFine/*/*/*_polygons.json"):
        path.unlink()
    summary = prepare_cityscapes(copy, workers=1, progress=False)
    assert (summary.from_label_ids, summary.from_json) == (5, 0)
    for rel, expected in official.items():
        assert np.array_equal(cv2.imread(str(copy / rel), cv2.IMREAD_UNCHANGED), expected), rel


def test_file_lists_and_instances(copy):
    summary = prepare_cityscapes(copy, workers=1, progress=False, instances=True)
    assert summary.lists == {"train.txt": 3, "val.txt": 2}
    lines = (copy / "val.txt").read_text().splitlines()
    image, label = lines[0].split(" ")
    assert image.startswith("leftImg8bit/val/") and image.endswith("_leftImg8bit.png")
    assert label.startswith("gtFine/val/") and label.endswith("_gtFine_labelTrainIds.png")
    assert (copy / image).is_file() and (copy / label).is_file()
    for json_path in copy.glob("gtFine/*/*/*_polygons.json"):
        annotation = Annotation()
        annotation.fromJsonFile(str(json_path))
        expected = np.asarray(createInstanceImage(annotation, "trainIds"))  # drawing works; only its PNG save fails
        ours = cv2.imread(str(json_path).replace("_polygons.json", "_instanceTrainIds.png"), cv2.IMREAD_UNCHANGED)
        assert ours.dtype == np.uint16 and np.array_equal(ours, expected)


def test_unknown_label_in_json_names_the_file(copy):
    json_path = sorted(copy.glob("gtFine/train/*/*_polygons.json"))[0]
    data = json.loads(json_path.read_text())
    data["objects"][0]["label"] = "spaceship"
    json_path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=rf"{json_path.name}.*'spaceship'"):
        prepare_cityscapes(copy, workers=1, progress=False)


def test_missing_gtfine_is_reported(copy):
    shutil.rmtree(copy / "gtFine")
    with pytest.raises(DatasetError, match="gtFine: folder not found"):
        prepare_cityscapes(copy, progress=False)


def test_autolabelled_conversion(copy):
    """refinement_final holds labelIds (PaddleSeg and NVIDIA both map them with the id -> trainId table)."""
    extra_images = copy / "leftImg8bit_trainextra" / "leftImg8bit" / "train_extra"
    refinement = copy / "refinement_final" / "train_extra"
    sources = {}
    for image in sorted(copy.glob("leftImg8bit/train/*/*_leftImg8bit.png")):
        city = image.parent.name
        (extra_images / city).mkdir(parents=True, exist_ok=True)
        (refinement / city).mkdir(parents=True, exist_ok=True)
        shutil.copy(image, extra_images / city / image.name)
        label_ids = cv2.imread(str(image).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png",
                                                                                      "_gtFine_labelIds.png"), -1)
        label_ids[0, :3] = 255  # autolabelled files may carry 255 (unlabelled)
        cv2.imwrite(str(refinement / city / image.name), label_ids)
        sources[(city, image.name)] = label_ids
    (refinement.parent / "tmp").mkdir()
    cv2.imwrite(str(refinement.parent / "tmp" / "junk.png"), np.full((4, 4), 99, np.uint8))  # skipped
    summary = prepare_autolabelled(copy, workers=1, progress=False)
    assert summary.written == len(sources) and summary.lists == {"train_extra.txt": len(sources)}
    for (city, name), label_ids in sources.items():
        converted = cv2.imread(str(copy / "convert_autolabelled" / city / name), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(converted, id_to_train_id[label_ids])
    dataset = CityscapesDataset(copy, "train_extra", mode="autolabelled")
    assert len(dataset) == len(sources) and dataset.validate("all")["values"] == len(sources)
    item = dataset[0]
    assert item["label"].shape == item["image"].shape[:2] and item["label"][0, 0] == 255
