"""Mapillary Vistas end to end on a tiny tree with its own config: train, evaluate, and the dataset's class names and
colours in the checkpoint and the evaluation output."""

import json

import numpy as np
from PIL import Image

from attnseg.cli.main import main

CLASSES = [("Road", [128, 64, 128], True), ("Car", [0, 0, 142], True), ("Sky", [70, 130, 180], True),
           ("Pothole", [70, 100, 150], False), ("Unlabeled", [0, 0, 0], False)]


def _vistas_v20(root):
    labels = [{"readable": name, "name": name.lower(), "color": color, "evaluate": scored}
              for name, color, scored in CLASSES]
    root.mkdir(parents=True, exist_ok=True)
    (root / "config_v2.0.json").write_text(json.dumps({"labels": labels}))
    rng = np.random.default_rng(0)
    for split in ("training", "validation"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "v2.0" / "labels").mkdir(parents=True)
        for k in range(2):
            label = np.zeros((64, 128), np.uint8)
            label[:20] = 2
            label[40:, 30:90] = 1
            label[50:, :10] = 3
            label[:, 120:] = 4
            image = np.stack([label * 60] * 3, axis=-1).astype(np.uint8) + rng.integers(0, 20, (64, 128, 3), np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"im{k}.jpg")
            palette_image = Image.fromarray(label, mode="P")
            palette_image.putpalette([v for _, color, _ in CLASSES for v in color] + [0] * (768 - 15))
            palette_image.save(root / split / "v2.0" / "labels" / f"im{k}.png")


def test_train_and_eval_on_vistas_carry_its_class_table(tmp_path, capsys):
    _vistas_v20(tmp_path / "vistas")
    config = tmp_path / "config.yaml"
    config.write_text(
        "model:\n  name: psanet_r18_narrow\n  num_classes: 3\n"
        f"data:\n  dataset: mapillary\n  root: {tmp_path / 'vistas'}\n  mapillary_classes: vistas\n"
        "  mapillary_version: v2.0\n  crop_size: [32, 64]\n  class_uniform_tile: 32\n  num_workers: 0\n"
        "train:\n  iters: 2\n  batch_size: 2\n  eval_interval: 2\n  save_interval: 2\n  log_interval: 1\n"
        "  precision: fp32\n  losses:\n    - {output: logits, loss: cross_entropy, weight: 1.0}\n"
        "eval:\n  num_workers: 0\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    sidecar = json.loads((tmp_path / "run" / "checkpoints" / "best.json").read_text())
    assert sidecar["class_names"] == ["Road", "Car", "Sky"]
    assert sidecar["palette"] == [[128, 64, 128], [0, 0, 142], [70, 130, 180]]
    capsys.readouterr()
    assert main(["eval", str(config), "--weights", str(tmp_path / "run"), "--json", str(tmp_path / "m.json"),
                 "--no-progress"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "Road" in printed and "Car" in printed and "Sky" in printed and "Pothole" not in printed
    result = json.loads((tmp_path / "m.json").read_text())
    assert len(result["confusionMatrix"]) == 3
    # Pothole (not evaluated) and Unlabeled pixels are ignored: the confusion counts only Road/Car/Sky pixels.
    scored_per_image = 64 * 128 - 14 * 10 - 64 * 8
    assert sum(map(sum, result["confusionMatrix"])) == 2 * scored_per_image
