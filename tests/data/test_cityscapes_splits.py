"""Cityscapes data options: NVIDIA's cross-validation splits (--cv) and PaddleSeg's add_val, city by city.

The fake tree has the 18 official train cities and 3 val cities (their real names) with two tiny frames each, so the
lists below are what NVIDIA ``datasets/cityscapes.py cities_cv_split`` and PaddleSeg ``add_val`` give on the real
data set.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

from attnseg.config import load_config
from attnseg.config.schema import DataConfig, FieldError
from attnseg.data.cityscapes import CityscapesDataset, split_cities
from attnseg.errors import ConfigError, DatasetError

TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf", "erfurt", "hamburg", "hanover",
                "jena", "krefeld", "monchengladbach", "strasbourg", "stuttgart", "tubingen", "ulm", "weimar", "zurich")
VAL_CITIES = ("frankfurt", "lindau", "munster")
# NVIDIA: all = val cities + sorted train cities (21); cv k validates on all[7k : 7k + 3].
CV_VAL = {
    0: [("val", city) for city in VAL_CITIES],
    1: [("train", "darmstadt"), ("train", "dusseldorf"), ("train", "erfurt")],
    2: [("train", "monchengladbach"), ("train", "strasbourg"), ("train", "stuttgart")],
}
FRAMES = ("000000_000019", "000001_000019")


def _write_frame(root: Path, folder: str, city: str, frame: str) -> None:
    image_dir, label_dir = root / "leftImg8bit" / folder / city, root / "gtFine" / folder / city
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(image_dir / f"{city}_{frame}_leftImg8bit.png"), np.zeros((4, 8, 3), np.uint8))
    cv2.imwrite(str(label_dir / f"{city}_{frame}_gtFine_labelTrainIds.png"), np.zeros((4, 8), np.uint8))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    for folder, cities in (("train", TRAIN_CITIES), ("val", VAL_CITIES)):
        for city in cities:
            for frame in FRAMES:
                _write_frame(root, folder, city, frame)
    for frame in FRAMES:  # a test split with a city of its own: no option touches it
        image_dir = root / "leftImg8bit" / "test" / "berlin"
        image_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_dir / f"berlin_{frame}_leftImg8bit.png"), np.zeros((4, 8, 3), np.uint8))
    return root


def _cities(dataset: CityscapesDataset) -> list[tuple[str, str]]:
    """(folder, city) per city in list order, each checked to hold exactly its two frames with their own labels."""
    seen: list[tuple[str, str]] = []
    for sample in dataset.samples:
        folder, city = sample.image.parent.parent.name, sample.image.parent.name
        assert sample.label == dataset.root / "gtFine" / folder / city / f"{sample.name}_gtFine_labelTrainIds.png"
        if not seen or seen[-1] != (folder, city):
            seen.append((folder, city))
    assert len(dataset) == 2 * len(seen)
    assert [s.name for s in dataset.samples] == [f"{city}_{frame}" for _, city in seen for frame in FRAMES]
    return seen


def _all_cities() -> list[tuple[str, str]]:
    return [("val", city) for city in VAL_CITIES] + [("train", city) for city in TRAIN_CITIES]


@pytest.mark.parametrize("cv_split", [0, 1, 2])
def test_cv_split_city_by_city(root, cv_split):
    val = _cities(CityscapesDataset(root, "val", cv_split=cv_split))
    train = _cities(CityscapesDataset(root, "train", cv_split=cv_split))
    assert val == CV_VAL[cv_split]
    expected_train = [pair for pair in _all_cities() if pair not in CV_VAL[cv_split]]
    if cv_split == 0:
        expected_train = [("train", city) for city in TRAIN_CITIES]  # the official split, as before
    assert train == expected_train and len(train) == 18
    assert not set(train) & set(val)  # a city is in train or val, never both
    assert sorted(train + val) == sorted(_all_cities())
    assert not {s.image for s in CityscapesDataset(root, "train", cv_split=cv_split).samples} & {
        s.image for s in CityscapesDataset(root, "val", cv_split=cv_split).samples}


def test_cv_split_follows_the_folders_on_disk():
    # The rule, not a table: offsets k * n // 3 over whatever cities exist (here 6 train + 2 val = 8).
    train, val = ["t1", "t2", "t3", "t4", "t5", "t6"], ["v2", "v1"]
    assert split_cities(train, val, "val", 0) == [("val", "v1"), ("val", "v2")]
    assert split_cities(train, val, "val", 1) == [("train", "t1"), ("train", "t2")]  # offset 8 // 3 = 2
    assert split_cities(train, val, "val", 2) == [("train", "t4"), ("train", "t5")]  # offset 16 // 3 = 5
    assert split_cities(train, val, "train", 2) == [("val", "v1"), ("val", "v2"), ("train", "t1"), ("train", "t2"),
                                                    ("train", "t3"), ("train", "t6")]


def test_add_val_appends_the_val_images_to_train(root):
    plain = CityscapesDataset(root, "train")
    both = CityscapesDataset(root, "train", add_val=True)
    assert _cities(both) == [("train", city) for city in TRAIN_CITIES] + [("val", city) for city in VAL_CITIES]
    assert both.samples[: len(plain)] == plain.samples and len(both) == len(plain) + 6
    assert both.add_val and not plain.add_val
    assert _cities(CityscapesDataset(root, "val")) == CV_VAL[0]  # val itself is unchanged


def test_test_split_is_not_affected(root):
    for cv_split in (0, 2):
        dataset = CityscapesDataset(root, "test", cv_split=cv_split)
        assert [s.image.parent.name for s in dataset.samples] == ["berlin", "berlin"]
        assert all(s.label is None for s in dataset.samples)


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="val", add_val=True), "add_val adds the val images to split 'train' only"),
    (dict(split="train", add_val=True, cv_split=1), "add_val trains on the official val cities"),
    (dict(split="train", cv_split=3), "cv_split must be 0, 1 or 2"),
    (dict(split="train", cv_split=True), "cv_split must be 0, 1 or 2"),
    (dict(split="train", mode="coarse", cv_split=1), "apply to mode 'fine' only"),
])
def test_bad_options(root, kwargs, message):
    with pytest.raises(ValueError, match=message):
        CityscapesDataset(root, **kwargs)


def test_missing_city_images_are_named(root, tmp_path):
    for folder, cities in (("train", TRAIN_CITIES[:3]), ("val", VAL_CITIES[:1])):
        for city in cities:
            _write_frame(tmp_path, folder, city, FRAMES[0])
    (tmp_path / "leftImg8bit" / "train" / "hamburg").mkdir()  # a city folder without images
    with pytest.raises(DatasetError, match=r"hamburg: no \*_leftImg8bit.png images found"):
        CityscapesDataset(tmp_path, "train", cv_split=1)


def test_config_fields():
    assert (DataConfig().cv_split, DataConfig().add_val) == (0, False)
    assert DataConfig(cv_split=2).cv_split == 2 and DataConfig(add_val=True).add_val
    for kwargs, key in [(dict(dataset="mapillary", cv_split=1), "cv_split"),
                        (dict(dataset="folder", add_val=True), "add_val"),
                        (dict(cv_split=1, add_val=True), "add_val"),
                        (dict(cv_split=True), "cv_split"),
                        (dict(cv_split=1, val_split="test"), "cv_split"),
                        (dict(add_val=True, train_split="val"), "add_val")]:
        with pytest.raises(FieldError) as error:
            DataConfig(**kwargs)
        assert error.value.field == key


@pytest.mark.parametrize("overrides, message", [
    (["data.cv_split=3"], "data.cv_split: 3 is not one of 0, 1, 2"),
    (["data.dataset=mapillary", "data.cv_split=1"], "data.cv_split=1: applies to data.dataset 'cityscapes' only"),
    (["data.dataset=folder", "data.add_val=true"], "data.add_val=True: applies to data.dataset 'cityscapes' only"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, overrides)
    assert load_config(None, ["data.cv_split=2", "data.add_val=false"]).data.cv_split == 2


@pytest.mark.parametrize("options, split, expected", [
    ({"cv_split": 1}, "val", CV_VAL[1]),
    ({"add_val": True}, "train", [("train", c) for c in TRAIN_CITIES] + [("val", c) for c in VAL_CITIES]),
    ({"add_val": True}, "val", [("val", c) for c in VAL_CITIES]),
])  # fmt: skip
def test_the_config_options_reach_the_dataset_the_builders_make(root, options, split, expected):
    from attnseg.config.build import build_dataset

    dataset = build_dataset(DataConfig(root=str(root), **options), split)
    assert _cities(dataset) == expected
