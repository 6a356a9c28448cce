"""Cityscapes benchmark submissions: full-resolution 8-bit labelId PNGs, and a checker to run before uploading.

The evaluation server matches files to test images by the ``<city>_<sequence>_<frame>`` prefix of their names
and reads single-channel 8-bit PNGs of labelIds at the original 2048x1024 size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from attnseg.data.labels import VALID_LABEL_IDS, train_id_to_id
from attnseg.errors import DatasetError
from attnseg.fileio import remove_stale_temporaries
from attnseg.inference.dump import safe_name, write_png

CITYSCAPES_SIZE = (1024, 2048)  # (height, width)
MAX_LISTED_PROBLEMS = 20


def frame_key(file_name: str) -> str | None:
    """``<city>_<seq>_<frame>`` of a Cityscapes file name (``aachen_000000_000019_leftImg8bit.png``), else None."""
    parts = Path(file_name).name.split("_")
    if len(parts) < 3:
        return None
    parts[2] = parts[2].split(".")[0]
    if not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    return "_".join(parts[:3])


def submission_file_name(name: str) -> str:
    """File name of a sample's submission PNG: ``<city>_<seq>_<frame>_leftImg8bit.png`` (server convention)."""
    key = frame_key(safe_name(name))
    if key is None:
        raise DatasetError(f"sample name {name!r} is not a Cityscapes <city>_<seq>_<frame> name")
    return f"{key}_leftImg8bit.png"


class SubmissionWriter:
    """An ``on_prediction`` callback writing one labelId PNG per image (`submission_file_name`) into `out_dir`.

    Each PNG is written to a temporary name and renamed when complete; temporaries of a killed run are removed
    when the next writer starts.

    Args:
        out_dir: output folder (flat).
        train_id_to_label_id: (256,) uint8 table; Cityscapes' by default.
    """

    def __init__(self, out_dir: str | Path, train_id_to_label_id: np.ndarray = train_id_to_id):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out_dir)
        self.table = np.asarray(train_id_to_label_id, dtype=np.uint8)
        self.written: list[Path] = []

    def __call__(self, names: Sequence[str], predictions: np.ndarray, extras: dict | None = None) -> None:
        for name, prediction in zip(names, predictions):
            path = self.out_dir / submission_file_name(name)
            write_png(path, self.table[np.asarray(prediction, dtype=np.uint8)])
            self.written.append(path)


def expected_frame_keys(cityscapes_root: str | Path, split: str = "test") -> list[str]:
    """Frame keys of the images of a split, from ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``."""
    folder = Path(cityscapes_root) / "leftImg8bit" / split
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder; expected the Cityscapes root holding leftImg8bit/{split}")
    keys = sorted(frame_key(path.name) for path in folder.glob("*/*_leftImg8bit.png"))
    if not keys:
        raise DatasetError(f"{folder}: no */*_leftImg8bit.png images")
    return keys


def check_submission(
    submission_dir: str | Path,
    expected: str | Path | Iterable[str],
    expected_size: tuple[int, int] = CITYSCAPES_SIZE,
    split: str = "test",
    verbose: bool = True,
) -> int:
    """Check a folder of submission PNGs before uploading it.

    Checks: one PNG per expected image (no missing, duplicate or unknown names), single-channel 8-bit, size
    `expected_size`, only valid Cityscapes labelIds.

    Args:
        submission_dir: folder searched recursively for PNGs.
        expected: a Cityscapes root (its ``leftImg8bit/<split>`` images are expected) or the frame keys/names.
        expected_size: (height, width) of every PNG.
        split: split used when `expected` is a root.
        verbose: print a "ready" line when everything is right.

    Returns:
        The number of files checked.

    Raises:
        DatasetError: listing every problem found (up to `MAX_LISTED_PROBLEMS`, then a count).
    """
    submission_dir = Path(submission_dir)
    if not submission_dir.is_dir():
        raise DatasetError(f"{submission_dir}: submission folder does not exist")
    if isinstance(expected, (str, os.PathLike)) and Path(expected).is_dir():
        wanted = set(expected_frame_keys(expected, split))
    else:
        wanted = set()
        for item in [expected] if isinstance(expected, str) else expected:
            key = frame_key(str(item))
            if key is None:
                raise DatasetError(f"expected image name {item!r} is not a Cityscapes <city>_<seq>_<frame> name")
            wanted.add(key)
    problems: list[str] = []
    found: dict[str, Path] = {}
    files = sorted(path for path in submission_dir.rglob("*") if path.is_file())
    for path in files:
        if path.suffix.lower() != ".png":
            problems.append(f"{path}: not a PNG file")
            continue
        key = frame_key(path.name)
        if key not in wanted:
            problems.append(f"{path}: name matches no expected image (<city>_<seq>_<frame>*.png)")
            continue
        if key in found:
            problems.append(f"{path}: second file for {key} (first: {found[key].name})")
            continue
        found[key] = path
        problems.extend(_check_png(path, expected_size))
    missing = sorted(wanted - set(found))
    if missing:
        problems.append(f"{len(missing)} of {len(wanted)} images have no PNG, e.g. {', '.join(missing[:3])}")
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        text = "\n  ".join(listed) + (f"\n  ... and {more} more" if more else "")
        raise DatasetError(f"{submission_dir}: submission is not ready ({len(problems)} problems):\n  {text}")
    if verbose:
        print(f"{submission_dir}: {len(found)} labelId PNGs of {expected_size[1]}x{expected_size[0]}, ready")
    return len(found)


_VALID_IDS = np.zeros(256, dtype=bool)
_VALID_IDS[sorted(VALID_LABEL_IDS)] = True


def _check_png(path: Path, expected_size: tuple[int, int]) -> list[str]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        return [f"{path}: cannot be decoded as an image"]
    problems = []
    if image.ndim != 2:
        problems.append(f"{path}: has {image.shape[2]} channels, expected a single-channel labelId image")
    if image.dtype != np.uint8:
        problems.append(f"{path}: {image.dtype} pixels, expected 8-bit")
    if tuple(image.shape[:2]) != tuple(expected_size):
        problems.append(
            f"{path}: size {image.shape[1]}x{image.shape[0]}, expected {expected_size[1]}x{expected_size[0]}"
        )
    if image.ndim == 2 and image.dtype == np.uint8:
        invalid = np.unique(image[~_VALID_IDS[image]])
        if invalid.size:
            problems.append(f"{path}: values {invalid[:8].tolist()} are not Cityscapes labelIds")
    return problems
