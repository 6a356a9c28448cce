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
    with pytest.raises(DatasetError, match=r"a.png: values \[26\]"):
        dataset.validate("all")


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
