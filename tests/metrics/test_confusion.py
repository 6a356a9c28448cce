"""ConfusionMatrix and derived metrics: PaddleSeg golden values, NVIDIA/torchvision formulas, the seeds' log lines."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from parity import NUM_CLASSES, nvidia_golden, nvidia_label, paddle_golden

from attnseg.metrics.confusion import (
    ConfusionMatrix,
    SegmentationMetrics,
    confusion_areas,
    format_class_table,
    format_eval_log,
    metrics_from_confusion,
    metrics_to_json,
    nanmean,
    paddleseg_metrics,
)


@pytest.fixture(scope="module")
def paddle_case() -> dict[str, np.ndarray]:
    return {key: value for key, value in paddle_golden("losses_metrics").items() if key.startswith("M_")}


@pytest.fixture(scope="module")
def paddle_metrics_ours(paddle_case) -> SegmentationMetrics:
    matrix = ConfusionMatrix(NUM_CLASSES)
    matrix.update(torch.from_numpy(paddle_case["M_pred"][:, 0]), torch.from_numpy(paddle_case["M_label"][:, 0]))
    return matrix.compute()


# --------------------------------------------------------------------------------------------------------
# PaddleSeg golden values
# --------------------------------------------------------------------------------------------------------
def test_areas_equal_paddleseg_exactly(paddle_metrics_ours, paddle_case):
    intersect, pred_area, label_area = confusion_areas(paddle_metrics_ours.confusion)
    np.testing.assert_array_equal(intersect, paddle_case["M_intersect_area"])
    np.testing.assert_array_equal(pred_area, paddle_case["M_pred_area"])
    np.testing.assert_array_equal(label_area, paddle_case["M_label_area"])
    assert paddle_metrics_ours.num_images == 2


@pytest.mark.parametrize(("variant", "absent_iou"), [("v28", 0.0), ("head", 1.0)])
def test_paddleseg_formulas_match_golden(paddle_metrics_ours, paddle_case, variant, absent_iou):
    values = paddleseg_metrics(paddle_metrics_ours.confusion, absent_iou=absent_iou)
    for key in ("class_iou", "miou", "acc", "kappa", "class_dice", "mdice", "class_precision", "class_recall"):
        np.testing.assert_allclose(values[key], paddle_case[f"M_{variant}_{key}"], rtol=0, atol=1e-12, err_msg=key)
    # the Feb-2021 "Class Acc" (what the published logs print) is per-class precision
    np.testing.assert_allclose(values["class_acc"], paddle_case["M_v20_class_acc"], rtol=0, atol=1e-12)


def test_our_policy_on_paddle_case(paddle_metrics_ours, paddle_case):
    """Absent class 18 is NaN and left out of the means; class 17 (labelled, never predicted) has IoU 0."""
    m = paddle_metrics_ours
    assert math.isnan(m.class_iou[18]) and math.isnan(m.class_dice[18]) and math.isnan(m.class_recall[18])
    assert m.class_iou[17] == 0.0 and m.class_recall[17] == 0.0 and math.isnan(m.class_precision[17])
    np.testing.assert_allclose(m.class_iou[:18], paddle_case["M_v28_class_iou"][:18], rtol=0, atol=1e-12)
    assert m.miou == pytest.approx(paddle_case["M_v28_class_iou"][:18].mean(), abs=1e-12)
    assert m.mdice == pytest.approx(paddle_case["M_v28_class_dice"][:18].mean(), abs=1e-12)
    # Acc and Kappa do not depend on the absent-class policy
    assert m.acc == pytest.approx(float(paddle_case["M_v28_acc"]), abs=1e-12)
    assert m.kappa == pytest.approx(float(paddle_case["M_v28_kappa"]), abs=1e-12)
    assert m.acc == pytest.approx(float(paddle_case["M_v20_acc"]), abs=1e-12)
    assert m.kappa == pytest.approx(float(paddle_case["M_v20_kappa"]), abs=1e-12)


# --------------------------------------------------------------------------------------------------------
# NVIDIA (fast_hist + nanmean IoU) and torchvision (ConfusionMatrix.compute) formulas, restated
# --------------------------------------------------------------------------------------------------------
def _nvidia_hist(pred: np.ndarray, label: np.ndarray, n: int) -> np.ndarray:
    mask = (label >= 0) & (label < n)
    return np.bincount(n * label[mask].astype(int) + pred[mask], minlength=n * n).reshape(n, n)


def test_matches_nvidia_hist_and_iu_on_golden_label():
    label = nvidia_label().numpy()
    np.testing.assert_array_equal(label, nvidia_golden()["input_label"])  # the recipe reproduces the stored label
    rng = np.random.default_rng(5)
    pred = np.where(rng.random(label.shape) < 0.6, np.minimum(label, 18), rng.integers(0, 8, label.shape))
    pred[pred == 3] = 4  # one class never predicted, so its precision is undefined
    hist = _nvidia_hist(pred, label, NUM_CLASSES)
    with np.errstate(invalid="ignore", divide="ignore"):
        iu = np.diag(hist) / (hist.sum(axis=1) + hist.sum(axis=0) - np.diag(hist))
    matrix = ConfusionMatrix(NUM_CLASSES)
    matrix.update(torch.from_numpy(pred).to(torch.uint8), torch.from_numpy(label))
    m = matrix.compute()
    np.testing.assert_array_equal(m.confusion, hist)
    np.testing.assert_array_equal(m.class_iou, iu)  # NaN == NaN, bit-identical otherwise
    assert m.miou == np.nanmean(iu)
    assert m.acc == np.diag(hist).sum() / hist.sum()
    # torchvision's per-class "acc" is recall
    np.testing.assert_array_equal(m.class_recall, np.diag(hist) / hist.sum(axis=1))


def test_absent_class_is_nan_and_skipped():
    confusion = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    m = metrics_from_confusion(confusion)
    assert math.isnan(m.class_iou[2]) and m.miou == pytest.approx((5 / 8 + 3 / 6) / 2)
    predicted_only = metrics_from_confusion(np.array([[5, 1, 1], [2, 3, 0], [0, 0, 0]]))
    assert predicted_only.class_iou[2] == 0.0  # false positives of an unlabelled class count
    assert predicted_only.miou == pytest.approx((5 / 9 + 3 / 6 + 0) / 3)


# --------------------------------------------------------------------------------------------------------
# Accumulation behaviour
# --------------------------------------------------------------------------------------------------------
def _random_batch(seed: int, shape=(3, 20, 30), k: int = 7):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, k, shape, generator=g)
    target[torch.rand(shape, generator=g) < 0.2] = 255
    pred = torch.randint(0, k, shape, generator=g)
    return pred, target


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_any_integer_dtype_and_2d_or_3d_give_the_same_counts(dtype):
    pred, target = _random_batch(0)
    whole = ConfusionMatrix(7)
    whole.update(pred.to(dtype), target.to(torch.int64 if dtype == torch.int16 else dtype))
    per_image = ConfusionMatrix(7)
    for i in range(pred.shape[0]):
        per_image.update(pred[i].numpy(), target[i].numpy())  # numpy inputs, (H, W)
    np.testing.assert_array_equal(whole.confusion, per_image.confusion)
    assert whole.num_images == per_image.num_images == 3
    valid = target != 255
    expected = np.zeros((7, 7), np.int64)
    np.add.at(expected, (target[valid].numpy(), pred[valid].numpy()), 1)
    np.testing.assert_array_equal(whole.confusion, expected)


def test_numpy_views_with_negative_strides():
    pred, target = _random_batch(2)
    flipped = ConfusionMatrix(7)
    flipped.update(pred.numpy()[:, :, ::-1], target.numpy()[:, :, ::-1])
    plain = ConfusionMatrix(7)
    plain.update(pred, target)
    np.testing.assert_array_equal(flipped.confusion, plain.confusion)


def test_out_of_range_prediction_is_a_miss_and_ignore_inside_range():
    target = torch.tensor([[0, 0, 1, 1, 2, 2]])
    pred = torch.tensor([[0, 255, 1, 1, 7, 2]])
    matrix = ConfusionMatrix(3)
    matrix.update(pred, target)
    m = matrix.compute()
    assert m.missed.tolist() == [1, 0, 1] and m.num_pixels == 6
    assert m.class_iou.tolist() == [0.5, 1.0, 0.5] and m.acc == pytest.approx(4 / 6)
    ignoring_zero = ConfusionMatrix(3, ignore_index=0)
    ignoring_zero.update(pred, target)
    assert ignoring_zero.compute().num_pixels == 4 and math.isnan(ignoring_zero.compute().class_iou[0])


def test_reset_and_limiting_cases():
    matrix = ConfusionMatrix(4)
    target = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    matrix.update(target, target)
    perfect = matrix.compute()
    assert (perfect.miou, perfect.acc, perfect.kappa, perfect.mdice) == (1.0, 1.0, 1.0, 1.0)
    matrix.reset()
    assert matrix.num_images == 0 and matrix.confusion.sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice" or division warnings
        empty = matrix.compute()
        single_class = metrics_from_confusion(np.diag([9, 0, 0]))
    assert all(math.isnan(v) for v in (empty.miou, empty.acc, empty.kappa, empty.mdice))
    assert single_class.miou == 1.0 and math.isnan(single_class.kappa)  # chance agreement 1: kappa undefined
    assert math.isnan(nanmean(np.array([np.nan])))


def test_bad_inputs_are_rejected():
    matrix = ConfusionMatrix(3)
    with pytest.raises(TypeError, match="argmax"):
        matrix.update(torch.rand(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="differs"):
        matrix.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        matrix.update(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))


def test_counts_stay_on_the_requested_device_and_all_reduce_sums(tmp_path):
    matrix = ConfusionMatrix(7, device="cpu")
    pred, target = _random_batch(1)
    matrix.update(pred, target)
    matrix.all_reduce()  # not initialised: no-op
    before = matrix.confusion.copy()
    assert matrix._counts.device.type == "cpu"
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    try:
        matrix.all_reduce()
    finally:
        torch.distributed.destroy_process_group()
    np.testing.assert_array_equal(matrix.confusion, before)
    assert matrix.num_images == 3


# --------------------------------------------------------------------------------------------------------
# Log lines and reports
# --------------------------------------------------------------------------------------------------------
# From the published CityscapesSOTA evaluation log (timestamps and trailing blanks removed)
SEED_CLASS_IOU = [0.9902, 0.9165, 0.951, 0.7518, 0.7957, 0.7701, 0.8016, 0.8758, 0.9418, 0.7497,
                  0.9611, 0.8795, 0.7442, 0.9688, 0.9207, 0.957, 0.9162, 0.8, 0.8383]  # fmt: skip
SEED_CLASS_ACC = [0.9958, 0.9565, 0.9751, 0.8854, 0.875, 0.8733, 0.8787, 0.9354, 0.9675, 0.8899,
                  0.9768, 0.9302, 0.8448, 0.9833, 0.9609, 0.98, 0.9714, 0.8966, 0.8985]  # fmt: skip
SEED_LINES = [
    "[EVAL] #Images=500 mIoU=0.8700 Acc=0.9756 Kappa=0.9683 Dice=0.9271",
    "[EVAL] Class IoU:",
    "[0.9902 0.9165 0.951  0.7518 0.7957 0.7701 0.8016 0.8758 0.9418 0.7497",
    " 0.9611 0.8795 0.7442 0.9688 0.9207 0.957  0.9162 0.8    0.8383]",
    "[EVAL] Class Acc:",
    "[0.9958 0.9565 0.9751 0.8854 0.875  0.8733 0.8787 0.9354 0.9675 0.8899",
    " 0.9768 0.9302 0.8448 0.9833 0.9609 0.98   0.9714 0.8966 0.8985]",
]


def _metrics_with(class_iou, class_acc, miou, acc, kappa, mdice) -> SegmentationMetrics:
    k = len(class_iou)
    # unrounded values, so the test checks the rounding too
    jitter = np.linspace(-4e-5, 4e-5, k)
    return SegmentationMetrics(
        miou=miou, class_iou=np.array(class_iou) + jitter, acc=acc, class_acc=np.array(class_acc) - jitter,
        kappa=kappa, mdice=mdice, class_dice=np.full(k, 0.9), class_precision=np.array(class_acc),
        class_recall=np.full(k, 0.9), confusion=np.eye(k, dtype=np.int64), missed=np.zeros(k, np.int64),
    )  # fmt: skip


def test_eval_log_reproduces_the_published_lines():
    metrics = _metrics_with(SEED_CLASS_IOU, SEED_CLASS_ACC, 0.870012, 0.97556, 0.96834, 0.92706)
    with np.printoptions(precision=2, linewidth=200):  # whatever the caller set, the lines stay the same
        assert format_eval_log(metrics, num_images=500) == SEED_LINES


def test_eval_log_takes_num_images_from_the_matrix(paddle_metrics_ours):
    lines = format_eval_log(paddle_metrics_ours)
    assert lines[0].startswith("[EVAL] #Images=2 mIoU=0.5284 Acc=0.7117 Kappa=0.6940 Dice=")
    assert lines[3].endswith("0.5506 0.        nan]")  # class 17: IoU 0; class 18: absent


def test_class_table_and_json(paddle_metrics_ours):
    names = [f"class{i}" for i in range(NUM_CLASSES)]
    table = format_class_table(paddle_metrics_ours, names).splitlines()
    assert table[0].split() == ["class", "IoU", "Acc", "Dice"]
    assert len({len(row) for row in table}) == 1  # aligned
    assert table[2].split() == ["class0", "0.5624", "0.7250", "0.7200"]
    assert table[-1].split()[:2] == ["mean", f"{paddle_metrics_ours.miou:.4f}"]
    data = metrics_to_json(paddle_metrics_ours, names)
    text = json.dumps(data, allow_nan=False)  # strict JSON: NaN written as null
    assert json.loads(text)["classes"]["class18"]["IoU"] is None
    assert data["mIoU"] == paddle_metrics_ours.miou and data["numImages"] == 2
    assert np.array_equal(np.array(data["confusionMatrix"]), paddle_metrics_ours.confusion)
    with pytest.raises(ValueError, match="class names"):
        format_class_table(paddle_metrics_ours, names[:3])
