"""What every segmentation dataset here shares: decoding files, the item dict, and checking a dataset before training.

An item is a dict::

    {"image": (H, W, 3) uint8 RGB, "label": (H, W) uint8 class ids with 255 = ignore (None when unlabelled),
     "name": file stem, "image_path": str}

and ``transform(item)`` (if given) is applied to it before it is returned.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import Dataset

from attnseg.errors import DatasetError

Transform = Callable[[dict], dict]
IGNORE_INDEX = 255


def read_image_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB image decoded with OpenCV (grey and 16-bit images are converted)."""
    array = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if array is None:
        raise DatasetError(f"{path}: cannot be read as an image (missing, empty or not an image file)")
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


def read_label_png(path: str | Path) -> np.ndarray:
    """Single-channel label image as a 2D array (uint8 or uint16); palette PNGs give their indices, not colours."""
    path = Path(path)
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DatasetError(f"{path}: cannot be read as a label image (missing, empty or not an image file)")
    if array.ndim == 2:
        return array
    # OpenCV expands palette PNGs (PaddleSeg and Mapillary Vistas store labels that way) to colours; PIL keeps indices.
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("P", "L", "I;16", "I"):
            return np.asarray(image)
    raise DatasetError(f"{path}: label image has {array.shape[2]} colour channels; expected one channel of class ids")


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) read from the file header only."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: cannot be read as an image ({error})") from error


@functools.lru_cache(maxsize=64)
def _bad_value_table(allowed: frozenset[int]) -> np.ndarray:
    table = np.ones(256, dtype=np.uint8)
    table[[v for v in allowed if 0 <= v < 256]] = 0
    table.setflags(write=False)
    return table


def values_outside(array: np.ndarray, allowed: frozenset[int]) -> list[int]:
    """The distinct values of `array` that are not in `allowed`, ascending ([] when every value is allowed).

    A uint8 label goes through a 256-entry table with OpenCV (about 1 ms for 1024x2048), so every label can be
    checked when it is read; other integer types fall back to ``np.unique``.
    """
    array = np.asarray(array)
    if array.size == 0:
        return []
    if array.dtype == np.uint8:
        flat = np.ascontiguousarray(array).reshape(array.shape[0], -1)
        flags = cv2.LUT(flat, _bad_value_table(allowed))
        if cv2.countNonZero(flags) == 0:
            return []
        return [int(v) for v in np.unique(flat[flags.astype(bool)])]
    return [int(v) for v in np.unique(array) if int(v) not in allowed]


def format_values(values: Sequence[int], limit: int = 10) -> str:
    """``[40, 41]``, or the first `limit` values and how many more there are."""
    shown = ", ".join(str(v) for v in values[:limit])
    more = f", ... {len(values) - limit} more" if len(values) > limit else ""
    return f"[{shown}{more}]"


def class_id_description(num_classes: int, ignore_index: int = IGNORE_INDEX, kind: str = "trainIds") -> str:
    """What a valid class-id label holds, for error messages: "trainIds of the 19 classes (0..18) or the ignore
    value 255"."""
    span = "0" if num_classes == 1 else f"0..{num_classes - 1}"
    return f"{kind} of the {num_classes} classes ({span}) or the ignore value {ignore_index}"


def class_id_values(num_classes: int, ignore_index: int = IGNORE_INDEX) -> frozenset[int]:
    """The values a label of `num_classes` classes may hold: ``0..num_classes-1`` and `ignore_index`."""
    return frozenset(range(num_classes)) | {ignore_index}


def label_values_error(path: str | Path, bad: Sequence[int], description: str) -> DatasetError:
    """The error for a label file holding `bad` values, naming the file and what is allowed."""
    return DatasetError(f"{path}: label values {format_values(bad)} are not {description}")


@dataclass(frozen=True)
class Sample:
    """One image and, if labelled, its label file and how the label file encodes classes."""

    image: Path
    label: Path | None
    encoding: str  # key into the dataset's `lookup_tables` / `allowed_values`
    name: str


class SegmentationFiles(Dataset):
    """A list of `Sample` plus decoding; subclasses fill `samples`, `lookup_tables` and `allowed_values`.

    `lookup_tables[encoding]` maps raw label values (uint8 index) to training ids; `allowed_values[encoding]` are the
    raw values a valid label file may hold, and `value_descriptions[encoding]` says so in words for the error.
    Every label is checked against them when it is read (train and eval alike), so a value outside the table stops
    the run with a `DatasetError` naming the file instead of being ignored or failing inside torch.
    """

    num_classes: int = 19
    ignore_index: int = IGNORE_INDEX

    def __init__(self, samples: list[Sample], transform: Transform | None = None):
        self.samples = samples
        self.transform = transform
        self.lookup_tables: dict[str, np.ndarray | None] = {}
        self.allowed_values: dict[str, frozenset[int]] = {}
        self.value_descriptions: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def describe_values(self, encoding: str) -> str:
        """What the label files of `encoding` may hold, in words (the end of a label-value error)."""
        if encoding in self.value_descriptions:
            return self.value_descriptions[encoding]
        return f"in the {encoding} label table ({describe_int_set(self.allowed_values[encoding])})"

    def check_values(self, raw: np.ndarray, path: str | Path, encoding: str) -> None:
        """Raise `DatasetError` naming `path` and the offending values if `raw` holds a value outside
        `allowed_values[encoding]` (encodings without an entry are not checked)."""
        allowed = self.allowed_values.get(encoding)
        if allowed is None:
            return
        bad = values_outside(raw, allowed)
        if bad:
            raise label_values_error(path, bad, self.describe_values(encoding))

    def load_label(self, sample: Sample) -> np.ndarray | None:
        """The label of `sample` in training ids (uint8), checked against its encoding's allowed values."""
        if sample.label is None:
            return None
        raw = read_label_png(sample.label)
        self.check_values(raw, sample.label, sample.encoding)
        if raw.dtype != np.uint8:
            # Values above 255 passed the check only if a table allows them; no uint8 table can index them.
            raw = np.where(raw > 255, self.ignore_index, raw).astype(np.uint8)
        table = self.lookup_tables.get(sample.encoding)
        return raw if table is None else table[raw]

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        image = read_image_rgb(sample.image)
        label = self.load_label(sample)
        if label is not None and label.shape != image.shape[:2]:
            raise DatasetError(
                f"{sample.label}: label is {label.shape[1]}x{label.shape[0]} but its image {sample.image} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        item = {"image": image, "label": label, "name": sample.name, "image_path": str(sample.image)}
        return self.transform(item) if self.transform is not None else item

    # -- checks ------------------------------------------------------------------------------------------------------

    def validate(self, values: str = "sample", sample_size: int = 16, progress: bool = False) -> dict[str, int]:
        """Check every label's size against its image (file headers only) and label values on some or all files.

        Run this before training: a bad file then stops the run at once with one `DatasetError` naming it, instead of
        crashing a worker hours later.

        Args:
            values: "all" reads every label, "sample" reads `sample_size` evenly spread labels (always the first and
                the last), "none" skips value checks.
            sample_size: labels read when `values == "sample"`.
            progress: show a tqdm bar over the files.

        Returns:
            counts of the checks done: ``{"sizes": n, "values": m}``.
        """
        if values not in ("all", "sample", "none"):
            raise ValueError(f"values must be 'all', 'sample' or 'none', got {values!r}")
        labelled = [s for s in self.samples if s.label is not None]
        for sample in _maybe_progress(labelled, progress, "sizes"):
            image_wh, label_wh = image_size(sample.image), image_size(sample.label)
            if image_wh != label_wh:
                raise DatasetError(
                    f"{sample.label}: label is {label_wh[0]}x{label_wh[1]} but its image {sample.image} is "
                    f"{image_wh[0]}x{image_wh[1]}"
                )
        if values == "none" or not labelled:
            chosen = []
        elif values == "all" or len(labelled) <= sample_size:
            chosen = labelled
        else:
            picks = np.unique(np.linspace(0, len(labelled) - 1, max(sample_size, 2)).round().astype(int))
            chosen = [labelled[k] for k in picks]
        for sample in _maybe_progress(chosen, progress, "label values"):
            self.check_label_values(sample)
        return {"sizes": len(labelled), "values": len(chosen)}

    def check_label_values(self, sample: Sample) -> None:
        """Raise `DatasetError` naming the file if its raw values are not all in `allowed_values[sample.encoding]`."""
        self.check_values(read_label_png(sample.label), sample.label, sample.encoding)


def describe_int_set(values: Iterable[int]) -> str:
    """Compact text for a set of ints: "0..18, 255"."""
    ordered = sorted(values)
    runs: list[list[int]] = []
    for value in ordered:
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in runs)


def _maybe_progress(items: list, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=f"checking {desc}", unit="file")


def require_dir(path: Path, what: str) -> Path:
    """`path` if it is a folder, else a `DatasetError` saying what was expected there."""
    if not path.is_dir():
        raise DatasetError(f"{path}: folder not found ({what})")
    return path
