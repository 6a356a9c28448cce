"""The Cityscapes label table, read from cityscapesscripts so that ids, trainIds and colours match the official one.

Three encodings appear in Cityscapes files:

- labelIds (0..33): what ``*_gtFine_labelIds.png`` holds and what the evaluation server expects;
- trainIds (0..18, 255 = ignore): the 19 evaluated classes, what models predict;
- categoryIds (0..7): the coarse groups (flat, construction, ...) of the official category metrics.

The lookup tables below are 256-entry uint8 arrays so that ``table[image]`` converts a whole uint8 image at once.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import Label
from cityscapesscripts.helpers.labels import labels as _OFFICIAL_LABELS

IGNORE_INDEX = 255
NUM_CLASSES = 19

#: Every official label (35 entries, including void classes and the id -1 "license plate").
CITYSCAPES_LABELS: tuple[Label, ...] = tuple(_OFFICIAL_LABELS)

#: The 19 evaluated labels, indexed by trainId.
TRAIN_LABELS: tuple[Label, ...] = tuple(
    sorted((label for label in CITYSCAPES_LABELS if 0 <= label.trainId < IGNORE_INDEX), key=lambda label: label.trainId)
)
if [label.trainId for label in TRAIN_LABELS] != list(range(NUM_CLASSES)):  # pragma: no cover - guards a changed table
    raise ImportError("cityscapesscripts' label table no longer has exactly one label per trainId 0..18")

#: Class names by trainId ("road", "sidewalk", ..., "bicycle").
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(label.name for label in TRAIN_LABELS)

#: (19, 3) uint8 RGB colour of each trainId.
CITYSCAPES_PALETTE: np.ndarray = np.array([label.color for label in TRAIN_LABELS], dtype=np.uint8)

#: labelId -> Label (the id -1 label is left out: it never appears in an image).
LABELS_BY_ID: dict[int, Label] = {label.id: label for label in CITYSCAPES_LABELS if label.id >= 0}
#: label name -> Label.
LABELS_BY_NAME: dict[str, Label] = {label.name: label for label in CITYSCAPES_LABELS}

#: labelIds that exist in the table; any other value in a labelIds image is an error.
VALID_LABEL_IDS: frozenset[int] = frozenset(LABELS_BY_ID)
#: labelIds whose objects get separate instance ids (id * 1000 + k) in ``*_instanceIds.png``.
INSTANCE_LABEL_IDS: frozenset[int] = frozenset(label.id for label in CITYSCAPES_LABELS if label.hasInstances)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def _build_id_to_train_id() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        if label.id >= 0 and 0 <= label.trainId < IGNORE_INDEX:
            table[label.id] = label.trainId
    return _readonly(table)


def _build_train_id_to_id() -> np.ndarray:
    # Ignore (and anything unknown) goes to labelId 0 "unlabeled", which the evaluation ignores too.
    table = np.zeros(256, dtype=np.uint8)
    for label in TRAIN_LABELS:
        table[label.trainId] = label.id
    return _readonly(table)


#: (256,) uint8: labelId -> trainId (255 for void, ignored and unknown ids). Use as ``id_to_train_id[label_ids]``.
id_to_train_id: np.ndarray = _build_id_to_train_id()
#: (256,) uint8: trainId -> labelId (255 and unknown -> 0 "unlabeled"), for writing submission files.
train_id_to_id: np.ndarray = _build_train_id_to_id()
ID_TO_TRAIN_ID = id_to_train_id
TRAIN_ID_TO_ID = train_id_to_id

#: The categories of the official category metrics, indexed by categoryId - 1 (category 0 "void" is not evaluated).
CITYSCAPES_CATEGORIES: tuple[str, ...] = tuple(
    dict.fromkeys(
        label.category for label in sorted(CITYSCAPES_LABELS, key=lambda x: x.categoryId) if label.categoryId > 0
    )
)
#: (19,) int64: trainId -> index into `CITYSCAPES_CATEGORIES`.
TRAIN_ID_TO_CATEGORY: np.ndarray = _readonly(np.array([label.categoryId - 1 for label in TRAIN_LABELS], dtype=np.int64))
#: (256,) uint8: labelId -> categoryId (unknown ids -> 0 "void").
ID_TO_CATEGORY_ID: np.ndarray = _readonly(
    np.array([LABELS_BY_ID[i].categoryId if i in LABELS_BY_ID else 0 for i in range(256)], dtype=np.uint8)
)


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a labelIds image (any integer dtype) to a uint8 trainIds image; unknown ids become 255."""
    label_ids = np.asarray(label_ids)
    if label_ids.dtype == np.uint8:
        return id_to_train_id[label_ids]
    out = np.full(label_ids.shape, IGNORE_INDEX, dtype=np.uint8)
    in_range = (label_ids >= 0) & (label_ids < 256)
    out[in_range] = id_to_train_id[label_ids[in_range].astype(np.intp)]
    return out


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map a trainIds prediction to official labelIds (what the evaluation server reads); 255 becomes 0."""
    train_ids = np.asarray(train_ids)
    if train_ids.dtype != np.uint8:
        train_ids = np.where((train_ids >= 0) & (train_ids < 256), train_ids, IGNORE_INDEX).astype(np.uint8)
    return train_id_to_id[train_ids]


def colorize_train_ids(train_ids: np.ndarray, ignore_color: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """RGB image (H, W, 3) uint8 of a trainIds map using `CITYSCAPES_PALETTE`; 255 and other ids get `ignore_color`."""
    table = np.tile(np.array(ignore_color, dtype=np.uint8), (256, 1))
    table[:NUM_CLASSES] = CITYSCAPES_PALETTE
    return table[np.asarray(train_ids, dtype=np.uint8)]


def colorize_label_ids(label_ids: np.ndarray) -> np.ndarray:
    """RGB image (H, W, 3) uint8 of a labelIds map with the official colours (what ``*_gtFine_color.png`` shows)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    for label_id, label in LABELS_BY_ID.items():
        table[label_id] = label.color
    return table[np.asarray(label_ids, dtype=np.uint8)]


def fallback_class_table(num_classes: int) -> tuple[list[str], np.ndarray]:
    """Class names and (K, 3) uint8 RGB palette for a dataset or model without its own table: the Cityscapes names
    and colours for 19 classes (what the synthetic scenes use), else ``class_<i>`` names and evenly spaced greys."""
    if num_classes == NUM_CLASSES:
        return list(CITYSCAPES_CLASSES), CITYSCAPES_PALETTE.copy()
    values = np.linspace(0, 255, max(num_classes, 2)).astype(np.uint8)[:num_classes]
    return [f"class_{i}" for i in range(num_classes)], np.stack([values] * 3, axis=1)
