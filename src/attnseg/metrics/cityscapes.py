"""The official Cityscapes pixel-level benchmark scores (IoU and instance-weighted iIoU, per class and per category).

Computes what cityscapesscripts' ``evalPixelLevelSemanticLabeling`` computes, on the same files, with the same
result keys, but vectorised: one 2-D histogram per image for the 34 x 34 labelId confusion matrix and one
``bincount`` over instance ids for all instances at once, instead of a Python loop with a full-image mask per
instance; files are decoded in a thread pool (PNG decoding releases the GIL).

The benchmark's definitions, restated:

- Confusion over labelIds 0..33; ground-truth pixels of labels marked ``ignoreInEval`` are left out of every
  score. A prediction of an ignored label at an evaluated pixel is a false negative of the true class.
- Class IoU = TP / (TP + FP + FN); a zero denominator gives NaN; averages skip NaN.
- iIoU: every ground-truth instance (``instanceIds`` value ``labelId * 1000 + k``) of an evaluated class weighs its
  TP and FN pixels by ``average instance size of the class / instance size``, so that small objects count as
  much as large ones; FP stays the unweighted pixel count.
- Categories (flat, construction, ..., vehicle) merge their evaluated labels. Category iIoU exists for the
  categories whose labels all have instances (human, vehicle); its "category hit" counts predictions of any
  label of the category, ignored ones (caravan, trailer) included, as the benchmark does.

Besides the official keys, the result holds the 19-class (trainId) metrics of `attnseg.metrics.confusion`:
``mIoU`` (equal to ``averageScoreClasses``), ``Acc``, ``Kappa``, ``mDice``, ``confusionMatrix`` and ``missed``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_LABELS, NUM_CLASSES
from attnseg.errors import DatasetError
from attnseg.metrics.confusion import SegmentationMetrics, format_eval_log, metrics_from_confusion

#: Mean instance size in pixels of each instance class over the Cityscapes training set, as fixed by the benchmark
#: (cityscapesscripts ``args.avgClassSize``); the iIoU weights are relative to these.
AVERAGE_INSTANCE_SIZES: dict[str, float] = {
    "bicycle": 4672.3249222261,
    "caravan": 36771.8241758242,
    "motorcycle": 6298.7200839748,
    "rider": 3930.4788056518,
    "bus": 35732.1511111111,
    "train": 67583.7075812274,
    "car": 12794.0202738185,
    "person": 3462.4756337644,
    "truck": 27855.1264367816,
    "trailer": 16926.9763313609,
}

#: Ground-truth file suffix and the instance file derived from it.
GT_LABEL_SUFFIX = "_gtFine_labelIds.png"
GT_INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
INSTANCE_ID_DIVISOR = 1000  # instanceIds values above this are labelId * 1000 + instance number
_FLOAT32_EXACT_COUNT = 2**24  # OpenCV histograms count in float32, exact up to here


@dataclass(frozen=True)
class _Tables:
    """The official label table as arrays indexed by labelId (0..num_ids-1)."""

    names: tuple[str, ...]
    evaluated: np.ndarray  # bool: not ignoreInEval
    train_id: np.ndarray  # int64: 0..18, NUM_CLASSES for ignored labels
    category: np.ndarray  # int64 index into `categories`
    categories: tuple[str, ...]  # in the order of the official label list (void first)
    instance_class: np.ndarray  # bool: hasInstances and evaluated -> has an iIoU
    average_size: np.ndarray  # float64, NaN where not an instance class
    instance_category: np.ndarray  # bool per category: every labelled member has instances -> has an iIoU

    @property
    def num_ids(self) -> int:
        return len(self.names)


def _build_tables() -> _Tables:
    labels = sorted((label for label in CITYSCAPES_LABELS if label.id >= 0), key=lambda label: label.id)
    if [label.id for label in labels] != list(range(len(labels))):
        raise ImportError("the Cityscapes label table does not have contiguous labelIds")  # pragma: no cover
    categories = tuple(dict.fromkeys(label.category for label in CITYSCAPES_LABELS))
    instance_category = np.array(
        [all(label.hasInstances for label in labels if label.category == name) for name in categories], dtype=bool
    )
    return _Tables(
        names=tuple(label.name for label in labels),
        evaluated=np.array([not label.ignoreInEval for label in labels], dtype=bool),
        train_id=np.array(
            [label.trainId if not label.ignoreInEval else NUM_CLASSES for label in labels], dtype=np.int64
        ),
        category=np.array([categories.index(label.category) for label in labels], dtype=np.int64),
        categories=categories,
        instance_class=np.array([label.hasInstances and not label.ignoreInEval for label in labels], dtype=bool),
        average_size=np.array([AVERAGE_INSTANCE_SIZES.get(label.name, math.nan) for label in labels]),
        instance_category=instance_category,
    )


TABLES = _build_tables()


# ----------------------------------------------------------------------------------------------------------------
# Per-image statistics
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ImageStats:
    """What one image adds to the benchmark: labelId confusion and weighted instance hits and misses."""

    confusion: np.ndarray  # (num_ids, num_ids) int64, rows ground truth
    class_tp: np.ndarray = field(default_factory=lambda: np.zeros(TABLES.num_ids))  # weighted, per labelId
    class_fn: np.ndarray = field(default_factory=lambda: np.zeros(TABLES.num_ids))
    category_tp: np.ndarray = field(default_factory=lambda: np.zeros(len(TABLES.categories)))  # weighted
    category_fn: np.ndarray = field(default_factory=lambda: np.zeros(len(TABLES.categories)))

    def __iadd__(self, other: ImageStats) -> ImageStats:
        self.confusion += other.confusion
        self.class_tp += other.class_tp
        self.class_fn += other.class_fn
        self.category_tp += other.category_tp
        self.category_fn += other.category_fn
        return self


def _pair_counts(label_ids: np.ndarray, prediction: np.ndarray, n: int) -> np.ndarray:
    """(n, n) int64 counts of (label, prediction) pixel pairs; both hold values below n."""
    if label_ids.size < _FLOAT32_EXACT_COUNT:
        # OpenCV's 2-D histogram of two uint8 images is ~4x faster than numpy's bincount of pair codes (which
        # widens to intp and scans for the range) and releases the GIL; float32 counts are exact below 2**24.
        histogram = cv2.calcHist(
            [label_ids.astype(np.uint8, copy=False), prediction.astype(np.uint8, copy=False)],
            [0, 1], None, [n, n], [0, n, 0, n],
        )  # fmt: skip
        return histogram.astype(np.int64)
    codes = label_ids.astype(np.intp) * n + prediction
    return np.bincount(codes.ravel(), minlength=n * n).reshape(n, n).astype(np.int64)


def image_stats(prediction: np.ndarray, label_ids: np.ndarray, instance_ids: np.ndarray | None) -> ImageStats:
    """Benchmark statistics of one image from its arrays (all (H, W), labelIds, values already validated)."""
    n = TABLES.num_ids
    stats = ImageStats(confusion=_pair_counts(label_ids, prediction, n))
    if instance_ids is None:
        return stats

    in_instance = instance_ids > INSTANCE_ID_DIVISOR
    instance_of_pixel = instance_ids[in_instance].astype(np.int64)
    predicted = prediction[in_instance]
    class_of_pixel = instance_of_pixel // INSTANCE_ID_DIVISOR
    if class_of_pixel.size and class_of_pixel.max() >= n:
        raise DatasetError(f"instance id {instance_of_pixel.max()} names no Cityscapes label")
    # One unweighted bincount over (instance, class hit, category hit) codes gives instance sizes and both hit
    # counts; weighted bincounts would convert to float and cost 5x more.
    class_hit = predicted == class_of_pixel
    category_hit = TABLES.category[predicted] == TABLES.category[class_of_pixel]
    codes = instance_of_pixel * 4 + class_hit + 2 * category_hit
    # minlength covers all four slots of the highest instance, whichever of its slots is actually hit.
    slots = 4 * (int(instance_of_pixel.max()) + 1) if codes.size else 4
    counts = np.bincount(codes, minlength=slots).reshape(-1, 4)
    sizes = counts.sum(axis=1)
    class_hits = counts[:, 1] + counts[:, 3]
    category_hits = counts[:, 2] + counts[:, 3]
    instances = np.flatnonzero(sizes)
    instance_class = instances // INSTANCE_ID_DIVISOR
    kept = TABLES.evaluated[instance_class]
    instances, instance_class = instances[kept], instance_class[kept]
    not_instance_class = ~TABLES.instance_class[instance_class]
    if not_instance_class.any():
        label = TABLES.names[instance_class[not_instance_class][0]]
        raise DatasetError(f"instance id {instances[not_instance_class][0]}: label {label!r} has no instances")

    size = sizes[instances].astype(np.float64)
    weight = TABLES.average_size[instance_class] / size
    hits = class_hits[instances]
    stats.class_tp = np.bincount(instance_class, weights=hits * weight, minlength=n)
    stats.class_fn = np.bincount(instance_class, weights=(size - hits) * weight, minlength=n)

    instance_category = TABLES.category[instance_class]
    counted = TABLES.instance_category[instance_category]
    category_hits = category_hits[instances][counted]
    category_weight = weight[counted]
    num_categories = len(TABLES.categories)
    stats.category_tp = np.bincount(
        instance_category[counted], weights=category_hits * category_weight, minlength=num_categories
    )
    stats.category_fn = np.bincount(
        instance_category[counted], weights=(size[counted] - category_hits) * category_weight, minlength=num_categories
    )
    return stats


# ----------------------------------------------------------------------------------------------------------------
# Scores from accumulated statistics
# ----------------------------------------------------------------------------------------------------------------
def _iou(tp: float, fp: float, fn: float) -> float:
    denominator = tp + fp + fn
    return float(tp / denominator) if denominator != 0 else math.nan


def _average(scores: dict[str, float]) -> float:
    defined = [value for value in scores.values() if not math.isnan(value)]
    return sum(defined) / len(defined) if defined else math.nan


def train_id_confusion(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(19, 19) trainId confusion of the evaluated labels and (19,) pixels predicted as an unevaluated label."""
    counts = np.zeros((NUM_CLASSES, NUM_CLASSES + 1), dtype=np.int64)
    rows = np.flatnonzero(TABLES.evaluated)
    np.add.at(counts, (TABLES.train_id[rows][:, None], TABLES.train_id[None, :]), confusion[rows])
    return counts[:, :NUM_CLASSES], counts[:, NUM_CLASSES]


def scores_from_stats(stats: ImageStats, num_images: int | None = None) -> dict:
    """The benchmark result dict (official keys plus ours) from accumulated statistics."""
    confusion = stats.confusion
    evaluated = TABLES.evaluated
    column_sums_evaluated_rows = confusion[evaluated].sum(axis=0)
    class_scores: dict[str, float] = {}
    class_inst_scores: dict[str, float] = {}
    for label_id, name in enumerate(TABLES.names):
        if not evaluated[label_id]:
            class_scores[name] = class_inst_scores[name] = math.nan
            continue
        tp = int(confusion[label_id, label_id])
        fn = int(confusion[label_id].sum()) - tp
        fp = int(column_sums_evaluated_rows[label_id]) - tp
        class_scores[name] = _iou(tp, fp, fn)
        class_inst_scores[name] = (
            _iou(stats.class_tp[label_id], fp, stats.class_fn[label_id])
            if TABLES.instance_class[label_id]
            else math.nan
        )

    category_scores: dict[str, float] = {}
    category_inst_scores: dict[str, float] = {}
    for index, category in enumerate(TABLES.categories):
        members = TABLES.category == index
        scored = np.flatnonzero(members & evaluated)
        outside_rows = evaluated & ~members
        if scored.size == 0:
            category_scores[category] = math.nan
        else:
            tp = int(confusion[np.ix_(scored, scored)].sum())
            fn = int(confusion[scored].sum()) - tp
            fp = int(confusion[np.ix_(outside_rows, scored)].sum())
            category_scores[category] = _iou(tp, fp, fn)
        if TABLES.instance_category[index]:
            fp = int(confusion[np.ix_(outside_rows, members)].sum())
            category_inst_scores[category] = _iou(stats.category_tp[index], fp, stats.category_fn[index])
        else:
            category_inst_scores[category] = math.nan

    total = int(confusion.sum())
    train_confusion, missed = train_id_confusion(confusion)
    metrics = metrics_from_confusion(train_confusion, missed, num_images)
    return {
        "confMatrix": confusion.tolist(),
        "priors": {
            name: (float(confusion[i].sum()) / total if total else math.nan) for i, name in enumerate(TABLES.names)
        },
        "labels": {name: i for i, name in enumerate(TABLES.names)},
        "classScores": class_scores,
        "classInstScores": class_inst_scores,
        "categoryScores": category_scores,
        "categoryInstScores": category_inst_scores,
        "averageScoreClasses": _average(class_scores),
        "averageScoreInstClasses": _average(class_inst_scores),
        "averageScoreCategories": _average(category_scores),
        "averageScoreInstCategories": _average(category_inst_scores),
        "mIoU": metrics.miou,
        "Acc": metrics.acc,
        "Kappa": metrics.kappa,
        "mDice": metrics.mdice,
        "numImages": num_images,
        "confusionMatrix": train_confusion.tolist(),
        "missed": missed.tolist(),
    }


def result_metrics(result: dict) -> SegmentationMetrics:
    """The 19-class `SegmentationMetrics` held in an `evaluate_folder` result."""
    return metrics_from_confusion(np.array(result["confusionMatrix"]), np.array(result["missed"]), result["numImages"])


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------
def frame_key(file_name: str) -> str | None:
    """``<city>_<sequence>_<frame>`` of a Cityscapes-style file name, or None when the name has fewer parts."""
    parts = Path(file_name).name.split("_")
    if len(parts) < 3:
        return None
    parts[2] = parts[2].removesuffix(".png")
    return "_".join(parts[:3])


def find_ground_truth(gt_root: str | os.PathLike, split: str = "val") -> list[Path]:
    """Sorted ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` files under a Cityscapes root (or its gtFine folder)."""
    root = Path(gt_root)
    gt_fine = root / "gtFine" if (root / "gtFine").is_dir() else root
    split_dir = gt_fine / split
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: no such folder; --gt must be the Cityscapes root holding gtFine/{split}")
    files = sorted(split_dir.glob(f"*/*{GT_LABEL_SUFFIX}"))
    if not files:
        raise DatasetError(f"{split_dir}: no ground-truth files matching */*{GT_LABEL_SUFFIX}")
    return files


def match_predictions(gt_files: Sequence[Path], pred_dir: str | os.PathLike) -> list[Path]:
    """The prediction for each ground-truth file: the one PNG under `pred_dir` named ``<city>_<seq>_<frame>*.png``.

    Raises:
        DatasetError: a ground-truth file has no or several predictions, or a PNG matches no ground-truth file.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DatasetError(f"{pred_dir}: prediction folder does not exist")
    wanted = {frame_key(path.name): path for path in gt_files}
    found: dict[str, Path] = {}
    for folder, _, names in os.walk(pred_dir):
        for name in sorted(names):
            if not name.endswith(".png"):
                continue
            path = Path(folder) / name
            key = frame_key(name)
            if key not in wanted:
                raise DatasetError(
                    f"{path}: prediction matches no ground-truth image (expected <city>_<seq>_<frame>*.png "
                    f"for one of the {len(wanted)} images of the split)"
                )
            if key in found:
                raise DatasetError(f"{path}: second prediction for {key} (first: {found[key]})")
            found[key] = path
    missing = [path for key, path in wanted.items() if key not in found]
    if missing:
        raise DatasetError(
            f"no prediction for {missing[0]} (expected {frame_key(missing[0].name)}*.png under {pred_dir}); "
            f"{len(missing)} of {len(wanted)} images have none"
        )
    return [found[frame_key(path.name)] for path in gt_files]


def _read_single_channel(path: Path, what: str) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DatasetError(f"{path}: cannot read {what} image")
    if image.ndim == 3:
        # cv2 expands palette PNGs to colour; their indices are the label ids (what PIL gives).
        with Image.open(path) as pil_image:
            if pil_image.mode not in ("P", "L"):
                raise DatasetError(f"{path}: {what} image has {image.shape[2]} channels; expected one channel of ids")
            image = np.asarray(pil_image)
    return image


def _load_and_score(pred_path: Path, gt_path: Path, with_instances: bool) -> ImageStats:
    label_ids = _read_single_channel(gt_path, "ground-truth labelIds")
    prediction = _read_single_channel(pred_path, "prediction")
    if prediction.shape != label_ids.shape:
        raise DatasetError(
            f"{pred_path}: prediction is {prediction.shape[1]}x{prediction.shape[0]} (WxH) but the ground truth "
            f"{gt_path.name} is {label_ids.shape[1]}x{label_ids.shape[0]}"
        )
    for path, image, what in ((gt_path, label_ids, "label"), (pred_path, prediction, "prediction")):
        if image.size and int(image.max()) >= TABLES.num_ids:
            raise DatasetError(
                f"{path}: {what} value {int(image.max())} is not a Cityscapes labelId (0..{TABLES.num_ids - 1}); "
                "predictions must use labelIds, not trainIds (see attnseg.data.labels.train_ids_to_label_ids)"
            )
    instance_ids = None
    if with_instances:
        instance_path = gt_path.with_name(gt_path.name.replace(GT_LABEL_SUFFIX, GT_INSTANCE_SUFFIX))
        instance_ids = _read_single_channel(instance_path, "ground-truth instanceIds")
        if instance_ids.shape != label_ids.shape:
            raise DatasetError(f"{instance_path}: size differs from {gt_path.name}")
    try:
        return image_stats(prediction, label_ids, instance_ids)
    except DatasetError as error:
        raise DatasetError(f"{gt_path}: {error}") from None


def evaluate_files(
    pred_files: Sequence[Path], gt_files: Sequence[Path], workers: int = 2, with_instances: bool = True
) -> dict:
    """Benchmark result for explicit (prediction, ground truth) pairs; see `evaluate_folder`."""
    if len(pred_files) != len(gt_files):
        raise ValueError(f"{len(pred_files)} predictions for {len(gt_files)} ground-truth files")
    total = ImageStats(confusion=np.zeros((TABLES.num_ids, TABLES.num_ids), dtype=np.int64))
    pairs = list(zip(map(Path, pred_files), map(Path, gt_files)))
    if workers <= 1:
        for pred_path, gt_path in pairs:
            total += _load_and_score(pred_path, gt_path, with_instances)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # map keeps file order, so the float sums do not depend on thread timing
            for stats in pool.map(lambda pair: _load_and_score(*pair, with_instances), pairs):
                total += stats
    return scores_from_stats(total, num_images=len(pairs))


def evaluate_folder(
    gt_root: str | os.PathLike, pred_dir: str | os.PathLike, split: str = "val", workers: int | None = None
) -> dict:
    """Score a folder of labelId PNG predictions against Cityscapes ``gtFine`` like the official benchmark script.

    Args:
        gt_root: Cityscapes root (holding ``gtFine/<split>/<city>/*_gtFine_{labelIds,instanceIds}.png``).
        pred_dir: folder searched recursively for ``<city>_<seq>_<frame>*.png`` labelId images, one per image.
        split: ``val`` (or ``train``; the test split has no public labels).
        workers: decoding threads; default ``min(8, cpu count)``.

    Returns:
        The official result keys (``averageScoreClasses``, ``averageScoreInstClasses``, ``averageScoreCategories``,
        ``averageScoreInstCategories``, ``classScores``, ``classInstScores``, ``categoryScores``,
        ``categoryInstScores``, ``confMatrix``, ``priors``, ``labels``) and the 19-class ``mIoU``, ``Acc``,
        ``Kappa``, ``mDice``, ``numImages``, ``confusionMatrix`` (rows ground truth) and ``missed``.

    Raises:
        DatasetError: naming the file, for a missing, extra, duplicated, unreadable or wrongly sized prediction.
    """
    gt_files = find_ground_truth(gt_root, split)
    pred_files = match_predictions(gt_files, pred_dir)
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    return evaluate_files(pred_files, gt_files, workers=workers)


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------
def format_benchmark_table(result: dict) -> str:
    """The class and category IoU / iIoU tables as the official script prints them (without colours)."""
    lines = ["classes          IoU      nIoU", "-" * 32]
    for label_id, name in enumerate(TABLES.names):
        if TABLES.evaluated[label_id]:
            lines.append(f"{name:<14}: {result['classScores'][name]:>5.3f}    {result['classInstScores'][name]:>5.3f}")
    lines += [
        "-" * 32,
        f"Score Average : {result['averageScoreClasses']:5.3f}    {result['averageScoreInstClasses']:5.3f}",
        "-" * 32,
        "",
        "categories       IoU      nIoU",
        "-" * 32,
    ]
    for index, category in enumerate(TABLES.categories):
        if not (TABLES.evaluated & (TABLES.category == index)).any():
            continue
        lines.append(
            f"{category:<14}: {result['categoryScores'][category]:>5.3f}    "
            f"{result['categoryInstScores'][category]:>5.3f}"
        )
    lines += [
        "-" * 32,
        f"Score Average : {result['averageScoreCategories']:5.3f}    {result['averageScoreInstCategories']:5.3f}",
        "-" * 32,
    ]
    return "\n".join(lines)


def format_report(result: dict) -> str:
    """Official-style tables followed by the CityscapesSOTA ``[EVAL]`` lines of the 19-class metrics."""
    metrics = result_metrics(result)
    return "\n".join([format_benchmark_table(result), "", *format_eval_log(metrics)])


__all__ = [
    "AVERAGE_INSTANCE_SIZES",
    "CITYSCAPES_CLASSES",
    "ImageStats",
    "evaluate_files",
    "evaluate_folder",
    "find_ground_truth",
    "format_benchmark_table",
    "format_report",
    "frame_key",
    "image_stats",
    "match_predictions",
    "result_metrics",
    "scores_from_stats",
    "train_id_confusion",
]
