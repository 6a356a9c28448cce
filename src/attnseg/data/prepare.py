"""One-off conversion of a downloaded Cityscapes tree into the trainId files and file lists that training reads.

`prepare_cityscapes` does what cityscapesscripts' ``createTrainIdLabelImgs`` (and PaddleSeg's
``tools/convert_cityscapes.py``) do, pixel for pixel, but in parallel, resumable, and with errors that name the file:

- ``gtFine/<split>/<city>/*_gtFine_polygons.json`` -> ``*_gtFine_labelTrainIds.png`` rasterised by cityscapesscripts'
  own ``createLabelImage(annotation, "trainIds")``; where a split has only ``*_gtFine_labelIds.png`` (no json), the
  trainIds come from the labelIds through the official id -> trainId table;
- optionally ``*_gtFine_instanceTrainIds.png`` (16-bit, written with OpenCV: cityscapesscripts 2.3 builds a mode "I"
  PIL image that current Pillow cannot save as PNG);
- ``train.txt`` / ``val.txt`` / ``test.txt`` at the root, one ``<image> <label>`` pair of root-relative paths a line.

Before anything is written, every frame is checked (`attnseg.data.checking`): each image and label is decoded in
parallel, sizes are compared (the polygon files' imgWidth/imgHeight too) and label values checked against the
table; any problem stops the run with one `DatasetError` listing every bad file (also written to
``<root>/prepare_errors.txt``), so no trainId file or list is written from a half-broken download. A re-run
converts only what is missing or out of date and decodes again only the files that changed since they passed.

`prepare_autolabelled` converts NVIDIA's autolabelled coarse set (``refinement_final``), whose PNGs hold labelIds
(PaddleSeg's ``convert_cityscapes_autolabeling.py`` and NVIDIA's loader both map them with the id -> trainId table),
into trainIds under ``convert_autolabelled/<city>/`` and writes ``train_extra.txt``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage

from attnseg.data.base import label_values_error, read_label_png, values_outside
from attnseg.data.checking import (
    AUTOLABEL_ID_DESCRIPTION,
    LABEL_ID_DESCRIPTION,
    CheckResult,
    FrameFiles,
    Problem,
    check_frames,
    load_annotation,
    raise_for_problems,
    run_parallel,
)
from attnseg.data.labels import VALID_LABEL_IDS, id_to_train_id
from attnseg.errors import DatasetError
from attnseg.fileio import atomic_write_text, atomic_write_with, remove_stale_temporaries

__all__ = ["PrepareSummary", "instance_ids_from_json", "load_annotation", "prepare_autolabelled",
           "prepare_cityscapes", "train_ids_from_json", "train_ids_from_label_ids", "write_extra_list",
           "write_file_lists"]  # fmt: skip

SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"


@dataclass
class PrepareSummary:
    """What a preparation run did; `str()` gives the summary the CLI prints."""

    root: Path
    written: int = 0
    skipped: int = 0
    from_json: int = 0
    from_label_ids: int = 0
    checked: int = 0  # frames decoded and checked in this run
    unchanged: int = 0  # frames that passed in an earlier run and have not changed since
    lists: dict[str, int] = field(default_factory=dict)  # list file name -> number of lines

    def __str__(self) -> str:
        lines = [
            f"dataset root: {self.root}",
            f"frames checked: {self.checked + self.unchanged} ({self.unchanged} unchanged since they last passed)",
            f"label files written: {self.written} ({self.from_json} from polygons, "
            f"{self.from_label_ids} from labelIds), already up to date: {self.skipped}",
        ]
        lines += [f"{name}: {count} image/label pairs" for name, count in self.lists.items()]
        return "\n".join(lines)

    def add_check(self, result: CheckResult) -> None:
        self.checked += result.checked
        self.unchanged += result.unchanged


# --------------------------------------------------------------------------------------------------------------------
# Single-file conversions (pure functions of their inputs, usable on their own)
# --------------------------------------------------------------------------------------------------------------------


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

    Values in `also_allowed` (e.g. 255 in autolabelled files) pass and become 255 (ignore), and so does -1 (license
    plate, the one negative labelId) in a signed array.
    """
    label_ids = np.asarray(label_ids)
    allowed = VALID_LABEL_IDS | also_allowed | ({-1} if label_ids.dtype.kind == "i" else set())
    bad = values_outside(label_ids, allowed)
    if bad:
        description = AUTOLABEL_ID_DESCRIPTION if 255 in also_allowed else LABEL_ID_DESCRIPTION
        raise label_values_error(path, bad, description)
    if label_ids.dtype != np.uint8:
        label_ids = np.where((label_ids < 0) | (label_ids > 255), 255, label_ids).astype(np.uint8)
    return id_to_train_id[label_ids]


def _write_png(path: Path, array: np.ndarray) -> None:
    # Atomic: a crash mid-write never leaves a truncated file that a re-run would take as finished.
    try:
        atomic_write_with(path, lambda temporary: cv2.imwrite(str(temporary), array))
    except OSError as error:
        raise DatasetError(f"{path}: could not be written ({error})") from error


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


# --------------------------------------------------------------------------------------------------------------------
# Which files make up a dataset
# --------------------------------------------------------------------------------------------------------------------


def _image_dir(root: Path, split: str) -> Path:
    if split == "train_extra":
        return root / "leftImg8bit_trainextra" / "leftImg8bit" / "train_extra"
    return root / "leftImg8bit" / split


def _by_frame(folder: Path, suffix: str) -> dict[tuple[str, str], Path]:
    """(city, frame stem) -> file, for ``folder/<city>/<stem><suffix>``."""
    if not folder.is_dir():
        return {}
    return {(path.parent.name, path.name[: -len(suffix)]): path for path in folder.glob(f"*/*{suffix}")}


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _split_frames(
    root: Path, quality: str, split: str, require_images: bool
) -> tuple[list[FrameFiles], list[Problem]]:
    """The frames of one split of gtFine/gtCoarse and the images/labels that have no counterpart.

    With `require_images` (gtFine) an image without a label (outside ``test``) and a label without its image are
    problems; gtCoarse frames are checked against their image where it exists (``train_extra`` images are a
    separate download) and images without a coarse label are not its concern.
    """
    image_dir, label_dir = _image_dir(root, split), root / quality / split
    images = _by_frame(image_dir, IMAGE_SUFFIX)
    polygons = _by_frame(label_dir, f"_{quality}_polygons.json")
    label_ids = _by_frame(label_dir, f"_{quality}_labelIds.png")
    train_ids = _by_frame(label_dir, f"_{quality}_labelTrainIds.png")
    frames, problems = [], []
    for key in sorted(set(images) | set(polygons) | set(label_ids) | set(train_ids)):
        image = images.get(key)
        # A trainIds file is checked only where it is the sole label: beside polygons it is our output, rewritten
        # whenever it is older than them.
        sole_train_ids = None if key in polygons else train_ids.get(key)
        label, encoding = (label_ids[key], "labelIds") if key in label_ids else (sole_train_ids, "trainIds")
        if label is None and key not in polygons:
            if require_images and split != "test":
                expected = label_dir / key[0] / f"{key[1]}_{quality}_polygons.json"
                problems.append((str(image), f"{image}: no label; expected {expected} or its _labelIds.png"))
            elif require_images:
                frames.append(FrameFiles(image=str(image)))
            continue
        if image is None and require_images:
            named = polygons.get(key) or label
            expected = image_dir / key[0] / f"{key[1]}{IMAGE_SUFFIX}"
            problems.append((str(named), f"{named}: no image; expected {expected}"))
        frames.append(FrameFiles(image=_text(image), label=_text(label), encoding=encoding,
                                 polygons=_text(polygons.get(key))))  # fmt: skip
    return frames, problems


def _quality_frames(root: Path, quality: str, require_images: bool) -> tuple[list[FrameFiles], list[Problem]]:
    label_root = root / quality
    splits = {p.name for p in label_root.iterdir() if p.is_dir()}
    if require_images:  # not leftImg8bit/train_extra (the trainextra zip unpacks there): gtFine has no labels for it
        splits |= {p.name for p in (root / "leftImg8bit").iterdir() if p.is_dir() and p.name in SPLITS}
    frames, problems = [], []
    for split in sorted(splits):
        split_frames, split_problems = _split_frames(root, quality, split, require_images)
        frames += split_frames
        problems += split_problems
    return frames, problems


def _conversion_tasks(frames: Iterable[FrameFiles], overwrite: bool, instances: bool) -> list[_Task]:
    """One task per frame with a source: its polygons if present, else its labelIds (trainIds-only frames have
    nothing to convert)."""
    tasks: list[_Task] = []
    for frame in frames:
        if frame.polygons is not None:
            stem = frame.polygons[: -len("_polygons.json")]
            tasks.append(_Task(frame.polygons, f"{stem}_labelTrainIds.png", "json", overwrite))
            if instances:
                tasks.append(_Task(frame.polygons, f"{stem}_instanceTrainIds.png", "instances", overwrite))
        elif frame.label is not None and frame.encoding == "labelIds":
            stem = frame.label[: -len("_labelIds.png")]
            tasks.append(_Task(frame.label, f"{stem}_labelTrainIds.png", "label_ids", overwrite))
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


# --------------------------------------------------------------------------------------------------------------------
# Whole datasets
# --------------------------------------------------------------------------------------------------------------------


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
        for image in sorted(image_dir.glob(f"*/*{IMAGE_SUFFIX}")):
            stem = image.name[: -len(IMAGE_SUFFIX)]
            label = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"
            image_rel = image.relative_to(root).as_posix()
            if label.is_file():
                lines.append(f"{image_rel} {label.relative_to(root).as_posix()}")
            elif split == "test":
                lines.append(image_rel)
            else:
                raise DatasetError(f"{image}: no label {label.relative_to(root)} (run `attnseg prepare cityscapes`?)")
        atomic_write_text(root / f"{split}.txt", "".join(line + "\n" for line in lines))
        counts[f"{split}.txt"] = len(lines)
    return counts


def _clean(root: Path, folders: Iterable[Path]) -> None:
    """Remove what killed runs left: attnseg temporaries, and the ``*.tmp.png`` of earlier versions."""
    remove_stale_temporaries(root, recursive=False)
    for folder in folders:
        remove_stale_temporaries(folder)
        for leftover in folder.glob("*/*/*.tmp.png") if folder.is_dir() else ():
            leftover.unlink(missing_ok=True)


def prepare_cityscapes(
    root: str | Path,
    workers: int = 1,
    progress: bool = True,
    instances: bool = False,
    include_coarse: bool = False,
    overwrite: bool = False,
) -> PrepareSummary:
    """Check every frame, then write ``*_gtFine_labelTrainIds.png`` for every annotated one and the
    ``train/val/test.txt`` lists.

    Args:
        root: Cityscapes root holding ``leftImg8bit/`` and ``gtFine/``.
        workers: processes to check and convert with.
        progress: show tqdm progress bars.
        instances: also write ``*_gtFine_instanceTrainIds.png`` (16-bit) from the polygons.
        include_coarse: also check and convert ``gtCoarse/`` (as cityscapesscripts' createTrainIdLabelImgs does).
        overwrite: convert even files whose output is newer than their source.

    Raises:
        DatasetError: a missing folder (naming it), or bad files: an image or label that cannot be decoded, an
            image without a label or a label without its image, an image/label/polygon size mismatch, a label
            value outside the table; one error lists all of them, and nothing is written.
    """
    root = Path(root)
    summary = PrepareSummary(root)
    fine = root / "gtFine"
    for required in (root / "leftImg8bit", fine):
        if not required.is_dir():
            raise DatasetError(f"{required}: folder not found; expected the Cityscapes layout leftImg8bit/ + gtFine/")
    coarse = include_coarse and (root / "gtCoarse").is_dir()
    _clean(root, [fine, root / "gtCoarse"] if coarse else [fine])
    frames, problems = _quality_frames(root, "gtFine", require_images=True)
    if not any(frame.label is not None or frame.polygons is not None for frame in frames):
        raise DatasetError(f"{fine}: no *_gtFine_polygons.json or *_gtFine_labelIds.png files found")
    if coarse:
        coarse_frames, coarse_problems = _quality_frames(root, "gtCoarse", require_images=False)
        frames, problems = frames + coarse_frames, problems + coarse_problems
    result = check_frames(frames, workers=workers, progress=progress,
                          cache_path=root / ".attnseg_prepare_cityscapes.json", desc="checking")  # fmt: skip
    summary.add_check(result)
    raise_for_problems(problems + result.problems, root)
    tasks = _conversion_tasks(frames, overwrite, instances)
    _tally(summary, run_parallel(_run_task, tasks, workers, progress, "labelTrainIds"))
    summary.lists = write_file_lists(root)
    return summary


def _autolabel_root(root: Path) -> Path:
    base = root / "refinement_final"
    if not base.is_dir():
        raise DatasetError(f"{base}: folder not found; unzip refinement_final_v0.zip into the Cityscapes root")
    return base / "train_extra" if (base / "train_extra").is_dir() else base


def _autolabel_frames(root: Path, source_root: Path) -> list[FrameFiles]:
    """One frame per refinement_final label, with its train_extra image where that exists."""
    image_dir = _image_dir(root, "train_extra")
    frames = []
    for city_dir in sorted(p for p in source_root.iterdir() if p.is_dir() and p.name != "tmp"):
        # Only the labels: the confidence maps beside them (*_leftImg8bit_prob.png) stay where they are; the
        # dataset reads them there at load time (autolabel_min_confidence).
        for source in sorted(city_dir.glob(f"*{IMAGE_SUFFIX}")):
            image = image_dir / city_dir.name / source.name
            frames.append(FrameFiles(image=str(image) if image.is_file() else None, label=str(source),
                                     encoding="autolabel"))  # fmt: skip
    return frames


def prepare_autolabelled(
    root: str | Path, workers: int = 1, progress: bool = True, overwrite: bool = False
) -> PrepareSummary:
    """Check, then convert the autolabelled coarse set and gtCoarse to trainIds and list the train_extra images.

    Reads ``refinement_final/train_extra/<city>/<frame>_leftImg8bit.png`` (or ``refinement_final/<city>/...``),
    labelIds per pixel, and writes trainIds with the same file name to ``convert_autolabelled/<city>/``. The ``tmp``
    folder of the download and the confidence maps ``*_leftImg8bit_prob.png`` are skipped. If ``gtCoarse/`` exists,
    its frames get ``*_gtCoarse_labelTrainIds.png``.
    ``train_extra.txt`` pairs each ``leftImg8bit_trainextra/leftImg8bit/train_extra`` image with its converted label.
    Every label (and its image, where the train_extra images are there) is checked first, as in
    `prepare_cityscapes`; one error lists every bad file and nothing is written.
    """
    root = Path(root)
    summary = PrepareSummary(root)
    source_root = _autolabel_root(root)
    frames = _autolabel_frames(root, source_root)
    if not frames:
        raise DatasetError(f"{source_root}: no autolabelled PNG files found under <city>/ folders")
    coarse_frames, problems = [], []
    if (root / "gtCoarse").is_dir():
        coarse_frames, problems = _quality_frames(root, "gtCoarse", require_images=False)
    _clean(root, [root / "convert_autolabelled", root / "gtCoarse"])
    result = check_frames(frames + coarse_frames, workers=workers, progress=progress,
                          cache_path=root / ".attnseg_prepare_autolabelled.json", desc="checking")  # fmt: skip
    summary.add_check(result)
    raise_for_problems(problems + result.problems, root)
    tasks = [_Task(frame.label, str(root / "convert_autolabelled" / Path(frame.label).parent.name /
                                    Path(frame.label).name), "autolabel", overwrite) for frame in frames]
    tasks += _conversion_tasks(coarse_frames, overwrite, instances=False)
    _tally(summary, run_parallel(_run_task, tasks, workers, progress, "autolabelled"))
    summary.lists = write_extra_list(root)
    return summary


def write_extra_list(root: str | Path) -> dict[str, int]:
    """``train_extra.txt``: train_extra images that have a converted autolabelled label, one pair a line."""
    root = Path(root)
    image_root = _image_dir(root, "train_extra")
    if not image_root.is_dir():
        return {}
    lines = []
    for image in sorted(image_root.glob(f"*/*{IMAGE_SUFFIX}")):
        label = root / "convert_autolabelled" / image.parent.name / image.name
        if label.is_file():
            lines.append(f"{image.relative_to(root).as_posix()} {label.relative_to(root).as_posix()}")
    atomic_write_text(root / "train_extra.txt", "".join(line + "\n" for line in lines))
    return {"train_extra.txt": len(lines)}


@dataclass
class MapillaryCheck:
    """What `check_mapillary` checked; `str()` gives the summary the CLI prints."""

    root: Path
    images: dict[str, int] = field(default_factory=dict)  # split -> labelled images
    decoded: int = 0  # frames whose image and label were decoded and label values checked
    unchanged: int = 0

    def __str__(self) -> str:
        lines = [f"{split}: {count} labelled images" for split, count in self.images.items()]
        lines.append(f"sizes checked on every file; decoded with label values checked: {self.decoded} "
                     f"({self.unchanged} frames unchanged since they last passed)")  # fmt: skip
        lines.append(f"Mapillary Vistas at {self.root}: {sum(self.images.values())} labelled images, ready "
                     "(no conversion needed)")  # fmt: skip
        return "\n".join(lines)


def _mapillary_frames(root: Path, all_values: bool, sample_size: int) -> tuple[list[FrameFiles], list[Problem], dict]:
    from attnseg.data.mapillary import list_split, vistas_label_path

    frames, problems, counts = [], [], {}
    for split in ("train", "val"):
        if split == "val" and not (root / "validation").is_dir():
            continue  # training data alone is enough for pre-training
        samples, unlabelled = list_split(root, split)
        problems += [(str(image), f"{image}: no label file; expected {vistas_label_path(root, split, image)}")
                     for image in unlabelled]  # fmt: skip
        counts[split] = len(samples)
        chosen = set(range(len(samples)))
        if not all_values and len(samples) > sample_size:  # evenly spread, always the first and the last
            chosen = set(np.linspace(0, len(samples) - 1, max(sample_size, 2)).round().astype(int).tolist())
        frames += [FrameFiles(image=str(s.image), label=str(s.label), encoding="vistas", decode=k in chosen)
                   for k, s in enumerate(samples)]  # fmt: skip
    return frames, problems, counts


def check_mapillary(
    root: str | Path, workers: int = 1, progress: bool = True, all_values: bool = False, sample_size: int = 32
) -> MapillaryCheck:
    """Check a Mapillary Vistas v1.2 tree (its labels need no conversion) before a long pre-training run.

    Every image and label file's size is read from its header; `sample_size` evenly spread frames per split (all of
    them with `all_values`) are decoded and their label values checked against the 66 v1.2 classes.

    Raises:
        DatasetError: a missing folder or a wrong config.json (naming it), or bad files: one error lists them all.
    """
    root = Path(root)
    frames, problems, counts = _mapillary_frames(root, all_values, sample_size)
    remove_stale_temporaries(root, recursive=False)
    result = check_frames(frames, workers=workers, progress=progress,
                          cache_path=root / ".attnseg_prepare_mapillary.json", desc="checking")  # fmt: skip
    raise_for_problems(problems + result.problems, root, what="marked ready")
    decoded = sum(frame.decode for frame in frames)
    return MapillaryCheck(root, counts, decoded=decoded, unchanged=result.unchanged)
