"""Auto-labelling: a teacher model's confident pixels as hard labels for unlabelled images (HMSA, section 4).

The teacher runs its best inference (hierarchical multi-scale + flip by default) on each image; a pixel gets the
argmax class where the fused probability reaches the threshold and ignore (255) elsewhere. The files land where
`attnseg prepare autolabelled` puts NVIDIA's released auto-labels, so ``data.coarse: autolabelled`` trains on them
with no conversion:

    <root>/leftImg8bit_trainextra/leftImg8bit/train_extra/<city>/<frame>_leftImg8bit.png   the images
    <root>/convert_autolabelled/<city>/<frame>_leftImg8bit.png                            trainIds, 255 = ignore
    <root>/convert_autolabelled/<city>/<frame>_leftImg8bit_prob.png                       confidence 0-255
    <root>/convert_autolabelled/autolabel.json                                            model, recipe, coverage

The confidence map lets ``data.autolabel_min_confidence`` raise the threshold at load time, as NVIDIA's
``--custom_coarse_prob`` does on its released ``*_prob.png`` files. With ``refine_coarse`` and a gtCoarse label for
the image, the coarse ground truth is kept where it has a class and the teacher fills only its unlabelled pixels
(NVIDIA's refinement of coarse labels).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnseg.data.labels import IGNORE_INDEX
from attnseg.errors import DatasetError
from attnseg.fileio import atomic_write_text
from attnseg.inference.confidence import unit_to_uint8

# NVIDIA's SOTA recipe ignores released auto-label pixels below confidence 0.5 (`--custom_coarse_prob 0.5`).
DEFAULT_THRESHOLD = 0.5
IMAGE_SUFFIX = "_leftImg8bit.png"
SIDECAR_NAME = "autolabel.json"


@dataclasses.dataclass(frozen=True)
class AutolabelItem:
    """One image to label: where it is read from, and its city/frame name in the output layout."""

    source: Path
    city: str
    frame: str  # "<city>_<seq>_<frame>" or the file stem; the files are named "<frame>_leftImg8bit*.png"

    def image_path(self, root: Path) -> Path:
        return root / "leftImg8bit_trainextra" / "leftImg8bit" / "train_extra" / self.city / f"{self.frame}{IMAGE_SUFFIX}"

    def label_path(self, root: Path) -> Path:
        return root / "convert_autolabelled" / self.city / f"{self.frame}{IMAGE_SUFFIX}"

    def confidence_path(self, root: Path) -> Path:
        return root / "convert_autolabelled" / self.city / f"{self.frame}_leftImg8bit_prob.png"


def items_from_files(files: Iterable[Path]) -> list[AutolabelItem]:
    """Items for image files: a Cityscapes-named file keeps its city and frame, any other file takes its folder
    name as the city and its stem as the frame.

    Raises:
        DatasetError: two inputs that would be written to the same output name.
    """
    items, seen = [], {}
    for path in files:
        path = Path(path)
        name = path.name
        frame = name[: -len(IMAGE_SUFFIX)] if name.endswith(IMAGE_SUFFIX) else path.stem
        city = path.parent.name or "images"
        key = (city, frame)
        if key in seen:
            raise DatasetError(f"{path} and {seen[key]} would both be labelled as {city}/{frame}{IMAGE_SUFFIX}; "
                               "rename one of them")  # fmt: skip
        seen[key] = path
        items.append(AutolabelItem(path, city, frame))
    return items


def pseudo_label(probabilities: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) uint8 label (argmax where the top probability >= `threshold`, else 255) and (H, W) uint8 confidence
    (top probability x 255, rounded) from (K, H, W) class probabilities."""
    top = probabilities.max(axis=0)
    label = probabilities.argmax(axis=0).astype(np.uint8)
    label[top < threshold] = IGNORE_INDEX
    confidence = unit_to_uint8(top)  # the encoding of every confidence map attnseg writes
    return label, confidence


def refine_with_coarse(label: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """The coarse ground truth where it has a class, the teacher's label in the pixels it leaves unlabelled."""
    refined = label.copy()
    known = coarse != IGNORE_INDEX
    refined[known] = coarse[known]
    return refined


def label_statistics(label: np.ndarray, num_classes: int, truth: np.ndarray | None = None) -> dict[str, Any]:
    """Coverage (labelled share) and per-class pixel counts of one pseudo-label; with the true label, also how many
    labelled pixels that have a true class agree with it."""
    counts = np.bincount(label.ravel(), minlength=256)
    labelled = int(counts[:num_classes].sum())
    record = {"pixels": int(label.size), "labelled": labelled, "coverage": labelled / max(label.size, 1),
              "class_pixels": [int(c) for c in counts[:num_classes]]}  # fmt: skip
    if truth is not None:
        if truth.shape != label.shape:
            raise DatasetError(f"true label of {truth.shape[1]}x{truth.shape[0]} for a {label.shape[1]}x"
                               f"{label.shape[0]} pseudo-label")  # fmt: skip
        judged = (label < num_classes) & (truth < num_classes)
        record["checked"] = int(judged.sum())
        record["correct"] = int((label[judged] == truth[judged]).sum())
    return record


def place_image(item: AutolabelItem, root: Path) -> None:
    """Put the source image at its train_extra place (a hard link where possible, else a copy); a file already
    there (the same image, a resumed run) is kept."""
    from attnseg.fileio import atomic_path

    target = item.image_path(root)
    if target.exists() or target.resolve() == item.source.resolve():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        try:
            os.link(item.source, temporary)
        except OSError:
            shutil.copyfile(item.source, temporary)


@dataclasses.dataclass
class AutolabelSummary:
    """What one `autolabel` call did: images labelled now, images skipped as already done, their statistics."""

    labelled: int = 0
    skipped: int = 0
    records: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def _read_label(path: Path) -> np.ndarray:
    import cv2

    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2:
        raise DatasetError(f"{path}: not a single-channel label PNG")
    return label


def label_items(
    items: Sequence[AutolabelItem],
    root: Path,
    predict_probabilities: Callable[[Path], np.ndarray],
    num_classes: int,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    coarse_label: Callable[[AutolabelItem], np.ndarray | None] | None = None,
    true_label: Callable[[AutolabelItem], np.ndarray | None] | None = None,
    write_confidence: bool = True,
    progress: Callable[[Iterable], Iterable] = lambda items: items,
) -> AutolabelSummary:
    """Label every item not yet labelled (a label file on disk means done: re-running resumes).

    Args:
        items: images to label (this process's share under torchrun).
        root: the Cityscapes root the files are written to.
        predict_probabilities: image path -> (K, H, W) fused class probabilities of the teacher.
        num_classes: K.
        threshold: minimum top probability for a pixel to be labelled.
        coarse_label: item -> its gtCoarse trainIds or None; given, the coarse ground truth wins where it has a
            class (NVIDIA's coarse refinement).
        true_label: item -> its true trainIds or None (measures pseudo-label accuracy; never written).
        write_confidence: also write the confidence PNG.
        progress: wraps the item iterable (a progress bar).
    """
    from attnseg.inference.dump import write_png

    summary = AutolabelSummary()
    for item in progress(items):
        label_path = item.label_path(root)
        key = f"{item.city}/{item.frame}"
        truth = true_label(item) if true_label is not None else None
        if label_path.is_file():
            summary.skipped += 1
            summary.records[key] = label_statistics(_read_label(label_path), num_classes, truth)
            continue
        label, confidence = pseudo_label(predict_probabilities(item.source), threshold)
        coarse = coarse_label(item) if coarse_label is not None else None
        if coarse is not None:
            label = refine_with_coarse(label, coarse)
        place_image(item, root)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        if write_confidence:
            write_png(item.confidence_path(root), confidence)
        write_png(label_path, label)  # last: its presence marks the image as done
        summary.labelled += 1
        summary.records[key] = label_statistics(label, num_classes, truth)
    return summary


def collect_records(root: Path, items: Sequence[AutolabelItem], num_classes: int,
                    true_label: Callable[[AutolabelItem], np.ndarray | None] | None = None) -> dict[str, dict[str, Any]]:
    """Statistics of every item's label file on disk (the sidecar is built from the files, so a resumed or
    sharded run reports all images)."""
    records = {}
    for item in items:
        path = item.label_path(root)
        if path.is_file():
            truth = true_label(item) if true_label is not None else None
            records[f"{item.city}/{item.frame}"] = label_statistics(_read_label(path), num_classes, truth)
    return records


def write_sidecar(root: Path, records: dict[str, dict[str, Any]], class_names: Sequence[str],
                  recipe: dict[str, Any]) -> Path:
    """``convert_autolabelled/autolabel.json``: the teacher and recipe, coverage per image and per class."""
    num_classes = len(class_names)
    class_pixels = np.zeros(num_classes, np.int64)
    pixels = labelled = checked = correct = 0
    for record in records.values():
        class_pixels += np.asarray(record["class_pixels"], np.int64)
        pixels += record["pixels"]
        labelled += record["labelled"]
        checked += record.get("checked", 0)
        correct += record.get("correct", 0)
    accuracy = {"accuracy_against_truth": correct / checked} if checked else {}
    content = {
        **recipe,
        "images": len(records),
        "coverage": labelled / max(pixels, 1),
        **accuracy,
        "class_share": {name: int(count) / max(pixels, 1) for name, count in zip(class_names, class_pixels)},
        "per_image": {key: {"coverage": round(r["coverage"], 6), "class_pixels": r["class_pixels"]}
                      for key, r in sorted(records.items())},
    }  # fmt: skip
    target = root / "convert_autolabelled" / SIDECAR_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, json.dumps(content, indent=1) + "\n")
    return target
