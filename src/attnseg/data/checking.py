"""Checking every file of a dataset up front (`attnseg prepare`), in parallel, reporting every bad file at once.

A frame is an image with its label files (`FrameFiles`). `check_frame` decodes them and returns what is wrong:
an image or label that cannot be decoded (missing, truncated, not an image), a label or polygon file whose size
differs from the image's, a label value outside the label table, a polygon file that cannot be parsed.
`check_frames` runs it over a whole dataset in a process pool with a progress bar; frames whose files have not
changed (size and modification time) since they last passed are not decoded again, so a re-run re-checks only
what changed. `raise_for_problems` then stops with one `DatasetError` listing every bad file.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cityscapesscripts.helpers.annotation import Annotation

from attnseg.data.base import image_size, label_values_error, read_label_png, values_outside
from attnseg.data.cityscapes import (
    AUTOLABEL_ID_DESCRIPTION,
    AUTOLABEL_ID_VALUES,
    LABEL_ID_DESCRIPTION,
    TRAIN_ID_DESCRIPTION,
    TRAIN_ID_VALUES,
)
from attnseg.data.labels import LABELS_BY_NAME, VALID_LABEL_IDS
from attnseg.data.mapillary import VISTAS_VALUE_DESCRIPTION, VISTAS_VALUES
from attnseg.errors import BadFilesError, DatasetError
from attnseg.fileio import atomic_write_text

#: encoding -> (values a label file of that encoding may hold, the same in words).
LABEL_VALUE_TABLES: dict[str, tuple[frozenset[int], str]] = {
    "labelIds": (VALID_LABEL_IDS, LABEL_ID_DESCRIPTION),
    "autolabel": (AUTOLABEL_ID_VALUES, AUTOLABEL_ID_DESCRIPTION),
    "trainIds": (TRAIN_ID_VALUES, TRAIN_ID_DESCRIPTION),
    "vistas": (VISTAS_VALUES, VISTAS_VALUE_DESCRIPTION),
}
#: Problems printed in the error; the report file beside the dataset has all of them.
MAX_LISTED_PROBLEMS = 50
REPORT_NAME = "prepare_errors.txt"
_CACHE_VERSION = 1

#: (the bad file, one line naming it and saying what is wrong).
Problem = tuple[str, str]


@dataclass(frozen=True)
class FrameFiles:
    """The files of one frame to check; None where the frame has no such file.

    Attributes:
        image: the RGB image.
        label: a label PNG, holding values of `encoding` (a key of `LABEL_VALUE_TABLES`).
        encoding: how `label` encodes classes.
        polygons: a Cityscapes ``*_polygons.json`` (parsed; its imgWidth/imgHeight must match the image).
        decode: decode the image and the label fully and check label values; False reads file headers only.
    """

    image: str | None = None
    label: str | None = None
    encoding: str = "labelIds"
    polygons: str | None = None
    decode: bool = True

    @property
    def files(self) -> tuple[str, ...]:
        """The frame's files, image first."""
        return tuple(path for path in (self.image, self.label, self.polygons) if path is not None)


@dataclass
class CheckResult:
    """What `check_frames` found."""

    problems: list[Problem]
    checked: int  # frames decoded now
    unchanged: int  # frames skipped because they passed before and have not changed since


def _decoded_image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # the whole stream: a truncated file fails here, not only its header
            return image.size
    except (OSError, ValueError, SyntaxError) as error:
        raise DatasetError(f"{path}: cannot be decoded as an image ({error})") from error


def _label_size(frame: FrameFiles) -> tuple[int, int]:
    assert frame.label is not None
    if not frame.decode:
        return image_size(frame.label)
    label = read_label_png(frame.label)
    allowed, description = LABEL_VALUE_TABLES[frame.encoding]
    bad = values_outside(label, allowed)
    if bad:
        raise label_values_error(frame.label, bad, description)
    return label.shape[1], label.shape[0]


def _attempt(problems: list[Problem], path: str, read: Callable[[], Any]) -> Any:
    """`read()`, or None with its `DatasetError` recorded as a problem of `path`."""
    try:
        return read()
    except DatasetError as error:
        problems.append((path, str(error)))
        return None


def _size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


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


def check_frame(frame: FrameFiles) -> list[Problem]:
    """Everything wrong with one frame's files ([] when nothing is); never raises for bad files."""
    problems: list[Problem] = []
    image = label = polygons = None
    if frame.image is not None:
        reader = _decoded_image_size if frame.decode else image_size
        image = _attempt(problems, frame.image, lambda: reader(frame.image))
    if frame.label is not None:
        label = _attempt(problems, frame.label, lambda: _label_size(frame))
    if frame.polygons is not None:
        annotation = _attempt(problems, frame.polygons, lambda: load_annotation(frame.polygons))
        polygons = None if annotation is None else (annotation.imgWidth, annotation.imgHeight)
    if image is not None and label is not None and label != image:
        problems.append((frame.label, f"{frame.label}: label is {_size_text(label)} but its image {frame.image} is "
                                      f"{_size_text(image)}"))  # fmt: skip
    reference, reference_path = (image, frame.image) if image is not None else (label, frame.label)
    if polygons is not None and reference is not None and polygons != reference:
        problems.append((frame.polygons, f"{frame.polygons}: imgWidth x imgHeight is {_size_text(polygons)} but "
                                         f"{reference_path} is {_size_text(reference)}"))  # fmt: skip
    return problems


# --------------------------------------------------------------------------------------------------------------------
# Whole datasets
# --------------------------------------------------------------------------------------------------------------------


def run_parallel(function: Callable[[Any], Any], items: Sequence[Any], workers: int, progress: bool,
                 desc: str) -> Iterator[Any]:  # fmt: skip
    """``map(function, items)`` in order, in `workers` forked processes when there is more than one item."""
    if workers > 1 and len(items) > 1:
        with multiprocessing.get_context("fork").Pool(min(workers, len(items))) as pool:
            chunk = max(1, min(32, len(items) // (4 * workers)))
            yield from _progress(pool.imap(function, items, chunksize=chunk), len(items), progress, desc)
    else:
        yield from _progress(map(function, items), len(items), progress, desc)


def _progress(iterable: Iterable, total: int, enabled: bool, desc: str) -> Iterable:
    if not enabled or total == 0:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="file")


def _signature(frame: FrameFiles) -> list | None:
    """What must be unchanged for an earlier pass to still hold: the checks asked for and each file's size and
    modification time; None if a file cannot be stat'ed (the check then reports it)."""
    stamps: list = [frame.encoding, frame.decode]
    for path in frame.files:
        try:
            status = os.stat(path)
        except OSError:
            return None
        stamps.append([path, status.st_size, status.st_mtime_ns])
    return stamps


def _read_cache(path: Path | None) -> dict[str, list]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged cache only costs a full check
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION or not isinstance(data.get("frames"), dict):
        return {}
    return data["frames"]


def check_frames(
    frames: Sequence[FrameFiles], *, workers: int = 1, progress: bool = False, cache_path: Path | None = None,
    desc: str = "checking",
) -> CheckResult:  # fmt: skip
    """`check_frame` on every frame, in parallel; frames recorded in `cache_path` as passed, and unchanged since,
    are not decoded again. The frames that pass are recorded there (atomically) for the next run."""
    cached = _read_cache(cache_path)
    passed: dict[str, list] = {}
    todo: list[tuple[FrameFiles, str, list | None]] = []
    for frame in frames:
        key, signature = frame.files[0], _signature(frame)
        if signature is not None and cached.get(key) == signature:
            passed[key] = signature
        else:
            todo.append((frame, key, signature))
    problems: list[Problem] = []
    results = run_parallel(check_frame, [frame for frame, _, _ in todo], workers, progress, desc)
    for (frame, key, signature), found in zip(todo, results):
        problems += found
        if not found and signature is not None:
            passed[key] = signature
    if cache_path is not None:
        atomic_write_text(cache_path, json.dumps({"version": _CACHE_VERSION, "frames": passed}))
    return CheckResult(problems, checked=len(todo), unchanged=len(frames) - len(todo))


def raise_for_problems(problems: Sequence[Problem], root: Path, what: str = "converted or listed") -> None:
    """Stop with one `DatasetError` listing every bad file (the first `MAX_LISTED_PROBLEMS` problems in the message,
    all of them in ``root/prepare_errors.txt``); with no problems, remove an old report and return."""
    report = root / REPORT_NAME
    if not problems:
        report.unlink(missing_ok=True)
        return
    ordered = sorted(set(problems))
    lines = [line for _, line in ordered]
    atomic_write_text(report, "".join(line + "\n" for line in lines))
    count = len({path for path, _ in ordered})
    shown = "".join(f"\n  {line}" for line in lines[:MAX_LISTED_PROBLEMS])
    more = f"\n  ... and {len(lines) - MAX_LISTED_PROBLEMS} more" if len(lines) > MAX_LISTED_PROBLEMS else ""
    raise BadFilesError(f"{count} bad file{'' if count == 1 else 's'} under {root}, nothing was {what}; fix or remove "
                       f"them and re-run ({len(lines)} problems, all listed in {report}):{shown}{more}")  # fmt: skip
