"""One-off conversion of a downloaded Cityscapes tree into the trainId files and file lists that training reads.

`prepare_cityscapes` does what cityscapesscripts' ``createTrainIdLabelImgs`` (and PaddleSeg's
``tools/convert_cityscapes.py``) do, pixel for pixel, but in parallel, resumable, and with errors that name the file:

- ``gtFine/<split>/<city>/*_gtFine_polygons.json`` -> ``*_gtFine_labelTrainIds.png`` rasterised by cityscapesscripts'
  own ``createLabelImage(annotation, "trainIds")``; where a split has only ``*_gtFine_labelIds.png`` (no json), the
  trainIds come from the labelIds through the official id -> trainId table;
- optionally ``*_gtFine_instanceTrainIds.png`` (16-bit, written with OpenCV: cityscapesscripts 2.3 builds a mode "I"
  PIL image that current Pillow cannot save as PNG);
- ``train.txt`` / ``val.txt`` / ``test.txt`` at the root, one ``<image> <label>`` pair of root-relative paths a line.

`prepare_autolabelled` converts NVIDIA's autolabelled coarse set (``refinement_final``), whose PNGs hold labelIds
(PaddleSeg's ``convert_cityscapes_autolabeling.py`` and NVIDIA's loader both map them with the id -> trainId table),
into trainIds under ``convert_autolabelled/<city>/`` and writes ``train_extra.txt``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage

from attnseg.data.base import read_label_png
from attnseg.data.labels import LABELS_BY_NAME, VALID_LABEL_IDS, id_to_train_id
from attnseg.errors import DatasetError

SPLITS = ("train", "val", "test")


@dataclass
class PrepareSummary:
    """What a preparation run did; `str()` gives the summary the CLI prints."""

    root: Path
    written: int = 0
    skipped: int = 0
    from_json: int = 0
    from_label_ids: int = 0
    lists: dict[str, int] = field(default_factory=dict)  # list file name -> number of lines

    def __str__(self) -> str:
        lines = [
            f"dataset root: {self.root}",
            f"label files written: {self.written} ({self.from_json} from polygons, "
            f"{self.from_label_ids} from labelIds), already up to date: {self.skipped}",
        ]
        lines += [f"{name}: {count} image/label pairs" for name, count in self.lists.items()]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Single-file conversions (pure functions of their inputs, usable on their own)
# --------------------------------------------------------------------------------------------------------------------


def load_annotation(json_path: str | Path) -> Annotation:
    """Parse a polygon json with cityscapesscripts, raising `DatasetError` (where it would exit) on bad input."""
    json_path = Path(json_path)
    try:
        annotation = Annotation()
        annotation.fromJsonText(json_path.read_text())
    except (OSError, ValueError, KeyError, TypeError, IndexError) as error:
        raise DatasetError(f"{json_path}: not a readable Cityscapes polygon file ({error})") from error
    for obj in annotation.objects:
        name = obj.label
        if name not in LABELS_BY_NAME and not (name.endswith("group") and name[: -len("group")] in LABELS_BY_NAME):
            # cityscapesscripts would call sys.exit() here; we name the file and the label instead.
            raise DatasetError(f"{json_path}: unknown label {name!r} (not in the Cityscapes label table)")
    if annotation.imgWidth <= 0 or annotation.imgHeight <= 0:
        raise DatasetError(f"{json_path}: image size {annotation.imgWidth}x{annotation.imgHeight} is not positive")
    return annotation


def train_ids_from_json(json_path: str | Path) -> np.ndarray:
    """(H, W) uint8 trainIds drawn from a polygon json exactly like ``json2labelImg(..., "trainIds")``."""
    return np.asarray(createLabelImage(load_annotation(json_path), "trainIds"), dtype=np.uint8)


def instance_ids_from_json(json_path: str | Path, encoding: str = "trainIds") -> np.ndarray:
    """(H, W) uint16 instance image like cityscapesscripts' ``json2instanceImg`` (id * 1000 + k for instances)."""
    image = np.asarray(createInstanceImage(load_annotation(json_path), encoding), dtype=np.int64)
    if image.min() < 0 or image.max() > np.iinfo(np.uint16).max:
        raise DatasetError(f"{json_path}: instance ids outside 0..65535 cannot be stored in a 16-bit PNG")
    return image.astype(np.uint16)


def train_ids_from_label_ids(
    label_ids: np.ndarray, path: str | Path = "<array>", also_allowed: frozenset[int] = frozenset()
) -> np.ndarray:
    """Official labelIds -> trainIds; a value outside the label table is a `DatasetError` naming `path`.

    Values in `also_allowed` (e.g. 255 in autolabelled files) pass and become 255 (ignore).
    """
    values = np.unique(label_ids)
    unknown = [int(v) for v in values if int(v) not in VALID_LABEL_IDS and int(v) not in also_allowed]
    if unknown:
        raise DatasetError(f"{path}: labelIds {unknown[:10]} are not in the Cityscapes label table (valid: 0..33)")
    return id_to_train_id[label_ids.astype(np.uint8)]


def _write_png(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.png")
    if not cv2.imwrite(str(tmp), array):
        raise DatasetError(f"{path}: could not be written")
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated file that a rerun would skip


def _up_to_date(output: Path, source: Path) -> bool:
    try:
        return output.stat().st_mtime >= source.stat().st_mtime
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class _Task:
    source: str
    output: str
    kind: str  # "json", "label_ids", "autolabel" (labelIds, 255 allowed), "instances"
    overwrite: bool


def _run_task(task: _Task) -> tuple[str, bool]:
    source, output = Path(task.source), Path(task.output)
    if not task.overwrite and _up_to_date(output, source):
        return task.kind, False
    if task.kind == "json":
        array = train_ids_from_json(source)
    elif task.kind == "instances":
        array = instance_ids_from_json(source, "trainIds")
    elif task.kind == "autolabel":
        array = train_ids_from_label_ids(read_label_png(source), source, frozenset({255}))
    else:
        array = train_ids_from_label_ids(read_label_png(source), source)
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_png(output, array)
    return task.kind, True


def _run_tasks(tasks: list[_Task], workers: int, progress: bool, desc: str) -> Iterator[tuple[str, bool]]:
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("fork").Pool(min(workers, len(tasks))) as pool:
            chunk = max(1, min(32, len(tasks) // (4 * workers)))
            yield from _progress(pool.imap_unordered(_run_task, tasks, chunksize=chunk), len(tasks), progress, desc)
    else:
        yield from _progress(map(_run_task, tasks), len(tasks), progress, desc)


def _progress(iterable: Iterable, total: int, enabled: bool, desc: str) -> Iterable:
    if not enabled or total == 0:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="file")


# --------------------------------------------------------------------------------------------------------------------
# Whole datasets
# --------------------------------------------------------------------------------------------------------------------


def _label_tasks(annotation_root: Path, quality: str, overwrite: bool, instances: bool) -> list[_Task]:
    """One task per annotated frame: from its polygons if present, else from its labelIds."""
    tasks: list[_Task] = []
    for split_dir in sorted(p for p in annotation_root.iterdir() if p.is_dir()):
        for city_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            jsons = {p.name[: -len("_polygons.json")]: p for p in city_dir.glob(f"*_{quality}_polygons.json")}
            label_ids = {p.name[: -len("_labelIds.png")]: p for p in city_dir.glob(f"*_{quality}_labelIds.png")}
            for stem in sorted(set(jsons) | set(label_ids)):
                output = city_dir / f"{stem}_labelTrainIds.png"
                if stem in jsons:
                    tasks.append(_Task(str(jsons[stem]), str(output), "json", overwrite))
                    if instances:
                        instance_out = city_dir / f"{stem}_instanceTrainIds.png"
                        tasks.append(_Task(str(jsons[stem]), str(instance_out), "instances", overwrite))
                else:
                    tasks.append(_Task(str(label_ids[stem]), str(output), "label_ids", overwrite))
    return tasks


def _tally(summary: PrepareSummary, results: Iterable[tuple[str, bool]]) -> None:
    for kind, written in results:
        if not written:
            summary.skipped += 1
            continue
        summary.written += 1
        if kind == "json":
            summary.from_json += 1
        elif kind in ("label_ids", "autolabel"):
            summary.from_label_ids += 1


def write_file_lists(root: str | Path, splits: Iterable[str] = SPLITS) -> dict[str, int]:
    """Write ``<split>.txt`` (``leftImg8bit/... gtFine/..._gtFine_labelTrainIds.png`` per line, root-relative).

    A test image whose label file does not exist is listed alone (the real test set has only placeholder labels).
    """
    root = Path(root)
    counts: dict[str, int] = {}
    for split in splits:
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            continue
        lines = []
        for image in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            label = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            image_rel = image.relative_to(root).as_posix()
            if label.is_file():
                lines.append(f"{image_rel} {label.relative_to(root).as_posix()}")
            elif split == "test":
                lines.append(image_rel)
            else:
                raise DatasetError(f"{image}: no label {label.relative_to(root)} (run `attnseg prepare cityscapes`?)")
        (root / f"{split}.txt").write_text("".join(line + "\n" for line in lines))
        counts[f"{split}.txt"] = len(lines)
    return counts


def prepare_cityscapes(
    root: str | Path,
    workers: int = 1,
    progress: bool = True,
    instances: bool = False,
    include_coarse: bool = False,
    overwrite: bool = False,
) -> PrepareSummary:
    """Write ``*_gtFine_labelTrainIds.png`` for every annotated frame, then the ``train/val/test.txt`` lists.

    Args:
        root: Cityscapes root holding ``leftImg8bit/`` and ``gtFine/``.
        workers: processes to convert with.
        progress: show a tqdm progress bar.
        instances: also write ``*_gtFine_instanceTrainIds.png`` (16-bit) from the polygons.
        include_coarse: also convert ``gtCoarse/`` (as cityscapesscripts' createTrainIdLabelImgs does).
        overwrite: convert even files whose output is newer than their source.

    Raises:
        DatasetError: missing folders, unreadable or unknown labels; the message names the file.
    """
    root = Path(root)
    summary = PrepareSummary(root)
    fine = root / "gtFine"
    for required in (root / "leftImg8bit", fine):
        if not required.is_dir():
            raise DatasetError(f"{required}: folder not found; expected the Cityscapes layout leftImg8bit/ + gtFine/")
    tasks = _label_tasks(fine, "gtFine", overwrite, instances)
    if include_coarse and (root / "gtCoarse").is_dir():
        tasks += _label_tasks(root / "gtCoarse", "gtCoarse", overwrite, instances)
    if not tasks:
        raise DatasetError(f"{fine}: no *_gtFine_polygons.json or *_gtFine_labelIds.png files found")
    _tally(summary, _run_tasks(tasks, workers, progress, "labelTrainIds"))
    summary.lists = write_file_lists(root)
    return summary


def _autolabel_root(root: Path) -> Path:
    base = root / "refinement_final"
    if not base.is_dir():
        raise DatasetError(f"{base}: folder not found; unzip refinement_final_v0.zip into the Cityscapes root")
    return base / "train_extra" if (base / "train_extra").is_dir() else base


def prepare_autolabelled(
    root: str | Path, workers: int = 1, progress: bool = True, overwrite: bool = False
) -> PrepareSummary:
    """Convert the autolabelled coarse set and gtCoarse to trainIds and list the train_extra images.

    Reads ``refinement_final/train_extra/<city>/<frame>_leftImg8bit.png`` (or ``refinement_final/<city>/...``),
    labelIds per pixel, and writes trainIds with the same file name to ``convert_autolabelled/<city>/``. The ``tmp``
    folder of the download and the confidence maps ``*_leftImg8bit_prob.png`` are skipped. If ``gtCoarse/`` exists,
    its frames get ``*_gtCoarse_labelTrainIds.png``.
    ``train_extra.txt`` pairs each ``leftImg8bit_trainextra/leftImg8bit/train_extra`` image with its converted label.
    """
    root = Path(root)
    summary = PrepareSummary(root)
    source_root = _autolabel_root(root)
    tasks = []
    for city_dir in sorted(p for p in source_root.iterdir() if p.is_dir() and p.name != "tmp"):
        # Only the labels: the confidence maps beside them (*_leftImg8bit_prob.png) stay where they are; the
        # dataset reads them there at load time (autolabel_min_confidence).
        for source in sorted(city_dir.glob("*_leftImg8bit.png")):
            output = root / "convert_autolabelled" / city_dir.name / source.name
            tasks.append(_Task(str(source), str(output), "autolabel", overwrite))
    if not tasks:
        raise DatasetError(f"{source_root}: no autolabelled PNG files found under <city>/ folders")
    if (root / "gtCoarse").is_dir():
        tasks += _label_tasks(root / "gtCoarse", "gtCoarse", overwrite, instances=False)
    _tally(summary, _run_tasks(tasks, workers, progress, "autolabelled"))
    summary.lists = write_extra_list(root)
    return summary


def write_extra_list(root: str | Path) -> dict[str, int]:
    """``train_extra.txt``: train_extra images that have a converted autolabelled label, one pair a line."""
    root = Path(root)
    image_root = root / "leftImg8bit_trainextra" / "leftImg8bit" / "train_extra"
    if not image_root.is_dir():
        return {}
    lines = []
    for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
        label = root / "convert_autolabelled" / image.parent.name / image.name
        if label.is_file():
            lines.append(f"{image.relative_to(root).as_posix()} {label.relative_to(root).as_posix()}")
    (root / "train_extra.txt").write_text("".join(line + "\n" for line in lines))
    return {"train_extra.txt": len(lines)}

