"""`evaluate_model` pipelined (read-ahead thread, background writer) against one step after the other, and the fast
first-maximum labels against ``max(dim=1).indices``."""

import os
import threading

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from attnseg.config.build import EvalSampleDataset, build_eval_loader
from attnseg.config.schema import DataConfig
from attnseg.data.labels import CITYSCAPES_PALETTE, train_id_to_id
from attnseg.errors import DatasetError
from attnseg.fileio import TEMP_SUFFIX
from attnseg.inference import evaluate as evaluate_module
from attnseg.inference.dump import PredictionDumper
from attnseg.inference.evaluate import evaluate_model, first_max_labels, scores_to_labels
from attnseg.models.outputs import SegmentationOutput

NUM_CLASSES = 5


# --- first_max_labels: identical to max(dim=1).indices --------------------------------------------------------


def _reference(scores):
    return scores.max(dim=1).indices


@pytest.mark.parametrize("classes", [1, 2, 19, 256])
def test_first_max_labels_equals_max_indices_on_random_scores(classes):
    scores = torch.randn(2, classes, 9, 13, generator=torch.Generator().manual_seed(classes))
    labels = first_max_labels(scores)
    assert labels.dtype == torch.uint8 and labels.shape == (2, 9, 13)
    assert torch.equal(labels.long(), _reference(scores))


def test_first_max_labels_takes_the_first_of_equal_maxima():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (2, 19, 16, 24), generator=generator).float()  # ties almost everywhere
    scores[0, :, 0, 0] = 0.0
    scores[0, 7, 0, 0] = -0.0  # -0.0 == 0.0: still the first equal one wins
    scores[1, :, 1, 1] = float("-inf")
    scores[1, 4:6, 2, 2] = float("inf")
    assert torch.equal(first_max_labels(scores).long(), _reference(scores))
    assert int(first_max_labels(scores)[1, 1, 1]) == 0 and int(first_max_labels(scores)[1, 2, 2]) == 4


def test_first_max_labels_blocks_cover_every_pixel(monkeypatch):
    monkeypatch.setattr(evaluate_module, "_FIRST_MAX_BLOCK", 7)  # many blocks, a ragged last one
    scores = torch.randn(3, 6, 5, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(first_max_labels(scores).long(), _reference(scores))


def test_first_max_labels_declines_what_it_does_not_handle():
    scores = torch.randn(1, 4, 6, 8)
    assert first_max_labels(scores.contiguous(memory_format=torch.channels_last)) is None
    assert first_max_labels(scores.to(torch.bfloat16)) is None
    assert first_max_labels(torch.randn(1, 257, 2, 2)) is None
    with_nan = scores.clone()
    with_nan[0, 2, 3, 3] = float("nan")
    assert first_max_labels(with_nan) is None
    # scores_to_labels falls back to max, so its result is the same in every case
    for case in (scores.contiguous(memory_format=torch.channels_last), with_nan, torch.randn(1, 257, 2, 2)):
        assert torch.equal(scores_to_labels(case).long(), _reference(case))


def test_scores_to_labels_after_resize_equals_max_of_the_resized_scores():
    scores = torch.randn(2, 19, 7, 9, generator=torch.Generator().manual_seed(2))
    resized = torch.nn.functional.interpolate(scores, size=(20, 31), mode="bilinear", align_corners=False)
    assert torch.equal(scores_to_labels(scores, (20, 31)).long(), _reference(resized))


# --- evaluate_model pipelined -----------------------------------------------------------------------------------


class NoisyNet(nn.Module):
    """A fixed random 1x1 convolution: predictions vary per pixel, with near-ties."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, NUM_CLASSES, 1)

    def forward(self, x):
        return SegmentationOutput(logits=self.conv(x))


def _batches(count=4, height=24, width=40):
    generator = torch.Generator().manual_seed(3)
    batches = []
    for index in range(count):
        labels = torch.randint(0, NUM_CLASSES, (1, height, width), generator=generator)
        labels[0, :2] = 255
        image = torch.randn(1, 3, height, width, generator=generator)
        batches.append({"image": image, "label": labels, "name": [f"img{index}"]})
    return batches


def _collect(record):
    def on_prediction(names, predictions, extras):
        thread = threading.current_thread().name
        record.append((names[0], predictions.copy(), thread, torch.is_inference_mode_enabled()))

    return on_prediction


def test_pipelined_evaluation_equals_the_sequential_one():
    sequential, pipelined = [], []
    before = evaluate_model(NoisyNet(), _batches(), NUM_CLASSES, progress=False, on_prediction=_collect(sequential),
                            pipeline=False)
    after = evaluate_model(NoisyNet(), _batches(), NUM_CLASSES, progress=False, on_prediction=_collect(pipelined))
    assert np.array_equal(before.confusion, after.confusion) and np.array_equal(before.missed, after.missed)
    assert before.miou == after.miou and after.num_images == 4
    assert [name for name, *_ in pipelined] == ["img0", "img1", "img2", "img3"]  # every call, in order, before return
    for (_, a, *_), (_, b, *_) in zip(sequential, pipelined):
        assert np.array_equal(a, b)
    main = threading.current_thread().name
    assert {thread for _, _, thread, _ in sequential} == {main}
    assert main not in {thread for _, _, thread, _ in pipelined}  # written behind the model
    assert all(mode for *_, mode in pipelined)  # the callback still runs under inference mode


def test_idle_writer_without_pipeline_writes_behind_in_the_idle_class():
    sequential, behind, policies = [], [], []
    record = _collect(behind)

    def on_prediction(names, predictions, extras):
        policies.append(os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None)
        record(names, predictions, extras)

    before = evaluate_model(NoisyNet(), _batches(), NUM_CLASSES, progress=False, on_prediction=_collect(sequential),
                            pipeline=False)
    after = evaluate_model(NoisyNet(), _batches(), NUM_CLASSES, progress=False, on_prediction=on_prediction,
                           pipeline=False, idle_writer=True)
    assert np.array_equal(before.confusion, after.confusion)
    assert [name for name, *_ in behind] == ["img0", "img1", "img2", "img3"]  # all written before it returned
    for (_, a, *_), (_, b, *_) in zip(sequential, behind):
        assert np.array_equal(a, b)
    assert threading.current_thread().name not in {thread for _, _, thread, _ in behind}
    assert all(mode for *_, mode in behind)
    if hasattr(os, "SCHED_IDLE"):
        assert policies == [os.SCHED_IDLE] * 4


def test_pipelined_predictions_equal_max_indices_of_the_scores():
    seen = []

    def on_prediction(names, predictions, extras):
        seen.append(np.array_equal(predictions, extras["scores"].max(dim=1).indices.numpy()))

    evaluate_model(NoisyNet(), _batches(), NUM_CLASSES, progress=False, on_prediction=on_prediction)
    assert seen == [True] * 4


def test_writer_error_is_raised_by_evaluate_model():
    def on_prediction(names, predictions, extras):
        if names[0] == "img1":
            raise OSError("dump/color/img1.png: could not write image (disk full)")

    with pytest.raises(OSError, match="img1.png: could not write image"):
        evaluate_model(NoisyNet(), _batches(), NUM_CLASSES, progress=False, on_prediction=on_prediction)


class _BrokenAt(torch.utils.data.Dataset):
    def __init__(self, bad):
        self.bad = bad

    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == self.bad:
            raise DatasetError(f"val/img{index}.png: cannot be decoded as an image")
        image = np.full((16, 24, 3), 40 * index, np.uint8)
        return {"image": image, "label": np.zeros((16, 24), np.uint8), "name": f"img{index}"}


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_error_surfaces_with_its_one_line_message(workers):
    dataset = EvalSampleDataset(_BrokenAt(2), (0, 0, 0), (1, 1, 1))
    loader = build_eval_loader(DataConfig(), batch_size=1, num_workers=workers, dataset=dataset)
    names = []
    with pytest.raises(DatasetError) as raised:
        evaluate_model(NoisyNet(), loader, NUM_CLASSES, progress=False,
                       on_prediction=lambda n, p, e: names.extend(n))
    assert str(raised.value) == "val/img2.png: cannot be decoded as an image"
    assert names == ["img0", "img1"]  # what came before the bad image was still written


def test_dumps_written_behind_the_model_are_complete(tmp_path):
    dumper = PredictionDumper(tmp_path / "dump", CITYSCAPES_PALETTE[:NUM_CLASSES], (0, 0, 0), (1, 1, 1),
                              kinds=("color", "trainIds", "labelIds", "overlay", "compare"),
                              train_id_to_label_id=train_id_to_id)
    record = []
    evaluate_model(NoisyNet(), _batches(), NUM_CLASSES, progress=False,
                   on_prediction=lambda n, p, e: (record.append(p.copy()), dumper(n, p, e)))
    assert not [path for path in (tmp_path / "dump").rglob("*") if TEMP_SUFFIX in path.name]
    for index, prediction in enumerate(record):
        written = cv2.imread(str(tmp_path / "dump" / "trainIds" / f"img{index}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(written, prediction[0])
        assert (tmp_path / "dump" / "compare" / f"img{index}.png").is_file()
