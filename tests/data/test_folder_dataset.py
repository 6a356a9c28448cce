"""FolderDataset: pairing by folders or by a list file, like PaddleSeg's custom datasets."""

import cv2
import numpy as np
import pytest

from attnseg.data.folder import FolderDataset
from attnseg.data.labels import id_to_train_id
from attnseg.errors import DatasetError


@pytest.fixture
def folders(tmp_path):
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "masks" / "sub").mkdir(parents=True)
    for name in ("a", "sub/b"):
        cv2.imwrite(str(tmp_path / "images" / f"{name}.jpg"), np.full((8, 10, 3), 100, np.uint8))
        cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), np.array([[7, 26, 1, 255] * 5] * 4 + [[0] * 20] * 4,
                                                                      np.uint8)[:, :10])  # fmt: skip
    return tmp_path


def test_pairs_by_relative_path(folders):
    dataset = FolderDataset(folders / "images", folders / "masks", label_map=id_to_train_id)
    assert [s.name for s in dataset.samples] == ["a", "b"]
    item = dataset[1]
    assert item["image"].shape == (8, 10, 3) and item["label"][0, :4].tolist() == [0, 13, 255, 255]
    assert dataset.validate("all")["values"] == 2


def test_raw_values_are_checked_against_num_classes(folders):
    dataset = FolderDataset(folders / "images", folders / "masks", num_classes=19)
    expected = r"a.png: label values \[26\] are not class ids of the 19 classes \(0..18\) or the ignore value 255"
    with pytest.raises(DatasetError, match=expected):
        dataset.validate("all")
    with pytest.raises(DatasetError, match=expected):  # and when training or evaluation reads it
        dataset[0]
    assert set(np.unique(FolderDataset(folders / "images", folders / "masks", num_classes=27)[0]["label"])) == {
        0, 1, 7, 26, 255}


def test_label_map_output_is_checked(folders):
    table = np.full(256, 255, np.uint8)
    table[[0, 1, 7]] = [0, 1, 2]
    table[26] = 40  # a table that sends a raw value past the 19 classes is as wrong as the value itself
    dataset = FolderDataset(folders / "images", folders / "masks", label_map=table)
    with pytest.raises(DatasetError, match=r"a.png: label values \[26\] are not values that label_map maps to class"):
        dataset[0]


def test_list_file_and_unlabelled(folders):
    (folders / "train.txt").write_text("# image label\nimages/a.jpg masks/a.png\nimages/sub/b.jpg\n")
    dataset = FolderDataset(list_file=folders / "train.txt", num_classes=30)
    assert len(dataset) == 2 and dataset[0]["label"] is not None and dataset[1]["label"] is None
    (folders / "bad.txt").write_text("images/a.jpg masks/missing.png\n")
    with pytest.raises(DatasetError, match=r"bad.txt:1: label .*missing.png"):
        FolderDataset(list_file=folders / "bad.txt")
    assert FolderDataset(folders / "images")[0]["label"] is None


def test_missing_mask(folders):
    (folders / "masks" / "a.png").unlink()
    with pytest.raises(DatasetError, match=r"a.jpg: no label file"):
        FolderDataset(folders / "images", folders / "masks")
