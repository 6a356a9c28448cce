"""What every segmentation dataset here shares: decoding files, the item dict, and checking a dataset before training.

An item is a dict::

    {"image": (H, W, 3) uint8 RGB, "label": (H, W) uint8 class ids with 255 = ignore (None when unlabelled),
     "name": file stem, "image_path": str}

and ``transform(item)`` (if given) is applied to it before it is returned.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
    raw values a valid label file may hold.
    """

    num_classes: int = 19
    ignore_index: int = IGNORE_INDEX

    def __init__(self, samples: list[Sample], transform: Transform | None = None):
        self.samples = samples
        self.transform = transform
        self.lookup_tables: dict[str, np.ndarray | None] = {}
        self.allowed_values: dict[str, frozenset[int]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def load_label(self, sample: Sample) -> np.ndarray | None:
        if sample.label is None:
            return None
        raw = read_label_png(sample.label)
        table = self.lookup_tables.get(sample.encoding)
        if table is None:
            if raw.dtype != np.uint8:
                raw = np.where(raw > 255, self.ignore_index, raw).astype(np.uint8)
            return raw
        if raw.dtype != np.uint8:
            raw = np.where(raw > 255, 255, raw).astype(np.uint8)  # out-of-table values: validate() reports them
        return table[raw]

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
        raw = read_label_png(sample.label)
        present = np.flatnonzero(np.bincount(raw.ravel()))
        allowed = self.allowed_values[sample.encoding]
        bad = [int(v) for v in present if int(v) not in allowed]
        if bad:
            raise DatasetError(
                f"{sample.label}: values {bad[:10]} are outside the {sample.encoding} label table "
                f"(allowed: {_describe(allowed)})"
            )


def _describe(values: frozenset[int]) -> str:
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
