"""MapillaryDataset on a tiny fake Vistas v1.2 tree (palette PNG labels), natively and mapped to Cityscapes."""

import json

import numpy as np
import pytest
from PIL import Image

from attnseg.data.labels import CITYSCAPES_CLASSES
from attnseg.data.mapillary import VISTAS_CLASSES, VISTAS_TO_CITYSCAPES, MapillaryDataset
from attnseg.errors import DatasetError

# Vistas index -> expected Cityscapes trainId
CASES = {13: 0, 2: 1, 17: 2, 55: 13, 19: 11, 20: 12, 58: 16, 45: 5, 50: 7, 49: 255, 10: 255, 65: 255, 24: 0}


def _palette_png(path, values):
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette([(i * 37) % 256 for i in range(768)])
    image.save(path)


@pytest.fixture
def vistas(tmp_path):
    for split in ("training", "validation"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir()
        for k in range(2):
            Image.fromarray(np.full((6, 13, 3), 40 * k, np.uint8)).save(tmp_path / split / "images" / f"im{k}.jpg")
            label = np.array(list(CASES) * 6, dtype=np.uint8).reshape(6, 13)
            _palette_png(tmp_path / split / "labels" / f"im{k}.png", label)
    config = {"labels": [{"readable": name, "color": [0, 0, 0]} for name in VISTAS_CLASSES]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_mapping_to_cityscapes(vistas):
    dataset = MapillaryDataset(vistas, "train")
    assert len(dataset) == 2 and dataset.num_classes == 19
    item = dataset[0]
    assert item["image"].shape == (6, 13, 3) and item["name"] == "im0"
    assert item["label"][0].tolist() == list(CASES.values())  # palette indices, not colours
    assert dataset.validate("all") == {"sizes": 2, "values": 2}


def test_native_classes(vistas):
    dataset = MapillaryDataset(vistas, "val", classes="vistas")
    expected = [k if k < 65 else 255 for k in CASES]
    assert dataset.num_classes == 65 and dataset[1]["label"][0].tolist() == expected


def test_every_cityscapes_class_is_reachable():
    assert set(VISTAS_TO_CITYSCAPES[:66].tolist()) == set(range(len(CITYSCAPES_CLASSES))) | {255}
    assert len(VISTAS_CLASSES) == 66 and VISTAS_TO_CITYSCAPES[65] == 255


def test_missing_label_and_wrong_config(vistas):
    (vistas / "training" / "labels" / "im1.png").unlink()
    with pytest.raises(DatasetError, match=r"im1.jpg: no label file"):
        MapillaryDataset(vistas, "train")
    (vistas / "config.json").write_text(json.dumps({"labels": [{"readable": "Road"}]}))
    with pytest.raises(DatasetError, match="config.json"):
        MapillaryDataset(vistas, "val")


def test_prepare_mapillary_lists_every_bad_file(vistas, capsys):
    from attnseg.cli.main import main
    from attnseg.data.prepare import check_mapillary

    summary = check_mapillary(vistas, workers=1, progress=False, all_values=True)
    assert summary.images == {"train": 2, "val": 2} and summary.decoded == 4
    bad_value = vistas / "training" / "labels" / "im0.png"
    _palette_png(bad_value, np.full((6, 13), 70))
    wrong_size = vistas / "validation" / "labels" / "im1.png"
    _palette_png(wrong_size, np.zeros((5, 13)))
    (vistas / "validation" / "labels" / "im0.png").unlink()
    assert main(["prepare", "mapillary", str(vistas), "--all-values", "--workers", "1", "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("attnseg prepare: error: 3 bad files") and len(lines) == 4
    assert f"  {bad_value}: label values [70] are not Mapillary Vistas v1.2 class indices (0..65)" in lines
    assert any(line.startswith(f"  {wrong_size}: label is 13x5 but its image") for line in lines)
    assert any(line.startswith(f"  {vistas / 'validation' / 'images' / 'im0.jpg'}: no label file") for line in lines)
    with pytest.raises(DatasetError, match=r"im0.png: label values \[70\]"):
        MapillaryDataset(vistas, "train")[0]  # and when training reads it


def _v20_tree(root, evaluate_last=False):
    """A v2.0 archive: v1.2 and v2.0 labels side by side, with both configs; label 3 is not evaluated."""
    labels = [{"readable": f"Class {i}", "color": [i, 2 * i, 3 * i], "evaluate": i != 3} for i in range(6)]
    labels.append({"readable": "Unlabeled", "color": [0, 0, 0], "evaluate": evaluate_last})
    (root / "config_v2.0.json").write_text(json.dumps({"labels": labels}))
    for split in ("training", "validation"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "v2.0" / "labels").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 7, 3), np.uint8)).save(root / split / "images" / "a.jpg")
        _palette_png(root / split / "v2.0" / "labels" / "a.png", np.array([[0, 1, 2, 3, 4, 5, 6]] * 4))
    return root


def test_v20_classes_names_and_colours_come_from_its_config(tmp_path):
    dataset = MapillaryDataset(_v20_tree(tmp_path), "train", classes="vistas", version="v2.0")
    # Label 3 and Unlabeled are not evaluated: five classes, consecutive ids, ignore for the rest.
    assert dataset.num_classes == 5 and dataset.class_names == ("Class 0", "Class 1", "Class 2", "Class 4", "Class 5")
    np.testing.assert_array_equal(dataset.palette[3], [4, 8, 12])
    label = dataset[0]["label"]
    np.testing.assert_array_equal(label[0], [0, 1, 2, 255, 3, 4, 255])
    with pytest.raises(DatasetError, match="Cityscapes mapping is defined for Vistas v1.2"):
        MapillaryDataset(tmp_path, "train", classes="cityscapes", version="v2.0")
    (tmp_path / "config_v2.0.json").unlink()
    with pytest.raises(DatasetError, match=r"config_v2.0.json: not found"):
        MapillaryDataset(tmp_path, "train", classes="vistas", version="v2.0")


def test_v12_names_and_colours_without_a_config(vistas):
    from attnseg.data.mapillary import VISTAS_PALETTE

    (vistas / "config.json").unlink()
    dataset = MapillaryDataset(vistas, "val", classes="vistas")
    assert dataset.num_classes == 65 and dataset.class_names[13] == "Road"
    np.testing.assert_array_equal(dataset.palette[13], VISTAS_PALETTE[13])
    expected = sorted({value for value in CASES if value != 65} | {255})  # Unlabeled (65) becomes ignore
    assert np.unique(dataset[0]["label"]).tolist() == expected
