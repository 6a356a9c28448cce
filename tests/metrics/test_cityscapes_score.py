"""`attnseg.metrics.cityscapes` against cityscapesscripts' own evaluator on a small synthetic gtFine tree."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from attnseg.errors import DatasetError
from attnseg.metrics import cityscapes
from attnseg.metrics.confusion import format_eval_log

# (city, sequence, frame) of the synthetic images; two cities as in the real layout
FRAMES = [("aachen", "000000", f"{i:06d}") for i in (19, 20, 21)] + [("lindau", "000001", f"{i:06d}") for i in (4, 5)]
HEIGHT, WIDTH = 64, 96
# labelIds that get instances: person, rider, car, truck, bus, caravan (ignored), trailer (ignored), train,
# motorcycle, bicycle
INSTANCE_LABELS = [24, 25, 26, 27, 28, 29, 30, 31, 32, 33]


def _make_ground_truth(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A labelIds image (blocky stuff of all non-instance labels) and its instanceIds image."""
    coarse = rng.integers(0, 24, (HEIGHT // 8, WIDTH // 8))
    label_ids = np.kron(coarse, np.ones((8, 8), dtype=np.int64))
    instance_ids = label_ids.copy()
    counters = dict.fromkeys(INSTANCE_LABELS, 0)
    for _ in range(int(rng.integers(6, 12))):
        label = int(rng.choice(INSTANCE_LABELS))
        h, w = int(rng.integers(3, 24)), int(rng.integers(3, 30))
        y, x = int(rng.integers(0, HEIGHT - h)), int(rng.integers(0, WIDTH - w))
        label_ids[y : y + h, x : x + w] = label
        if rng.random() < 0.2:  # a crowd region: instance-class pixels without an instance id
            instance_ids[y : y + h, x : x + w] = label
        else:
            instance_ids[y : y + h, x : x + w] = label * 1000 + counters[label]
            counters[label] += 1
    return label_ids.astype(np.uint8), instance_ids.astype(np.uint16)


def _make_prediction(rng: np.random.Generator, label_ids: np.ndarray) -> np.ndarray:
    """Ground truth shifted by a few pixels, with random labelIds (ignored ones too) on 20 % of the pixels."""
    prediction = np.roll(label_ids, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
    noisy = rng.random(prediction.shape) < 0.2
    prediction[noisy] = rng.integers(0, 34, int(noisy.sum()))
    return prediction.astype(np.uint8)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cityscapes")
    rng = np.random.default_rng(7)
    for index, (city, sequence, frame) in enumerate(FRAMES):
        stem = f"{city}_{sequence}_{frame}"
        gt_dir = root / "gtFine" / "val" / city
        gt_dir.mkdir(parents=True, exist_ok=True)
        label_ids, instance_ids = _make_ground_truth(rng)
        cv2.imwrite(str(gt_dir / f"{stem}_gtFine_labelIds.png"), label_ids)
        cv2.imwrite(str(gt_dir / f"{stem}_gtFine_instanceIds.png"), instance_ids)
        pred_dir = root / "results" / ("nested" if index % 2 else "")
        pred_dir.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(pred_dir / f"{stem}_leftImg8bit.png"), _make_prediction(rng, label_ids))
    return root, root / "results"


def _official_result(root: Path, pred_dir: Path, monkeypatch) -> dict:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    monkeypatch.setattr(np, "in1d", np.isin, raising=False)  # removed in NumPy 2.4, still called by 2.3.0
    args = official.args
    for name, value in {
        "quiet": True,
        "JSONOutput": False,
        "evalInstLevelScore": True,
        "evalPixelAccuracy": False,
        "predictionPath": str(pred_dir),
        "predictionWalk": None,
    }.items():
        monkeypatch.setattr(args, name, value)
    gt_files = sorted(str(p) for p in (root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    predictions = [official.getPrediction(args, gt) for gt in gt_files]
    return official.evaluateImgLists(predictions, gt_files, args)


def _assert_same(ours, theirs, key: str) -> None:
    if isinstance(theirs, dict):
        assert list(ours) == list(theirs), key
        for name in theirs:
            _assert_same(ours[name], theirs[name], f"{key}/{name}")
        return
    if math.isnan(theirs):
        assert math.isnan(ours), f"{key}: ours {ours}, official NaN"
    else:
        assert abs(ours - theirs) <= 1e-6, f"{key}: ours {ours}, official {theirs}"


OFFICIAL_KEYS = [
    "averageScoreClasses",
    "averageScoreInstClasses",
    "averageScoreCategories",
    "averageScoreInstCategories",
    "classScores",
    "classInstScores",
    "categoryScores",
    "categoryInstScores",
    "priors",
    "labels",
]


def test_equals_official_evaluator(dataset, monkeypatch):
    root, pred_dir = dataset
    official = _official_result(root, pred_dir, monkeypatch)
    ours = cityscapes.evaluate_folder(root, pred_dir, split="val", workers=2)
    for key in OFFICIAL_KEYS:
        _assert_same(ours[key], official[key], key)
    assert np.array_equal(np.array(ours["confMatrix"]), np.array(official["confMatrix"], dtype=np.int64))
    # the synthetic data exercises every score: instance classes, categories, ignored predictions
    assert 0.2 < ours["averageScoreInstClasses"] < 0.95
    assert not math.isnan(official["categoryInstScores"]["vehicle"])
    # the 19-class mIoU over trainIds is the benchmark class average
    assert ours["mIoU"] == pytest.approx(official["averageScoreClasses"], abs=1e-12)
    assert ours["numImages"] == len(FRAMES)
    assert sum(ours["missed"]) > 0  # predictions of ignored labels at evaluated pixels


def test_serial_and_threaded_agree(dataset):
    root, pred_dir = dataset
    serial = cityscapes.evaluate_folder(root, pred_dir, workers=1)
    threaded = cityscapes.evaluate_folder(root, pred_dir, workers=3)
    assert json.dumps(serial) == json.dumps(threaded)


def test_report_has_official_table_and_eval_lines(dataset):
    root, pred_dir = dataset
    result = cityscapes.evaluate_folder(root, pred_dir, workers=1)
    report = cityscapes.format_report(result)
    assert f"road          : {result['classScores']['road']:5.3f}" in report
    assert f"Score Average : {result['averageScoreClasses']:5.3f}    {result['averageScoreInstClasses']:5.3f}" in report
    assert "caravan" not in report  # ignored classes are not listed, as in the official table
    eval_lines = format_eval_log(cityscapes.result_metrics(result))
    assert eval_lines[0] in report and eval_lines[0].startswith(f"[EVAL] #Images={len(FRAMES)} mIoU=")


def _copy_predictions(pred_dir: Path, target: Path) -> Path:
    target.mkdir()
    for path in pred_dir.rglob("*.png"):
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_missing_prediction_names_the_file(dataset, tmp_path):
    root, pred_dir = dataset
    preds = _copy_predictions(pred_dir, tmp_path / "p")
    (preds / "lindau_000001_000005_leftImg8bit.png").unlink()
    with pytest.raises(DatasetError, match="lindau_000001_000005_gtFine_labelIds.png"):
        cityscapes.evaluate_folder(root, preds)


def test_extra_and_duplicate_predictions_are_errors(dataset, tmp_path):
    root, pred_dir = dataset
    preds = _copy_predictions(pred_dir, tmp_path / "p")
    (preds / "bonn_000000_000001_leftImg8bit.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="bonn_000000_000001_leftImg8bit.png"):
        cityscapes.evaluate_folder(root, preds)
    (preds / "bonn_000000_000001_leftImg8bit.png").unlink()
    (preds / "sub").mkdir()
    (preds / "sub" / "aachen_000000_000020_color.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="second prediction for aachen_000000_000020"):
        cityscapes.evaluate_folder(root, preds)


def test_wrong_size_and_train_ids_are_errors(dataset, tmp_path):
    root, pred_dir = dataset
    preds = _copy_predictions(pred_dir, tmp_path / "p")
    target = preds / "aachen_000000_000021_leftImg8bit.png"
    cv2.imwrite(str(target), np.zeros((HEIGHT, WIDTH + 2), np.uint8))
    with pytest.raises(DatasetError, match=r"aachen_000000_000021_leftImg8bit.png: prediction is 98x64"):
        cityscapes.evaluate_folder(root, preds)
    cv2.imwrite(str(target), np.full((HEIGHT, WIDTH), 255, np.uint8))
    with pytest.raises(DatasetError, match="not a Cityscapes labelId"):
        cityscapes.evaluate_folder(root, preds)
    cv2.imwrite(str(target), np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    with pytest.raises(DatasetError, match="3 channels"):
        cityscapes.evaluate_folder(root, preds)


def test_palette_prediction_reads_indices(dataset, tmp_path):
    from PIL import Image

    root, pred_dir = dataset
    preds = _copy_predictions(pred_dir, tmp_path / "p")
    before = cityscapes.evaluate_folder(root, preds, workers=1)
    target = preds / "aachen_000000_000019_leftImg8bit.png"
    image = Image.fromarray(cv2.imread(str(target), cv2.IMREAD_UNCHANGED), mode="P")
    image.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 3 % 256, i)])
    image.save(target)
    after = cityscapes.evaluate_folder(root, preds, workers=1)
    assert after["confMatrix"] == before["confMatrix"]


def test_perfect_prediction_scores_one(tmp_path):
    rng = np.random.default_rng(3)
    gt_dir = tmp_path / "gtFine" / "val" / "ulm"
    gt_dir.mkdir(parents=True)
    label_ids, instance_ids = _make_ground_truth(rng)
    cv2.imwrite(str(gt_dir / "ulm_000000_000019_gtFine_labelIds.png"), label_ids)
    cv2.imwrite(str(gt_dir / "ulm_000000_000019_gtFine_instanceIds.png"), instance_ids)
    (tmp_path / "pred").mkdir()
    cv2.imwrite(str(tmp_path / "pred" / "ulm_000000_000019.png"), label_ids)
    result = cityscapes.evaluate_folder(tmp_path, tmp_path / "pred", workers=1)
    for key in ("averageScoreClasses", "averageScoreCategories", "mIoU", "Acc", "Kappa"):
        assert result[key] == pytest.approx(1.0, abs=1e-12), key
    if not math.isnan(result["averageScoreInstClasses"]):
        assert result["averageScoreInstClasses"] == pytest.approx(1.0, abs=1e-12)


def test_no_ground_truth_is_an_error(tmp_path):
    (tmp_path / "gtFine" / "val").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no ground-truth files"):
        cityscapes.evaluate_folder(tmp_path, tmp_path)
    with pytest.raises(DatasetError, match="gtFine/test"):
        cityscapes.evaluate_folder(tmp_path, tmp_path, split="test")


def test_cli_score_prints_tables_and_writes_json(dataset, tmp_path, capsys):
    from attnseg.cli.main import main

    root, pred_dir = dataset
    out = tmp_path / "out" / "result.json"
    assert main(["score", "--gt", str(root), "--pred", str(pred_dir), "--json", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    written = json.loads(out.read_text())
    assert "classes          IoU      nIoU" in printed and "categories       IoU      nIoU" in printed
    assert f"[EVAL] #Images={len(FRAMES)} mIoU={written['mIoU']:.4f}" in printed
    assert "[EVAL] Class IoU:" in printed and "[EVAL] Class Acc:" in printed
    assert written["averageScoreClasses"] == pytest.approx(written["mIoU"], abs=1e-12)


def test_cli_score_reports_bad_input_without_traceback(dataset, tmp_path, capsys):
    from attnseg.cli.main import main

    root, _ = dataset
    (tmp_path / "empty").mkdir()
    assert main(["score", "--gt", str(root), "--pred", str(tmp_path / "empty")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("attnseg score: error: no prediction for") and "Traceback" not in error


def test_pair_counts_histogram_and_bincount_paths_agree(monkeypatch):
    rng = np.random.default_rng(1)
    label_ids = rng.integers(0, 34, (37, 53)).astype(np.uint8)
    prediction = rng.integers(0, 34, (37, 53)).astype(np.uint16)  # 16-bit prediction PNGs are allowed
    expected = np.zeros((34, 34), np.int64)
    np.add.at(expected, (label_ids.ravel(), prediction.ravel()), 1)
    np.testing.assert_array_equal(cityscapes._pair_counts(label_ids, prediction, 34), expected)
    monkeypatch.setattr(cityscapes, "_FLOAT32_EXACT_COUNT", 0)  # images too large for float32 counts
    np.testing.assert_array_equal(cityscapes._pair_counts(label_ids, prediction, 34), expected)


@pytest.mark.parametrize("hit_pattern", ["none", "class_only", "category_only", "both"])
def test_instance_counts_whatever_slot_the_last_instance_fills(hit_pattern):
    """The highest instance id may end on any of its four hit/miss slots (a regression: it once had to be the last)."""
    label_ids = np.full((4, 6), 7, dtype=np.uint8)  # road
    instance_ids = label_ids.astype(np.int32).copy()
    label_ids[:, :3] = 26  # car
    instance_ids[:, :3] = 26 * 1000 + 3
    prediction = label_ids.copy()
    car_prediction = {"none": 7, "class_only": 26, "category_only": 27, "both": 26}[hit_pattern]  # 27 = truck
    prediction[:, :3] = car_prediction
    stats = cityscapes.image_stats(prediction, label_ids, instance_ids)
    car = 26
    hits = 1.0 if hit_pattern in ("class_only", "both") else 0.0
    assert stats.class_tp[car] + stats.class_fn[car] > 0
    assert math.isclose(stats.class_tp[car] / (stats.class_tp[car] + stats.class_fn[car]), hits)
