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
