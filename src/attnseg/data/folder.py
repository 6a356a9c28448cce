"""Any folder of images with label PNGs, like PaddleSeg's custom ``Dataset``: pair by file name or by a list file.

Two ways to say which label belongs to which image:

- ``FolderDataset(image_dir, mask_dir)``: a label ``<mask_dir>/<relative path of the image, suffix replaced>`` per
  image (sub-folders allowed); with ``mask_dir=None`` images are unlabelled (for prediction).
- ``FolderDataset(list_file=..., root=...)``: lines ``<image> <label>`` (space or tab separated, paths relative to
  `root`, default the list file's folder), or just ``<image>`` for unlabelled images; ``#`` starts a comment.

Label values are used as class ids directly (uint8), 255 = ignore; `label_map` (a 256-entry table) can remap them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnseg.data.base import (
    IGNORE_INDEX,
    Sample,
    SegmentationFiles,
    Transform,
    class_id_description,
    class_id_values,
    describe_int_set,
    require_dir,
)
from attnseg.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _samples_from_dirs(image_dir: Path, mask_dir: Path | None, image_suffixes: Sequence[str], mask_suffix: str):
    require_dir(image_dir, "images")
    images = sorted(p for p in image_dir.rglob("*") if p.is_file() and p.suffix.lower() in image_suffixes)
    if not images:
        raise DatasetError(f"{image_dir}: no images ({', '.join(image_suffixes)}) found")
    if mask_dir is None:
        return [Sample(p, None, "none", p.stem) for p in images]
    require_dir(mask_dir, "label images")
    samples = []
    for image in images:
        relative = image.relative_to(image_dir)
        label = (mask_dir / relative).with_suffix(mask_suffix)
        if not label.is_file():
            raise DatasetError(f"{image}: no label file; expected {label}")
        samples.append(Sample(image, label, "ids", image.stem))
    return samples


def _samples_from_list(list_file: Path, root: Path):
    if not list_file.is_file():
        raise DatasetError(f"{list_file}: list file not found")
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise DatasetError(f"{list_file}:{number}: expected '<image> [<label>]', got {len(parts)} fields")
        image = root / parts[0]
        if not image.is_file():
            raise DatasetError(f"{list_file}:{number}: image {image} not found")
        label = root / parts[1] if len(parts) == 2 else None
        if label is not None and not label.is_file():
            raise DatasetError(f"{list_file}:{number}: label {label} of image {image} not found")
        samples.append(Sample(image, label, "ids" if label is not None else "none", image.stem))
    if not samples:
        raise DatasetError(f"{list_file}: no entries")
    return samples


class FolderDataset(SegmentationFiles):
    """Images (and label PNGs) from plain folders or a list file, as item dicts.

    Args:
        image_dir: folder of images (searched recursively), when not using `list_file`.
        mask_dir: folder of label PNGs mirroring `image_dir`'s structure, or None for unlabelled images.
        list_file: text file of ``<image> [<label>]`` lines instead of the two folders.
        root: folder the list file's paths are relative to (default: the list file's folder).
        num_classes: valid class ids are ``0..num_classes-1`` plus `ignore_index`; every label is checked when it
            is read (and by `validate`), a value outside them is a `DatasetError` naming the file.
        ignore_index: the label value meaning "no class".
        label_map: optional (256,) table applied to raw label values (e.g. `attnseg.data.labels.id_to_train_id`);
            a raw value it maps outside the class ids is an error.
        image_suffixes: image file suffixes to pick up from `image_dir`.
        mask_suffix: suffix of the label files in `mask_dir`.
        transform: called on each item dict before it is returned.
    """

    def __init__(
        self,
        image_dir: str | Path | None = None,
        mask_dir: str | Path | None = None,
        *,
        list_file: str | Path | None = None,
        root: str | Path | None = None,
        num_classes: int = 19,
        ignore_index: int = IGNORE_INDEX,
        label_map: np.ndarray | None = None,
        image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
        mask_suffix: str = ".png",
        transform: Transform | None = None,
    ):
        if (image_dir is None) == (list_file is None):
            raise ValueError("give either image_dir (with optional mask_dir) or list_file, not both or neither")
        if list_file is not None:
            list_file = Path(list_file)
            samples = _samples_from_list(list_file, Path(root) if root is not None else list_file.parent)
        else:
            samples = _samples_from_dirs(Path(image_dir), Path(mask_dir) if mask_dir is not None else None,
                                         tuple(s.lower() for s in image_suffixes), mask_suffix)  # fmt: skip
        super().__init__(samples, transform)
        if label_map is not None:
            label_map = np.asarray(label_map, dtype=np.uint8)
            if label_map.shape != (256,):
                raise ValueError(f"label_map must have 256 entries, got shape {label_map.shape}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.lookup_tables = {"ids": label_map, "none": None}
        self.allowed_values, self.value_descriptions = _allowed_values(num_classes, ignore_index, label_map)


def _allowed_values(
    num_classes: int, ignore_index: int, label_map: np.ndarray | None
) -> tuple[dict[str, frozenset[int]], dict[str, str]]:
    """The raw values a label may hold: class ids directly, or (with `label_map`) the values it maps to one."""
    classes = class_id_values(num_classes, ignore_index)
    description = class_id_description(num_classes, ignore_index, kind="class ids")
    if label_map is None:
        return {"ids": classes}, {"ids": description}
    raw = frozenset(v for v in range(256) if int(label_map[v]) in classes)
    return {"ids": raw}, {"ids": f"values that label_map maps to {description} (those are {describe_int_set(raw)})"}
