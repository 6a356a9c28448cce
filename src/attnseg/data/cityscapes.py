"""Cityscapes in its download layout: fine, coarse and NVIDIA's autolabelled coarse labels.

- fine: images ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``; labels
  ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``, else ``*_gtFine_labelIds.png`` (mapped on the fly).
- coarse: the same images, or for split ``train_extra`` ``leftImg8bit_trainextra/leftImg8bit/train_extra/``;
  labels ``gtCoarse/<split>/<city>/*_gtCoarse_labelTrainIds.png``, else ``*_gtCoarse_labelIds.png``.
- autolabelled: images of ``train_extra``; labels ``convert_autolabelled/<city>/*_leftImg8bit.png`` (trainIds),
  else ``refinement_final[/train_extra]/<city>/*_leftImg8bit.png`` (labelIds, mapped on the fly).

The ``test`` split has no public labels: its items carry ``label = None``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from attnseg.data.base import Sample, SegmentationFiles, Transform, require_dir
from attnseg.data.labels import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    IGNORE_INDEX,
    NUM_CLASSES,
    VALID_LABEL_IDS,
    id_to_train_id,
)
from attnseg.errors import DatasetError

MODES = ("fine", "coarse", "autolabelled")
TRAIN_ID_VALUES = frozenset(range(NUM_CLASSES)) | {IGNORE_INDEX}


def _image_root(root: Path, split: str) -> Path:
    if split == "train_extra":
        return root / "leftImg8bit_trainextra" / "leftImg8bit" / "train_extra"
    return root / "leftImg8bit" / split


def _autolabel_dirs(root: Path) -> tuple[Path, Path | None]:
    converted = root / "convert_autolabelled"
    raw = root / "refinement_final"
    raw = raw / "train_extra" if (raw / "train_extra").is_dir() else raw
    return converted, raw if raw.is_dir() else None


def check_layout(root: str | Path, split: str = "train", mode: str = "fine") -> list[Sample]:
    """List the (image, label) pairs of one split, or raise one `DatasetError` naming the missing folder or file.

    This only looks at names (no decoding); `CityscapesDataset.validate` then checks sizes and values.
    """
    root = Path(root)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "autolabelled" and split == "train":
        split = "train_extra"
    valid_splits = ("train_extra",) if mode == "autolabelled" else ("train", "val", "test", "train_extra")
    if split not in valid_splits or (mode == "fine" and split == "train_extra"):
        raise ValueError(f"split {split!r} does not exist for mode {mode!r}")
    require_dir(root, "the Cityscapes root")
    image_root = require_dir(_image_root(root, split), "Cityscapes images")
    images = sorted(image_root.glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetError(f"{image_root}: no <city>/*_leftImg8bit.png images found")
    samples = []
    if split == "test":
        return [Sample(path, None, "none", path.name[: -len("_leftImg8bit.png")]) for path in images]
    if mode == "autolabelled":
        converted, raw = _autolabel_dirs(root)
        if not converted.is_dir() and raw is None:
            raise DatasetError(f"{converted}: folder not found (run `attnseg prepare autolabelled {root}`)")
    else:
        quality = "gtFine" if mode == "fine" else "gtCoarse"
        label_root = require_dir(root / quality / split, f"{quality} labels for split {split!r}")
    for image in images:
        city, stem = image.parent.name, image.name[: -len("_leftImg8bit.png")]
        if mode == "autolabelled":
            candidates = [(converted / city / image.name, "trainIds")]
            if raw is not None:
                candidates.append((raw / city / image.name, "labelIds"))
        else:
            candidates = [(label_root / city / f"{stem}_{quality}_labelTrainIds.png", "trainIds"),
                          (label_root / city / f"{stem}_{quality}_labelIds.png", "labelIds")]  # fmt: skip
        found = next(((path, encoding) for path, encoding in candidates if path.is_file()), None)
        if found is None:
            raise DatasetError(f"{image}: no label file; expected {candidates[0][0]}")
        samples.append(Sample(image, found[0], found[1], stem))
    return samples


class CityscapesDataset(SegmentationFiles):
    """Cityscapes images with 19-class trainId labels (255 = ignore), as item dicts (see `attnseg.data.base`).

    Args:
        root: the Cityscapes root (holding ``leftImg8bit/``, ``gtFine/``, ...).
        split: "train", "val", "test", or "train_extra" (coarse and autolabelled).
        mode: "fine", "coarse" or "autolabelled" (see the module docstring for the files each reads).
        transform: called on each item dict before it is returned.

    Raises:
        DatasetError: a missing folder or an image without a label file (the message names it).
    """

    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX
    class_names = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(self, root: str | Path, split: str = "train", mode: str = "fine", transform: Transform | None = None):
        super().__init__(check_layout(root, split, mode), transform)
        self.root, self.split, self.mode = Path(root), split, mode
        self.lookup_tables = {"labelIds": id_to_train_id, "trainIds": None, "none": None}
        self.allowed_values = {"labelIds": VALID_LABEL_IDS | ({255} if mode == "autolabelled" else set()),
                               "trainIds": TRAIN_ID_VALUES}  # fmt: skip

    def __repr__(self) -> str:
        return f"CityscapesDataset(root={str(self.root)!r}, split={self.split!r}, mode={self.mode!r}, n={len(self)})"


def label_encodings(dataset: CityscapesDataset) -> dict[str, int]:
    """How many label files of each encoding a dataset reads (e.g. to tell the user to run `prepare`)."""
    names, counts = np.unique([s.encoding for s in dataset.samples], return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}
