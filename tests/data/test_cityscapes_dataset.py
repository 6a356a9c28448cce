"""CityscapesDataset: the item contract, on-the-fly labelIds, and bad datasets rejected with the file named."""

import shutil

import cv2
import numpy as np
import pytest

from attnseg.data.cityscapes import CityscapesDataset, label_encodings
from attnseg.data.prepare import prepare_cityscapes
from attnseg.data.synthetic import make_synthetic_dataset
from attnseg.errors import DatasetError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("cs"), num_train=3, num_val=2, height=64, width=128, seed=1)
    prepare_cityscapes(root, workers=1, progress=False)
    return root


@pytest.fixture
def copy(prepared, tmp_path):
    return shutil.copytree(prepared, tmp_path / "cityscapes")


def test_item_contract(prepared):
    dataset = CityscapesDataset(prepared, "train")
    assert len(dataset) == 3 and label_encodings(dataset) == {"trainIds": 3}
    item = dataset[0]
    assert set(item) == {"image", "label", "name", "image_path"}
    assert item["image"].shape == (64, 128, 3) and item["image"].dtype == np.uint8
    assert item["label"].shape == (64, 128) and item["label"].dtype == np.uint8
    assert set(np.unique(item["label"])) <= set(range(19)) | {255}
    assert item["name"] == "arden_000000_000019" and item["image_path"].endswith("arden_000000_000019_leftImg8bit.png")
    bgr = cv2.imread(item["image_path"])
    assert np.array_equal(item["image"], bgr[..., ::-1])  # RGB order
    assert dataset.validate("all") == {"sizes": 3, "values": 3}


def test_transform_is_applied(prepared):
    dataset = CityscapesDataset(prepared, "val", transform=lambda item: {**item, "label": item["label"][:8]})
    assert dataset[1]["label"].shape == (8, 128)


def test_label_ids_are_mapped_on_the_fly(copy, prepared):
    for path in copy.glob("gtFine/*/*/*_labelTrainIds.png"):
        path.unlink()
    raw = CityscapesDataset(copy, "val")
    assert label_encodings(raw) == {"labelIds": 2}
    ready = CityscapesDataset(prepared, "val")
    for k in range(2):
        assert np.array_equal(raw[k]["label"], ready[k]["label"])
    raw.validate("all")


def test_test_split_has_no_labels(copy):
    shutil.copytree(copy / "leftImg8bit" / "val", copy / "leftImg8bit" / "test")
    dataset = CityscapesDataset(copy, "test")
    assert len(dataset) == 2 and dataset[0]["label"] is None and dataset.validate() == {"sizes": 0, "values": 0}


def test_missing_folder(copy):
    shutil.rmtree(copy / "gtFine" / "val")
    with pytest.raises(DatasetError, match=r"gtFine[/\\]val: folder not found"):
        CityscapesDataset(copy, "val")


def test_image_without_label(copy):
    victim = sorted(copy.glob("gtFine/train/*/*_gtFine_labelTrainIds.png"))[1]
    victim.unlink()
    victim.with_name(victim.name.replace("labelTrainIds", "labelIds")).unlink()
    image_name = victim.name.replace("_gtFine_labelTrainIds.png", "_leftImg8bit.png")
    with pytest.raises(DatasetError, match=rf"{image_name}: no label file"):
        CityscapesDataset(copy, "train")


def test_wrong_label_size(copy):
    victim = sorted(copy.glob("gtFine/val/*/*_labelTrainIds.png"))[-1]
    cv2.imwrite(str(victim), np.zeros((32, 128), np.uint8))
    dataset = CityscapesDataset(copy, "val")
    with pytest.raises(DatasetError, match=rf"{victim.name}: label is 128x32 but its image .* is 128x64"):
        dataset.validate("none")
    with pytest.raises(DatasetError, match=victim.name):
        dataset[1]


def test_value_outside_the_label_table(copy):
    victim = sorted(copy.glob("gtFine/train/*/*_labelTrainIds.png"))[1]
    label = cv2.imread(str(victim), cv2.IMREAD_UNCHANGED)
    label[5, 5] = 42
    cv2.imwrite(str(victim), label)
    dataset = CityscapesDataset(copy, "train")
    expected = rf"{victim.name}: label values \[42\] are not trainIds of the 19 classes \(0..18\) or the ignore value"
    with pytest.raises(DatasetError, match=expected):
        dataset.validate("all")
    with pytest.raises(DatasetError, match=expected):
        dataset[1]


def test_bad_split_or_mode():
    with pytest.raises(ValueError):
        CityscapesDataset("/nonexistent", "val", mode="medium")
