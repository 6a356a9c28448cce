"""Confusion-matrix segmentation metrics (IoU, pixel accuracy, Cohen's kappa, Dice) and the evaluation log lines.

Conventions:

- Rows are ground-truth classes, columns predicted classes; pixels whose target is ``ignore_index`` or outside
  ``0..num_classes-1`` are not counted.
- A labelled pixel predicted outside ``0..num_classes-1`` (e.g. a trainIds map that holds 255) counts as a miss of
  its ground-truth class, kept in a separate per-class count ``missed``. This is how the Cityscapes benchmark treats
  predictions of labels it does not evaluate, so `attnseg.metrics.cityscapes` and this module give the same IoU.
- Absent classes: a per-class ratio whose denominator is zero is NaN, and every mean skips NaNs (NVIDIA's
  ``nanmean`` and cityscapesscripts' ``getScoreAverage``). A class never in the ground truth but predicted somewhere
  has IoU 0 and is counted. PaddleSeg instead sets absent classes to 0 (2.8) or 1 (later) and takes a plain mean
  over all classes; `paddleseg_metrics` reproduces those numbers for comparison with published logs.
- ``class_acc`` is PaddleSeg's "Class Acc": intersection / predicted area, i.e. per-class precision. The published
  CityscapesSOTA logs print this, so our logs line up with them; per-class recall is ``class_recall``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class SegmentationMetrics:
    """Metrics derived from one confusion matrix; per-class arrays are float64 of length ``num_classes``.

    Attributes:
        miou: mean of ``class_iou`` over classes where it is defined.
        class_iou: TP / (TP + FP + FN); NaN for a class neither labelled nor predicted.
        acc: correctly classified labelled pixels / labelled pixels.
        class_acc: per-class precision TP / (TP + FP) (PaddleSeg's "Class Acc"); NaN for a class never predicted.
        kappa: Cohen's kappa of predictions against labels over the labelled pixels.
        mdice: mean of ``class_dice`` over classes where it is defined.
        class_dice: 2 TP / (2 TP + FP + FN).
        class_precision: same values as ``class_acc``.
        class_recall: TP / (TP + FN); NaN for a class with no labelled pixel.
        confusion: (num_classes, num_classes) int64, rows ground truth, columns prediction.
        missed: (num_classes,) int64 labelled pixels of each class predicted as an id outside the class range.
        num_images: images seen by `ConfusionMatrix.update`, or None when unknown.
    """

    miou: float
    class_iou: np.ndarray
    acc: float
    class_acc: np.ndarray
    kappa: float
    mdice: float
    class_dice: np.ndarray
    class_precision: np.ndarray
    class_recall: np.ndarray
    confusion: np.ndarray
    missed: np.ndarray
    num_images: int | None = None

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def num_pixels(self) -> int:
        """Labelled (not ignored) pixels counted."""
        return int(self.confusion.sum() + self.missed.sum())


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise numerator / denominator in float64, NaN where the denominator is zero."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.full(np.broadcast(numerator, denominator).shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a warning) when there are none."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def metrics_from_confusion(
    confusion: np.ndarray, missed: np.ndarray | None = None, num_images: int | None = None
) -> SegmentationMetrics:
    """All metrics of a square confusion matrix (rows ground truth, columns prediction).

    Args:
        confusion: (K, K) pixel counts.
        missed: (K,) labelled pixels per class predicted outside ``0..K-1``; zeros when None.
        num_images: carried into the result.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {confusion.shape}")
    num_classes = confusion.shape[0]
    missed = np.zeros(num_classes, np.int64) if missed is None else np.asarray(missed, dtype=np.int64)
    true_positive = np.diag(confusion).astype(np.float64)
    label_area = (confusion.sum(axis=1) + missed).astype(np.float64)
    pred_area = confusion.sum(axis=0).astype(np.float64)
    total = float(label_area.sum())

    class_iou = _ratio(true_positive, label_area + pred_area - true_positive)
    class_dice = _ratio(2.0 * true_positive, label_area + pred_area)
    class_precision = _ratio(true_positive, pred_area)
    class_recall = _ratio(true_positive, label_area)
    acc = float(true_positive.sum() / total) if total else math.nan
    # Cohen's kappa: chance agreement from the label and prediction marginals. Undefined (NaN) when chance
    # agreement is 1, i.e. a single class everywhere in both.
    chance = float((pred_area * label_area).sum() / (total * total)) if total else math.nan
    kappa = (acc - chance) / (1.0 - chance) if total and chance != 1.0 else math.nan
    return SegmentationMetrics(
        miou=nanmean(class_iou),
        class_iou=class_iou,
        acc=acc,
        class_acc=class_precision.copy(),
        kappa=float(kappa),
        mdice=nanmean(class_dice),
        class_dice=class_dice,
        class_precision=class_precision,
        class_recall=class_recall,
        confusion=confusion,
        missed=missed,
        num_images=num_images,
    )


def _as_tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(values, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(values))  # flipped views have negative strides
    return torch.as_tensor(values)


def _counts_numpy(pred: np.ndarray, target: np.ndarray, k: int, ignore_index: int) -> np.ndarray:
    """(K, K + 1) int64 counts of one batch, as `ConfusionMatrix.update` defines them, on compact CPU arrays.

    One bin per pixel (target row, prediction column; not-counted targets get bins past the matrix) and one
    ``np.bincount``: 6-8x faster than the long-tensor masking at 1024x2048. uint8 maps go through 256-entry tables.
    """
    pred, target = pred.reshape(-1), target.reshape(-1)
    bins = k * (k + 1)
    small = np.int32 if bins + k < 2**31 else np.int64
    if target.dtype == np.uint8:
        rows = np.full(256, bins, dtype=small)
        rows[: min(k, 256)] = np.arange(min(k, 256), dtype=small) * (k + 1)
        if 0 <= ignore_index < 256:
            rows[ignore_index] = bins
        index = rows[target]
    else:
        counted = (target >= 0) & (target < k) & (target != ignore_index)
        index = np.where(counted, target.astype(small, copy=False) * (k + 1), bins).astype(small, copy=False)
    if pred.dtype == np.uint8:
        columns = np.full(256, k, dtype=small)
        columns[: min(k, 256)] = np.arange(min(k, 256), dtype=small)
        index += columns[pred]
    else:
        index += np.where((pred >= 0) & (pred < k), pred, k).astype(small)
    return np.bincount(index, minlength=bins + k + 1)[:bins].reshape(k, k + 1).astype(np.int64, copy=False)


class ConfusionMatrix:
    """Accumulates a (num_classes x num_classes) confusion matrix on the device of the predictions.

    Example::

        matrix = ConfusionMatrix(19)
        for images, labels in loader:
            matrix.update(model(images).logits.argmax(1), labels)
        matrix.all_reduce()          # sums over processes when torch.distributed is initialised
        print("\\n".join(format_eval_log(matrix.compute())))
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        """
        Args:
            num_classes: K; targets outside ``0..K-1`` are not counted.
            ignore_index: target value that is never counted (may lie inside ``0..K-1``).
            device: where the counts live; None puts them on the device of the first `update`.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.device = torch.device(device) if device is not None else None
        self._counts: torch.Tensor | None = None  # (K, K + 1): the last column counts out-of-range predictions
        self.num_images = 0
        if self.device is not None:
            self._counts = self._zeros(self.device)

    def _zeros(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.num_images = 0
        if self._counts is not None:
            self._counts.zero_()

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add one batch.

        Args:
            pred: predicted class ids, (N, H, W) or (H, W), any integer dtype (argmax of the logits).
            target: ground-truth class ids of the same shape; ``ignore_index`` pixels are skipped.
        """
        pred, target = _as_tensor(pred), _as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        if pred.ndim not in (2, 3):
            raise ValueError(f"expected (N, H, W) or (H, W) class-id maps, got shape {tuple(pred.shape)}")
        for name, tensor in (("prediction", pred), ("target", target)):
            if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
                raise TypeError(f"{name} must hold integer class ids (argmax the logits first), got {tensor.dtype}")
        batch_size = int(pred.shape[0]) if pred.ndim == 3 else 1
        if self._counts is None:
            self.device = target.device
            self._counts = self._zeros(self.device)
        k = self.num_classes
        if self._counts.device.type == "cpu" and pred.device.type == "cpu" and target.device.type == "cpu":
            counts = _counts_numpy(pred.detach().numpy(), target.detach().numpy(), k, self.ignore_index)
            self._counts += torch.from_numpy(counts)
            self.num_images += batch_size
            return
        pred = pred.to(self._counts.device, non_blocking=True).reshape(-1).long()
        target = target.to(self._counts.device, non_blocking=True).reshape(-1).long()

        counted = (target >= 0) & (target < k) & (target != self.ignore_index)
        pred = pred[counted]
        target = target[counted]
        pred = torch.where((pred >= 0) & (pred < k), pred, k)  # column k collects out-of-range predictions
        self._counts += torch.bincount(target * (k + 1) + pred, minlength=k * (k + 1)).view(k, k + 1)
        self.num_images += batch_size

    def all_reduce(self) -> None:
        """Sum the counts (and image counts) over all processes; a no-op unless torch.distributed is initialised."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        if self._counts is None:
            raise RuntimeError("all_reduce before any update: every process must call update at least once")
        torch.distributed.all_reduce(self._counts)
        images = torch.tensor([self.num_images], dtype=torch.int64, device=self._counts.device)
        torch.distributed.all_reduce(images)
        self.num_images = int(images.item())

    @property
    def confusion(self) -> np.ndarray:
        """(K, K) int64 counts, rows ground truth, columns prediction."""
        return self._counts_numpy()[:, : self.num_classes]

    def _counts_numpy(self) -> np.ndarray:
        if self._counts is None:
            return np.zeros((self.num_classes, self.num_classes + 1), dtype=np.int64)
        return self._counts.cpu().numpy().astype(np.int64)

    def compute(self) -> SegmentationMetrics:
        counts = self._counts_numpy()
        k = self.num_classes
        return metrics_from_confusion(counts[:, :k], missed=counts[:, k], num_images=self.num_images)


# ----------------------------------------------------------------------------------------------------------------
# PaddleSeg's formulas, for comparing with numbers that PaddleSeg printed
# ----------------------------------------------------------------------------------------------------------------
def confusion_areas(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PaddleSeg's ``calculate_area`` outputs from a confusion matrix: (intersection, predicted, labelled) int64.

    The predicted area counts only labelled pixels, as PaddleSeg's does.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    return np.diag(confusion).copy(), confusion.sum(axis=0), confusion.sum(axis=1)


def paddleseg_metrics(confusion: np.ndarray, absent_iou: float = 0.0) -> dict[str, float | np.ndarray]:
    """The metric values PaddleSeg reports for a confusion matrix.

    PaddleSeg sets a class with zero union to ``absent_iou`` (0.0 in paddleseg <= 2.8, 1.0 in later versions) and
    averages IoU and Dice over all classes; per-class ratios with a zero denominator are 0. Acc and Kappa agree
    with `metrics_from_confusion` when no prediction falls outside the class range.

    Returns:
        dict with keys miou, class_iou, acc, class_acc (= class_precision, the pre-2.1 "Class Acc"),
        class_precision, class_recall, kappa, mdice, class_dice.
    """
    intersect, pred_area, label_area = (a.astype(np.float64) for a in confusion_areas(confusion))

    def zero_if_undefined(numerator: np.ndarray, denominator: np.ndarray, fill: float = 0.0) -> np.ndarray:
        return np.nan_to_num(_ratio(numerator, denominator), nan=fill)

    class_iou = zero_if_undefined(intersect, pred_area + label_area - intersect, fill=absent_iou)
    class_dice = zero_if_undefined(2.0 * intersect, pred_area + label_area)
    class_precision = zero_if_undefined(intersect, pred_area)
    total = label_area.sum()
    acc = float(intersect.sum() / pred_area.sum())
    chance = float((pred_area * label_area).sum() / (total * total))
    return {
        "miou": float(class_iou.mean()),
        "class_iou": class_iou,
        "acc": acc,
        "class_acc": class_precision,
        "class_precision": class_precision,
        "class_recall": zero_if_undefined(intersect, label_area),
        "kappa": (float(intersect.sum() / total) - chance) / (1.0 - chance),
        "mdice": float(class_dice.mean()),
        "class_dice": class_dice,
    }


# ----------------------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------------------
def _numpy_style(values: np.ndarray) -> list[str]:
    """Lines of ``str(np.round(values, 4))`` under numpy's default print options, whatever the current ones are."""
    text = np.array2string(
        np.round(np.asarray(values, dtype=np.float64), 4),
        max_line_width=75,
        precision=8,
        separator=" ",
        suppress_small=False,
        floatmode="maxprec",
        sign="-",
        threshold=1000,
        legacy=False,
    )
    return text.splitlines()


def format_eval_log(metrics: SegmentationMetrics, num_images: int | None = None) -> list[str]:
    """The evaluation summary in the format of the published CityscapesSOTA logs, one string per line.

    ``"\\n".join(lines)`` reads::

        [EVAL] #Images=500 mIoU=0.8700 Acc=0.9756 Kappa=0.9683 Dice=0.9271
        [EVAL] Class IoU:
        [0.9902 0.9165 0.951  0.7518 ...
         0.9611 0.8795 ...]
        [EVAL] Class Acc:
        [...]

    Args:
        metrics: result of `ConfusionMatrix.compute` or `metrics_from_confusion`.
        num_images: images evaluated; defaults to ``metrics.num_images``.
    """
    if num_images is None:
        num_images = metrics.num_images
    images = "?" if num_images is None else str(int(num_images))
    lines = [
        f"[EVAL] #Images={images} mIoU={metrics.miou:.4f} Acc={metrics.acc:.4f} "
        f"Kappa={metrics.kappa:.4f} Dice={metrics.mdice:.4f}",
        "[EVAL] Class IoU:",
        *_numpy_style(metrics.class_iou),
        "[EVAL] Class Acc:",
        *_numpy_style(metrics.class_acc),
    ]
    return lines


def format_class_table(metrics: SegmentationMetrics, class_names: Sequence[str]) -> str:
    """Aligned per-class table (class, IoU, Acc, Dice) ending with the means; undefined values print as ``nan``."""
    if len(class_names) != metrics.num_classes:
        raise ValueError(f"{len(class_names)} class names for {metrics.num_classes} classes")
    width = max([len("class"), len("mean")] + [len(name) for name in class_names])
    rule = "-" * (width + 3 * 9)
    rows = [f"{'class':<{width}} {'IoU':>8} {'Acc':>8} {'Dice':>8}", rule]
    for index, name in enumerate(class_names):
        rows.append(
            f"{name:<{width}} {metrics.class_iou[index]:>8.4f} {metrics.class_acc[index]:>8.4f} "
            f"{metrics.class_dice[index]:>8.4f}"
        )
    rows.append(rule)
    rows.append(f"{'mean':<{width}} {metrics.miou:>8.4f} {nanmean(metrics.class_acc):>8.4f} {metrics.mdice:>8.4f}")
    return "\n".join(rows)


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


def metrics_to_json(metrics: SegmentationMetrics, class_names: Sequence[str] | None = None) -> dict:
    """A JSON-serialisable dict of the metrics (undefined values become null, so the output is strict JSON).

    Args:
        metrics: the metrics to write.
        class_names: per-class keys; defaults to ``"0"``, ``"1"``, ...
    """
    names = [str(i) for i in range(metrics.num_classes)] if class_names is None else list(class_names)
    if len(names) != metrics.num_classes:
        raise ValueError(f"{len(names)} class names for {metrics.num_classes} classes")
    classes = {
        name: {
            "IoU": _json_float(metrics.class_iou[i]),
            "Acc": _json_float(metrics.class_acc[i]),
            "Dice": _json_float(metrics.class_dice[i]),
            "Precision": _json_float(metrics.class_precision[i]),
            "Recall": _json_float(metrics.class_recall[i]),
        }
        for i, name in enumerate(names)
    }
    return {
        "numImages": metrics.num_images,
        "numPixels": metrics.num_pixels,
        "mIoU": _json_float(metrics.miou),
        "Acc": _json_float(metrics.acc),
        "Kappa": _json_float(metrics.kappa),
        "mDice": _json_float(metrics.mdice),
        "classes": classes,
        "confusionMatrix": metrics.confusion.tolist(),
        "missed": metrics.missed.tolist(),
    }
