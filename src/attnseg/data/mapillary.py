"""Mapillary Vistas v1.2 (the set NVIDIA and PaddleSeg pre-train HRNet-OCR on), natively or mapped to Cityscapes.

Layout (as unpacked from the download; v2.0 archives keep v1.2 labels under ``<split>/v1.2/labels``)::

    <root>/config.json                       optional: the 66 label definitions (checked when present)
    <root>/{training,validation,testing}/images/*.jpg
    <root>/{training,validation}/labels/*.png   8-bit palette PNGs, value = class index 0..65 (65 = unlabeled)

NVIDIA's loader trains on the 65 classes with 65 as the ignore value and has no Cityscapes mapping (its
``id_to_ignore_or_group`` table is empty); checkpoints move to Cityscapes by swapping the classifier. For
``classes="cityscapes"`` we therefore use our own 65 -> 19 table, `VISTAS_TO_CITYSCAPES`, which follows the
Cityscapes label definitions: classes Cityscapes annotates as void or ignores in evaluation (parking, rail track,
bridge, tunnel, guard rail, caravan, trailer, billboards, street furniture) map to 255; lane markings, manholes and
crosswalks are part of the road; curbs and curb cuts part of the sidewalk; every rider class is "rider".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from attnseg.data.base import Sample, SegmentationFiles, Transform, require_dir
from attnseg.data.labels import CITYSCAPES_CLASSES, IGNORE_INDEX
from attnseg.errors import DatasetError

#: Vistas v1.2 class names ("readable" in config.json), by class index; index 65 is "Unlabeled".
VISTAS_CLASSES: tuple[str, ...] = (
    "Bird", "Ground Animal", "Curb", "Fence", "Guard Rail", "Barrier", "Wall", "Bike Lane", "Crosswalk - Plain",
    "Curb Cut", "Parking", "Pedestrian Area", "Rail Track", "Road", "Service Lane", "Sidewalk", "Bridge", "Building",
    "Tunnel", "Person", "Bicyclist", "Motorcyclist", "Other Rider", "Lane Marking - Crosswalk",
    "Lane Marking - General", "Mountain", "Sand", "Sky", "Snow", "Terrain", "Vegetation", "Water", "Banner", "Bench",
    "Bike Rack", "Billboard", "Catch Basin", "CCTV Camera", "Fire Hydrant", "Junction Box", "Mailbox", "Manhole",
    "Phone Booth", "Pothole", "Street Light", "Pole", "Traffic Sign Frame", "Utility Pole", "Traffic Light",
    "Traffic Sign (Back)", "Traffic Sign (Front)", "Trash Can", "Bicycle", "Boat", "Bus", "Car", "Caravan",
    "Motorcycle", "On Rails", "Other Vehicle", "Trailer", "Truck", "Wheeled Slow", "Car Mount", "Ego Vehicle",
    "Unlabeled",
)  # fmt: skip
VISTAS_NUM_CLASSES = 65  # evaluated classes; index 65 (Unlabeled) is the ignore value in NVIDIA's loader
VISTAS_UNLABELED = 65
#: The values a v1.2 label PNG may hold: the 66 class indices (65 = Unlabeled).
VISTAS_VALUES: frozenset[int] = frozenset(range(len(VISTAS_CLASSES)))
VISTAS_VALUE_DESCRIPTION = f"Mapillary Vistas v1.2 class indices (0..{len(VISTAS_CLASSES) - 1})"

# Vistas class name -> Cityscapes trainId class name; names not listed become ignore (255).
_TO_CITYSCAPES_NAMES: dict[str, str] = {
    "Curb": "sidewalk", "Fence": "fence", "Wall": "wall", "Bike Lane": "road", "Crosswalk - Plain": "road",
    "Curb Cut": "sidewalk", "Pedestrian Area": "sidewalk", "Road": "road", "Service Lane": "road",
    "Sidewalk": "sidewalk", "Building": "building", "Person": "person", "Bicyclist": "rider", "Motorcyclist": "rider",
    "Other Rider": "rider", "Lane Marking - Crosswalk": "road", "Lane Marking - General": "road", "Sand": "terrain",
    "Sky": "sky", "Snow": "terrain", "Terrain": "terrain", "Vegetation": "vegetation", "Catch Basin": "road",
    "Manhole": "road", "Pothole": "road", "Street Light": "pole", "Pole": "pole", "Traffic Sign Frame": "pole",
    "Utility Pole": "pole", "Traffic Light": "traffic light", "Traffic Sign (Front)": "traffic sign",
    "Bicycle": "bicycle", "Bus": "bus", "Car": "car", "Motorcycle": "motorcycle", "On Rails": "train",
    "Truck": "truck",
}  # fmt: skip


def _build_vistas_to_cityscapes() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for index, name in enumerate(VISTAS_CLASSES):
        if name in _TO_CITYSCAPES_NAMES:
            table[index] = CITYSCAPES_CLASSES.index(_TO_CITYSCAPES_NAMES[name])
    table.setflags(write=False)
    return table


def _build_vistas_native() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    table[:VISTAS_NUM_CLASSES] = np.arange(VISTAS_NUM_CLASSES)
    table.setflags(write=False)
    return table


#: (256,) uint8: Vistas class index -> Cityscapes trainId (255 = ignore).
VISTAS_TO_CITYSCAPES: np.ndarray = _build_vistas_to_cityscapes()
#: (256,) uint8: Vistas class index -> itself for 0..64, 255 for Unlabeled (65) and anything else.
VISTAS_NATIVE: np.ndarray = _build_vistas_native()

_SPLIT_DIRS = {"train": "training", "val": "validation", "test": "testing"}


def check_config(root: Path) -> None:
    """If ``config.json`` exists, make sure it describes the v1.2 label set these tables were written for."""
    path = root / "config.json"
    if not path.is_file():
        return
    try:
        labels = json.loads(path.read_text())["labels"]
        names = [label["readable"] for label in labels]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{path}: not a Mapillary Vistas config ({error})") from error
    if tuple(names) != VISTAS_CLASSES:
        raise DatasetError(
            f"{path}: {len(names)} labels that differ from Vistas v1.2's 66 (is this a v2.0 config? point the root at "
            "the v1.2 labels)"
        )


def _label_dir(split_dir: Path) -> Path:
    label_dir = split_dir / "v1.2" / "labels"
    return label_dir if label_dir.is_dir() else split_dir / "labels"


def vistas_label_path(root: Path, split: str, image: Path) -> Path:
    """Where the v1.2 label of `image` (of `split`) is expected."""
    return _label_dir(root / _SPLIT_DIRS[split]) / f"{image.stem}.png"


def list_split(root: str | Path, split: str) -> tuple[list[Sample], list[Path]]:
    """The (image, label) samples of one split and the images that have no label (for ``test``: none).

    Raises:
        DatasetError: a missing folder, no images, or a config.json that is not Vistas v1.2's.
    """
    if split not in _SPLIT_DIRS:
        raise ValueError(f"split must be one of {tuple(_SPLIT_DIRS)}, got {split!r}")
    root = Path(root)
    require_dir(root, "the Mapillary Vistas root")
    check_config(root)
    split_dir = require_dir(root / _SPLIT_DIRS[split], f"Vistas split {split!r}")
    image_dir = require_dir(split_dir / "images", "Vistas images (*.jpg)")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise DatasetError(f"{image_dir}: no images found")
    if split == "test":
        return [Sample(p, None, "none", p.stem) for p in images], []
    require_dir(_label_dir(split_dir), "Vistas labels (*.png)")
    samples, unlabelled = [], []
    for image in images:
        label = vistas_label_path(root, split, image)
        if label.is_file():
            samples.append(Sample(image, label, "vistas", image.stem))
        else:
            unlabelled.append(image)
    return samples, unlabelled


class MapillaryDataset(SegmentationFiles):
    """Mapillary Vistas images and labels as item dicts.

    Args:
        root: the Vistas root (holding ``training/``, ``validation/``, ``testing/``).
        split: "train", "val" or "test".
        classes: "cityscapes" (19 trainIds via `VISTAS_TO_CITYSCAPES`) or "vistas" (65 classes, Unlabeled -> 255).
        transform: called on each item dict before it is returned.
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self, root: str | Path, split: str = "train", classes: str = "cityscapes", transform: Transform | None = None
    ):
        if split not in _SPLIT_DIRS:
            raise ValueError(f"split must be one of {tuple(_SPLIT_DIRS)}, got {split!r}")
        if classes not in ("cityscapes", "vistas"):
            raise ValueError(f"classes must be 'cityscapes' or 'vistas', got {classes!r}")
        root = Path(root)
        samples, unlabelled = list_split(root, split)
        if unlabelled:
            image = unlabelled[0]
            raise DatasetError(f"{image}: no label file; expected {vistas_label_path(root, split, image)}")
        super().__init__(samples, transform)
        self.root, self.split, self.classes = root, split, classes
        self.num_classes = len(CITYSCAPES_CLASSES) if classes == "cityscapes" else VISTAS_NUM_CLASSES
        self.class_names = CITYSCAPES_CLASSES if classes == "cityscapes" else VISTAS_CLASSES[:VISTAS_NUM_CLASSES]
        table = VISTAS_TO_CITYSCAPES if classes == "cityscapes" else VISTAS_NATIVE
        self.lookup_tables = {"vistas": table, "none": None}
        self.allowed_values = {"vistas": VISTAS_VALUES}
        self.value_descriptions = {"vistas": VISTAS_VALUE_DESCRIPTION}

    def __repr__(self) -> str:
        root = str(self.root)
        return f"MapillaryDataset(root={root!r}, split={self.split!r}, classes={self.classes!r}, n={len(self)})"
