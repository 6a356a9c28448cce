"""The trainer's TensorBoard events, read back with TensorBoard's own event reader: a scalar per loss term, the
learning rate and mIoU at the logged iterations, and the image | prediction | label overlay at each evaluation."""

import io
import json

import numpy as np
import pytest
import torch

from attnseg.config import DataConfig, TrainConfig
from attnseg.config.train_data import build_train_data
from attnseg.config.training import build_optimizer
from attnseg.engine.optim import poly_lr
from attnseg.engine.trainer import Trainer

import train_worker

pytest.importorskip("tensorboard", reason="tensorboard is the optional `tensorboard` extra (also in `dev`)")
from PIL import Image  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def test_events_hold_every_loss_term_lr_miou_and_overlays(tmp_path):
    torch.manual_seed(0)
    train_cfg = TrainConfig(iters=4, batch_size=2, lr=0.05, seed=3)
    data_cfg = DataConfig(crop_size=(16, 24), scale_range=(1.0, 1.0), num_workers=0)
    data = build_train_data(data_cfg, train_cfg, num_classes=train_worker.NUM_CLASSES,
                            fine=train_worker.make_samples(count=8), progress=False)
    model = train_worker.TinySegNet()
    scores = iter([0.25, 0.5])
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    trainer = Trainer(model, train_worker.criterion(), build_optimizer(model, train_cfg), data.loader, data.sampler,
                      max_iters=4, run_dir=tmp_path, poly_power=2.0, log_interval=1,
                      evaluate_fn=lambda _model: {"miou": next(scores)}, eval_interval=2, progress=False,
                      tensorboard=True, palette=palette)
    trainer.train()

    event_files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(event_files) == 1
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/main", "train/aux", "train/loss", "train/lr", "eval/miou"} <= set(tags["scalars"])
    for name in ("train/main", "train/aux", "train/loss", "train/lr"):
        assert [e.step for e in events.Scalars(name)] == [1, 2, 3, 4], name
    lrs = [e.value for e in events.Scalars("train/lr")]
    expected = [poly_lr(i, base_lr=0.05, max_iters=4, power=2.0) for i in range(4)]
    assert np.allclose(lrs, expected, rtol=1e-6)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    for name in ("main", "aux", "loss"):
        assert np.allclose([e.value for e in events.Scalars(f"train/{name}")], [r[name] for r in records], rtol=1e-6)
    main, aux, total = (np.array([e.value for e in events.Scalars(f"train/{n}")]) for n in ("main", "aux", "loss"))
    assert np.allclose(main + aux, total, rtol=1e-5)
    assert [(e.step, e.value) for e in events.Scalars("eval/miou")] == [(2, 0.25), (4, 0.5)]

    assert tags["images"] == ["train/overlay"]
    overlays = events.Images("train/overlay")
    assert [e.step for e in overlays] == [2, 4]
    picture = np.asarray(Image.open(io.BytesIO(overlays[-1].encoded_image_string)).convert("RGB"))
    assert picture.shape == (16, 3 * 24, 3)  # image | prediction | label of one 16x24 crop
    label_part = picture[:, 48:].reshape(-1, 3)
    assert {tuple(c) for c in np.unique(label_part, axis=0)} <= {tuple(c) for c in palette}

