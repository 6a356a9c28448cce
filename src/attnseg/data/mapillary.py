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
from dataclasses import dataclass
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
#: Vistas v1.2 colours ("color" in its config.json), by class index.
VISTAS_PALETTE: tuple[tuple[int, int, int], ...] = (
    (165, 42, 42), (0, 192, 0), (196, 196, 196), (190, 153, 153), (180, 165, 180), (90, 120, 150), (102, 102, 156),
    (128, 64, 255), (140, 140, 200), (170, 170, 170), (250, 170, 160), (96, 96, 96), (230, 150, 140), (128, 64, 128),
    (110, 110, 110), (244, 35, 232), (150, 100, 100), (70, 70, 70), (150, 120, 90), (220, 20, 60), (255, 0, 0),
    (255, 0, 100), (255, 0, 200), (200, 128, 128), (255, 255, 255), (64, 170, 64), (230, 160, 50), (70, 130, 180),
    (190, 255, 255), (152, 251, 152), (107, 142, 35), (0, 170, 30), (255, 255, 128), (250, 0, 30), (100, 140, 180),
    (220, 220, 220), (220, 128, 128), (222, 40, 40), (100, 170, 30), (40, 40, 40), (33, 33, 33), (100, 128, 160),
    (142, 0, 0), (70, 100, 150), (210, 170, 100), (153, 153, 153), (128, 128, 128), (0, 0, 80), (250, 170, 30),
    (192, 192, 192), (220, 220, 0), (140, 140, 20), (119, 11, 32), (150, 0, 255), (0, 60, 100), (0, 0, 142),
    (0, 0, 90), (0, 0, 230), (0, 80, 100), (128, 64, 64), (0, 0, 110), (0, 0, 70), (0, 0, 192), (32, 32, 32),
    (120, 10, 10), (0, 0, 0),
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


#: (256,) uint8: Vistas class index -> Cityscapes trainId (255 = ignore).
VISTAS_TO_CITYSCAPES: np.ndarray = _build_vistas_to_cityscapes()

_SPLIT_DIRS = {"train": "training", "val": "validation", "test": "testing"}


VERSIONS = ("v1.2", "v2.0")


@dataclass(frozen=True)
class VistasLabelSet:
    """The label definitions of one Vistas version, as its ``config.json`` lists them.

    Attributes:
        version: ``"v1.2"`` or ``"v2.0"``.
        names: every label's readable name, by label value.
        colors: every label's RGB colour.
        evaluate: whether the benchmark scores the label; labels that are not scored (Unlabeled) become ignore.
        source: the config file read, or None for the built-in v1.2 table.
    """

    version: str
    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    evaluate: tuple[bool, ...]
    source: Path | None = None

    @property
    def class_values(self) -> tuple[int, ...]:
        """Label values of the evaluated classes, in order: class i of a model is label value class_values[i]."""
        return tuple(value for value, scored in enumerate(self.evaluate) if scored)

    @property
    def num_classes(self) -> int:
        return len(self.class_values)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.names[value] for value in self.class_values)

    @property
    def palette(self) -> np.ndarray:
        """(num_classes, 3) uint8 colours of the evaluated classes."""
        return np.asarray([self.colors[value] for value in self.class_values], dtype=np.uint8).reshape(-1, 3)

    def lookup_table(self) -> np.ndarray:
        """(256,) uint8: label value -> class index, 255 for labels that are not evaluated."""
        table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for index, value in enumerate(self.class_values):
            table[value] = index
        table.setflags(write=False)
        return table


#: Vistas v1.2 as its config.json defines it: 66 labels, all scored but Unlabeled (65).
VISTAS_V12 = VistasLabelSet("v1.2", VISTAS_CLASSES, VISTAS_PALETTE, (True,) * 65 + (False,))


def config_candidates(root: Path, version: str) -> list[Path]:
    """Where a version's label definitions may be: ``config_<version>.json`` (v2.0 archives hold both), then
    ``config.json`` (the v1.2 archive)."""
    return [root / f"config_{version}.json", root / "config.json"]


def _parse_labels(path: Path) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...], tuple[bool, ...]]:
    try:
        labels = json.loads(path.read_text())["labels"]
        names = tuple(str(label["readable"]) for label in labels)
        colors = tuple(tuple(int(c) for c in label.get("color", (0, 0, 0)))[:3] for label in labels)
        evaluate = tuple(bool(label.get("evaluate", label["readable"].lower() != "unlabeled")) for label in labels)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DatasetError(f"{path}: not a Mapillary Vistas config (a 'labels' list of objects with 'readable', "
                           f"'color' and 'evaluate'): {error}") from None  # fmt: skip
    if not names or len(names) > 255 or any(len(color) != 3 for color in colors):
        raise DatasetError(f"{path}: {len(names)} labels; a Vistas config has 1..255 labels with RGB colours")
    return names, colors, evaluate


def read_label_set(root: str | Path, version: str = "v1.2") -> VistasLabelSet:
    """The label definitions of `version` from the dataset's own config file, else the built-in v1.2 table.

    Raises:
        DatasetError: a config that is not a Vistas one, a v1.2 config whose names differ from v1.2's 66 labels,
            or v2.0 without its config (``config_v2.0.json``).
    """
    if version not in VERSIONS:
        raise DatasetError(f"Mapillary Vistas version {version!r}: choose from {', '.join(VERSIONS)}")
    root = Path(root)
    path = next((candidate for candidate in config_candidates(root, version) if candidate.is_file()), None)
    if path is None:
        if version == "v1.2":
            return VISTAS_V12
        raise DatasetError(f"{root / 'config_v2.0.json'}: not found; the v2.0 label definitions come with the "
                           "v2.0 download")  # fmt: skip
    names, colors, evaluate = _parse_labels(path)
    if version == "v1.2" and names != VISTAS_CLASSES:
        raise DatasetError(f"{path}: {len(names)} labels that differ from Vistas v1.2's 66 (is this a v2.0 config? "
                           "set data.mapillary_version: v2.0)")  # fmt: skip
    if version == "v2.0" and names == VISTAS_CLASSES:
        raise DatasetError(f"{path}: holds the v1.2 labels; v2.0 needs config_v2.0.json")
    if version == "v1.2":  # the benchmark's 65 classes whatever the file's flags say (NVIDIA trains exactly those)
        evaluate = VISTAS_V12.evaluate
    return VistasLabelSet(version, names, colors, evaluate, path)


def check_config(root: Path) -> None:
    """Raise unless the v1.2 label definitions (``config.json`` when present) are Vistas v1.2's."""
    read_label_set(root, "v1.2")


def _label_dir(split_dir: Path, version: str = "v1.2") -> Path:
    label_dir = split_dir / version / "labels"
    return label_dir if label_dir.is_dir() or version != "v1.2" else split_dir / "labels"


def vistas_label_path(root: Path, split: str, image: Path, version: str = "v1.2") -> Path:
    """Where the label of `image` (of `split`) is expected."""
    return _label_dir(root / _SPLIT_DIRS[split], version) / f"{image.stem}.png"


def list_split(root: str | Path, split: str, version: str = "v1.2") -> tuple[list[Sample], list[Path]]:
    """The (image, label) samples of one split and the images that have no label (for ``test``: none).

    Raises:
        DatasetError: a missing folder, no images, or a config.json that is not Vistas v1.2's.
    """
    if split not in _SPLIT_DIRS:
        raise ValueError(f"split must be one of {tuple(_SPLIT_DIRS)}, got {split!r}")
    root = Path(root)
    require_dir(root, "the Mapillary Vistas root")
    read_label_set(root, version)
    split_dir = require_dir(root / _SPLIT_DIRS[split], f"Vistas split {split!r}")
    image_dir = require_dir(split_dir / "images", "Vistas images (*.jpg)")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise DatasetError(f"{image_dir}: no images found")
    if split == "test":
        return [Sample(p, None, "none", p.stem) for p in images], []
    require_dir(_label_dir(split_dir, version), f"Vistas {version} labels (*.png)")
    samples, unlabelled = [], []
    for image in images:
        label = vistas_label_path(root, split, image, version)
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
        classes: "cityscapes" (19 trainIds via `VISTAS_TO_CITYSCAPES`, v1.2 labels) or "vistas" (the evaluated classes
            of the version's own label definitions: 65 for v1.2, Unlabeled -> 255).
        transform: called on each item dict before it is returned.
        version: "v1.2" or "v2.0" (labels under ``<split>/v2.0/labels``, definitions in ``config_v2.0.json``).

    Attributes:
        label_set: the `VistasLabelSet` read from the dataset's config (names, colours, evaluated flags).
        class_names, palette: of the classes the labels hold (Cityscapes' for ``classes="cityscapes"``).
    """

    ignore_index = IGNORE_INDEX

    def __init__(
        self, root: str | Path, split: str = "train", classes: str = "cityscapes", transform: Transform | None = None,
        version: str = "v1.2",
    ):  # fmt: skip
        if split not in _SPLIT_DIRS:
            raise ValueError(f"split must be one of {tuple(_SPLIT_DIRS)}, got {split!r}")
        if classes not in ("cityscapes", "vistas"):
            raise ValueError(f"classes must be 'cityscapes' or 'vistas', got {classes!r}")
        root = Path(root)
        self.label_set = read_label_set(root, version)
        if classes == "cityscapes" and version != "v1.2":
            raise DatasetError(f"{root}: the Cityscapes mapping is defined for Vistas v1.2 labels; use "
                               "data.mapillary_classes: vistas with v2.0")  # fmt: skip
        samples, unlabelled = list_split(root, split, version)
        if unlabelled:
            image = unlabelled[0]
            raise DatasetError(f"{image}: no label file; expected {vistas_label_path(root, split, image, version)}")
        super().__init__(samples, transform)
        self.root, self.split, self.classes, self.version = root, split, classes, version
        if classes == "cityscapes":
            from attnseg.data.labels import CITYSCAPES_PALETTE

            self.num_classes, self.class_names = len(CITYSCAPES_CLASSES), tuple(CITYSCAPES_CLASSES)
            self.palette = np.asarray(CITYSCAPES_PALETTE, dtype=np.uint8)
            table = VISTAS_TO_CITYSCAPES
        else:
            self.num_classes, self.class_names = self.label_set.num_classes, self.label_set.class_names
            self.palette = self.label_set.palette
            table = self.label_set.lookup_table()
        self.lookup_tables = {"vistas": table, "none": None}
        self.allowed_values = {"vistas": frozenset(range(len(self.label_set.names)))}
        self.value_descriptions = {"vistas": f"Mapillary Vistas {version} label values (0..{len(self.label_set.names) - 1})"}

    def __repr__(self) -> str:
        root = str(self.root)
        return (f"MapillaryDataset(root={root!r}, split={self.split!r}, classes={self.classes!r}, "
                f"version={self.version!r}, n={len(self)})")  # fmt: skip
