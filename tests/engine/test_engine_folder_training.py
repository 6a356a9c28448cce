"""Training and evaluating on a `data.dataset: folder` dataset through the one build path (`attnseg.config.training`):
the labels read for each image are its own, from the layout `FolderDataset` documents."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from attnseg.config import load_config
from attnseg.config.train_data import build_train_datasets

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "synthetic_psanet_cpu.yaml"
NUM_CLASSES = 21
# Every image has its own size, so an image paired with another image's mask is refused (size mismatch) instead of
# silently training on wrong labels.
SIZES = {"train": [(40, 48), (44, 52), (48, 56)], "val": [(36, 44), (40, 60)]}


def _mask(height: int, width: int, index: int, split: str) -> np.ndarray:
    """Class bands whose widths depend on the image; training masks use class 20 (above Cityscapes' 19 classes, so a
    folder dataset that ignores model.num_classes refuses them), validation masks classes 0..2."""
    mask = np.zeros((height, width), np.uint8)
    mask[:, width // 3 + index:] = 1
    mask[:, 2 * width // 3:] = 20 if split == "train" else 2
    mask[: 2 + index] = 255
    return mask


def _image(mask: np.ndarray) -> np.ndarray:
    """Colour = class, so the model can learn the masks from the pixels."""
    colours = np.zeros((256, 3), np.uint8)
    colours[[0, 1, 2, 20, 255]] = [[200, 40, 40], [40, 200, 40], [40, 40, 200], [40, 40, 200], [128, 128, 128]]
    return colours[mask]


@pytest.fixture
def folder_data(tmp_path: Path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    root = tmp_path / "folder"
    masks: dict[str, list[np.ndarray]] = {}
    for split, sizes in SIZES.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        masks[split] = []
        for index, (height, width) in enumerate(sizes):
            mask = _mask(height, width, index, split)
            cv2.imwrite(str(root / "images" / split / f"img{index}.png"), _image(mask)[..., ::-1])
            cv2.imwrite(str(root / "labels" / split / f"img{index}.png"), mask)
            masks[split].append(mask)
    return root, masks


def test_folder_training_split_pairs_each_image_with_its_own_mask(folder_data):
    root, masks = folder_data
    config = load_config(CONFIG, ["data.dataset=folder", f"data.root={root}", f"model.num_classes={NUM_CLASSES}"])
    fine, coarse = build_train_datasets(config.data, num_classes=NUM_CLASSES)
    assert coarse is None and len(fine) == 3
    assert [(s.image.relative_to(root).as_posix(), s.label.relative_to(root).as_posix()) for s in fine.samples] == [
        (f"images/train/img{i}.png", f"labels/train/img{i}.png") for i in range(3)]  # fmt: skip
    for index, mask in enumerate(masks["train"]):
        assert np.array_equal(fine[index]["label"], mask)  # class 20 accepted: the model has 21 classes


def test_attnseg_train_then_eval_on_a_folder_dataset(folder_data, tmp_path, capsys):
    from attnseg.cli.main import main

    root, masks = folder_data
    run = tmp_path / "run"
    overrides = [f"data.root={root}", "data.dataset=folder", f"model.num_classes={NUM_CLASSES}",
                 "model.kwargs={mask_size: [7, 7]}", "train.iters=2", "train.batch_size=2", "data.crop_size=[32,32]",
                 "data.num_workers=0", "train.eval_interval=0", "train.log_interval=1", "eval.num_workers=0",
                 "train.precision=fp32", "eval.precision=fp32"]  # fmt: skip
    assert main(["train", str(CONFIG), *overrides, "--out", str(run), "--no-progress", "--device", "cpu"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if "loss" in r] == [1, 2] and [r["iter"] for r in records if "miou" in r] == [2]
    sidecar = json.loads((run / "checkpoints" / "last.json").read_text())
    assert sidecar["class_names"] == [f"class_{i}" for i in range(NUM_CLASSES)]

    report = tmp_path / "eval.json"
    assert main(["eval", str(run / "config.yaml"), "--weights", str(run), "--no-progress", "--json", str(report)]) == 0
    metrics = json.loads(report.read_text())
    confusion = np.asarray(metrics["confusionMatrix"])
    labels = np.concatenate([mask.ravel() for mask in masks["val"]])
    expected = np.bincount(labels[labels != 255], minlength=NUM_CLASSES)
    assert metrics["numImages"] == 2 and metrics["numPixels"] == expected.sum()
    assert np.array_equal(confusion.sum(axis=1), expected)  # rows = the labels read: exactly the val masks


def test_a_wrong_pairing_is_refused(folder_data):
    from attnseg.errors import DatasetError

    root, _ = folder_data
    (root / "labels" / "train" / "img0.png").rename(root / "labels" / "train" / "swap.png")
    (root / "labels" / "train" / "img1.png").rename(root / "labels" / "train" / "img0.png")
    (root / "labels" / "train" / "swap.png").rename(root / "labels" / "train" / "img1.png")
    config = load_config(CONFIG, ["data.dataset=folder", f"data.root={root}", f"model.num_classes={NUM_CLASSES}"])
    fine, _ = build_train_datasets(config.data, num_classes=NUM_CLASSES)
    with pytest.raises(DatasetError, match="img0.png: label is 52x44 but its image"):
        fine[0]


def test_trainer_owns_channels_last(tmp_path):
    from attnseg.config.training import build_training
    from attnseg.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "data", num_train=2, num_val=1, height=32, width=64)
    overrides = [f"data.root={root}", "model.kwargs={mask_size: [7, 7]}", "train.iters=1", "train.batch_size=2",
                 "data.crop_size=[32,32]", "data.num_workers=0", "train.precision=fp32", "train.ema_decay=0.9"]
    for channels_last in (True, False):
        config = load_config(CONFIG, [*overrides, f"train.channels_last={str(channels_last).lower()}"])
        setup = build_training(config, tmp_path / f"run_{channels_last}", progress=False)
        weights = [next(m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] == 3)
                   for module in (setup.model, setup.evaluated_model)]  # fmt: skip
        assert setup.evaluated_model is not setup.model  # the EMA copy, made after the conversion
        for weight in weights:
            assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert setup.trainer.optimizer.param_groups[0]["params"][0] is next(setup.model.parameters())


def test_a_single_cpu_training_gets_a_thread_watch_unless_threads_are_fixed(tmp_path, monkeypatch):
    from attnseg.config.training import build_training
    from attnseg.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "data", num_train=2, num_val=1, height=32, width=64)
    config = load_config(CONFIG, [f"data.root={root}", "model.kwargs={mask_size: [7, 7]}", "train.iters=1",
                                  "data.crop_size=[32,32]", "data.num_workers=0", "train.precision=fp32"])  # fmt: skip
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert build_training(config, tmp_path / "run_a", progress=False).trainer.thread_watch is not None
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert build_training(config, tmp_path / "run_b", progress=False).trainer.thread_watch is None
