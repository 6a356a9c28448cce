"""`attnseg.inference.topn`: the N lowest-IoU images overall and per class, their strips, merged over processes.

The stand-in model predicts class k where channel 0 is k, so each image's errors are written into its input and its
per-class IoU is known by hand (4x8 images, left half class 0, right half class 1):

    good   all right                                   IoU 1, 1            mIoU 1
    worst  the class-1 half predicted 0                IoU 16/32, 0        mIoU 0.25
    bad    half the class-1 half predicted 0           IoU 16/24, 8/16     mIoU 0.5833
    mid    2 class-0 pixels predicted 2                IoU 14/16, 1, 0     mIoU 0.625
    cls2   4 pixels of class 2, all right              IoU 1, 1, 1         mIoU 1
"""

import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from attnseg.inference.eval_job import EvalModel, EvalOutputs, run_evaluation
from attnseg.inference.evaluate import InferenceRecipe
from attnseg.inference.topn import WorstImages, format_worst_table, image_iou, image_scores
from attnseg.models.outputs import SegmentationOutput

CLASSES = ["c0", "c 1", "c2"]  # "c 1": a class name that needs a folder-safe spelling
PALETTE = np.array([[10, 20, 30], [200, 100, 0], [0, 255, 0]], np.uint8)
ORDER = ["good", "worst", "bad", "mid", "cls2"]


class Channel0(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x):
        centres = torch.arange(3, dtype=x.dtype).view(1, -1, 1, 1)
        return SegmentationOutput(logits=-self.scale * (x[:, :1] - centres) ** 2)


def _sample(kind: str) -> tuple[np.ndarray, np.ndarray]:
    label = np.zeros((4, 8), np.int64)
    label[:, 4:] = 1
    predicted = label.copy()
    if kind == "worst":
        predicted[:, 4:] = 0
    elif kind == "bad":
        predicted[:2, 4:] = 0
    elif kind == "mid":
        predicted[0, :2] = 2
    elif kind == "cls2":
        label[0, :4] = predicted[0, :4] = 2
    elif kind == "good":
        label[3, 0] = 255  # ignored: whatever is predicted there counts nowhere
        predicted[3, 0] = 2
    return label, predicted


def _batches(kinds=ORDER):
    batches = []
    for kind in kinds:
        label, predicted = _sample(kind)
        image = torch.from_numpy(predicted).float()[None, None].expand(1, 3, 4, 8).clone()
        batches.append({"image": image, "label": torch.from_numpy(label)[None], "name": [f"city/{kind}"]})
    return batches


def _evaluate(batches, out_dir, n=2):
    outputs = EvalOutputs(CLASSES, PALETTE, (0, 0, 0), (1, 1, 1), dump_dir=out_dir, dump_kinds=(), topn=n)
    model = EvalModel(Channel0(), CLASSES, PALETTE, "channel0")
    return run_evaluation(model, batches, InferenceRecipe(), outputs=outputs, progress=False)


def _names(records):
    return [record["image"].split("/")[1] for record in records]


def test_image_iou_from_the_images_own_confusion():
    for kind, expected in [("good", {0: 1.0, 1: 1.0}), ("worst", {0: 0.5, 1: 0.0}), ("bad", {0: 2 / 3, 1: 0.5}),
                           ("mid", {0: 0.875, 1: 1.0, 2: 0.0}), ("cls2", {0: 1.0, 1: 1.0, 2: 1.0})]:  # fmt: skip
        label, predicted = _sample(kind)
        miou, ious = image_scores(*image_iou(predicted, label, 3))
        assert ious == pytest.approx(expected) and miou == pytest.approx(np.mean(list(expected.values()))), kind
    assert image_scores(*image_iou(np.zeros((2, 2)), np.full((2, 2), 255), 3)) == (None, {})


def test_worst_images_ranked_written_and_indexed(tmp_path):
    (tmp_path / "topn" / "overall").mkdir(parents=True)
    (tmp_path / "topn" / "overall" / "01_from_an_earlier_run.png").write_bytes(b"old")
    run = _evaluate(_batches(), tmp_path)
    worst = run.worst
    assert _names(worst["overall"]) == ["worst", "bad"]
    assert [r["iou"] for r in worst["overall"]] == pytest.approx([0.25, 7 / 12])
    assert {name: _names(records) for name, records in worst["classes"].items()} == {
        "c0": ["worst", "bad"], "c 1": ["worst", "bad"], "c2": ["mid", "cls2"]}  # c2: only where it appears
    assert worst["classes"]["c2"][0] == {"rank": 1, "image": "city/mid", "iou": 0.0, "file": "c2/01_city_mid.png"}
    root = tmp_path / "topn"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "c0/01_city_worst.png", "c0/02_city_bad.png", "c2/01_city_mid.png", "c2/02_city_cls2.png",
        "c_1/01_city_worst.png", "c_1/02_city_bad.png", "overall/01_city_worst.png", "overall/02_city_bad.png",
        "topn.json"]  # the earlier run's strip and the candidates are gone
    assert json.loads((root / "topn.json").read_text()) == worst
    strip = cv2.imread(str(root / "overall" / "01_city_worst.png"))[..., ::-1]
    label, predicted = _sample("worst")
    assert strip.shape == (4, 24, 3)
    assert np.array_equal(strip[:, 8:16], PALETTE[label])  # input | ground truth | prediction over the input
    assert np.array_equal(strip[:, 16:], cv2.addWeighted(strip[:, :8], 0.5, PALETTE[predicted], 0.5, 0))
    table = format_worst_table(worst["overall"])
    assert "0.2500  city/worst" in table.splitlines()[2] and len(table.splitlines()) == 4


def test_scores_only_without_a_folder_and_refusals():
    tracker = WorstImages(3, CLASSES, PALETTE, (0, 0, 0), (1, 1, 1))
    for batch in _batches():
        predictions = batch["image"][:, 0].round().to(torch.uint8).numpy()
        tracker(batch["name"], predictions, {"batch": batch})
    tracker(["unlabelled"], np.zeros((1, 4, 8), np.uint8), {"batch": {"label": None}})
    result = tracker.finish()
    assert _names(result["overall"]) == ["worst", "bad", "mid"] and result["overall"][0]["file"] is None
    with pytest.raises(ValueError, match="at least 1"):
        WorstImages(0, CLASSES, PALETTE, (0, 0, 0), (1, 1, 1))


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        run = _evaluate(_batches()[rank::2], out_dir)  # shards: good, bad, cls2 | worst, mid
        if rank == 0:
            (out_dir / "rank0.json").write_text(json.dumps(run.worst))
    finally:
        dist.destroy_process_group()


def test_two_processes_merge_their_candidates(tmp_path):
    single = _evaluate(_batches(), tmp_path / "one").worst
    shared = tmp_path / "two"
    shared.mkdir()
    mp.spawn(_worker, args=(str(tmp_path / "init"), shared), nprocs=2, join=True)
    assert json.loads((shared / "rank0.json").read_text()) == single
    for record in single["overall"] + single["classes"]["c2"]:  # strips held by either process
        assert (shared / "topn" / record["file"]).is_file()
    assert (shared / "topn" / "topn.json").is_file()
    assert not [p for p in os.listdir(shared / "topn") if p.startswith(".candidates")]
