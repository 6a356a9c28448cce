"""Cityscapes in its download layout: fine, coarse and NVIDIA's autolabelled coarse labels.

- fine: images ``leftImg8bit/<split>/<city>/*_leftImg8bit.png``; labels
  ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``, else ``*_gtFine_labelIds.png`` (mapped on the fly).
- coarse: the same images, or for split ``train_extra`` ``leftImg8bit_trainextra/leftImg8bit/train_extra/``;
  labels ``gtCoarse/<split>/<city>/*_gtCoarse_labelTrainIds.png``, else ``*_gtCoarse_labelIds.png``.
- autolabelled: images of ``train_extra``; labels ``convert_autolabelled/<city>/*_leftImg8bit.png`` (trainIds),
  else ``refinement_final[/train_extra]/<city>/*_leftImg8bit.png`` (labelIds, mapped on the fly).

The ``test`` split has no public labels: its items carry ``label = None``.

Data options of the fine splits: ``cv_split`` (NVIDIA ``--cv``, `split_cities`) moves whole cities between train
and val; ``add_val`` (PaddleSeg ``add_val``) appends the val images to the train split.

Autolabelled options (NVIDIA ``scripts/train_cityscapes_sota.yml``; applied per sample at load time as the reference
loader does, so they are hyper-parameters, not part of the prepared files):

- ``autolabel_min_confidence`` (``--custom_coarse_prob``): refinement_final stores a confidence map
  ``<frame>_leftImg8bit_prob.png`` (0-255 = 0-1) beside each label (`attnseg autolabel` writes it beside its
  converted label); pixels with confidence below the threshold are ignored.
- ``autolabel_gtcoarse_classes`` (``--custom_coarse_dropout_classes``, trainIds): for each such class that the
  autolabel contains, every pixel that the autolabel or gtCoarse gives that class gets it (the union).
- ``autolabel_mask_border`` (``--mask_out_cityscapes``): pixels outside rows 15..839 and columns 14..2029 of a
  1024x2048 frame (ego-car bonnet, frame edges) are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from attnseg.data.base import (
    Sample,
    SegmentationFiles,
    Transform,
    class_id_description,
    read_label_png,
    require_dir,
)
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
TRAIN_ID_DESCRIPTION = class_id_description(NUM_CLASSES, IGNORE_INDEX)
LABEL_ID_DESCRIPTION = "labelIds of the Cityscapes label table (0..33)"
# NVIDIA's refinement_final labels hold labelIds plus 255 where the autolabeller left a pixel unlabelled.
AUTOLABEL_ID_VALUES = VALID_LABEL_IDS | {255}
AUTOLABEL_ID_DESCRIPTION = "labelIds of the Cityscapes label table (0..33) or 255 (unlabelled autolabel pixels)"

# NVIDIA BaseLoader.drop_mask: the labelled region of a 1024x2048 frame, (top, bottom, left, right), end exclusive.
EGO_BORDER_FRAME = (1024, 2048)
EGO_BORDER_REGION = (15, 840, 14, 2030)


def ego_border_region(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the region `autolabel_mask_border` keeps, end exclusive.

    Exactly NVIDIA's rectangle at 1024x2048; other frame sizes (downscaled copies, synthetic data) get it scaled
    proportionally and rounded half up (the reference only handles 1024x2048).
    """
    frame_h, frame_w = EGO_BORDER_FRAME
    top, bottom, left, right = EGO_BORDER_REGION

    def scaled(value: int, size: int, frame: int) -> int:
        return min(size, int(value * size / frame + 0.5))

    return (scaled(top, height, frame_h), scaled(bottom, height, frame_h),
            scaled(left, width, frame_w), scaled(right, width, frame_w))  # fmt: skip


def refine_autolabel(
    train_ids: np.ndarray,
    *,
    confidence: np.ndarray | None = None,
    min_confidence: float | None = None,
    coarse_train_ids: np.ndarray | None = None,
    gtcoarse_classes: Sequence[int] = (),
    mask_border: bool = False,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Apply NVIDIA's autolabelled-coarse options to one trainId label (a new array; the input is not changed).

    In the reference's order: border ignored, then the gtCoarse union per class (ascending trainId, each only if the
    autolabel still holds that class after the previous steps), then low-confidence pixels ignored (last, so they
    stay ignored whatever gtCoarse says).

    Args:
        train_ids: (H, W) uint8 autolabel in trainIds.
        confidence: (H, W) uint8 confidence map (255 = 1.0); needed with `min_confidence`.
        min_confidence: pixels with ``confidence / 255 < min_confidence`` become `ignore_index`; None = off.
        coarse_train_ids: (H, W) gtCoarse trainIds; needed with `gtcoarse_classes`.
        gtcoarse_classes: trainIds taken as the union of the autolabel and gtCoarse.
        mask_border: ignore pixels outside `ego_border_region`.
        ignore_index: the ignore value.
    """
    label = np.array(train_ids, dtype=np.uint8, copy=True)
    if mask_border:
        top, bottom, left, right = ego_border_region(*label.shape)
        keep = np.zeros(label.shape, dtype=bool)
        keep[top:bottom, left:right] = True
        label[~keep] = ignore_index
    if gtcoarse_classes:
        if coarse_train_ids is None or coarse_train_ids.shape != label.shape:
            raise ValueError("gtcoarse_classes needs coarse_train_ids of the label's shape")
        for class_id in sorted(set(gtcoarse_classes)):
            present = label == class_id
            if present.any():
                label[present | (coarse_train_ids == class_id)] = class_id
    if min_confidence is not None:
        if confidence is None or confidence.shape != label.shape:
            raise ValueError("min_confidence needs a confidence map of the label's shape")
        label[confidence.astype(np.float64) / 255.0 < min_confidence] = ignore_index
    return label


def _image_root(root: Path, split: str) -> Path:
    if split == "train_extra":
        return root / "leftImg8bit_trainextra" / "leftImg8bit" / "train_extra"
    return root / "leftImg8bit" / split


def _autolabel_dirs(root: Path) -> tuple[Path, Path | None]:
    converted = root / "convert_autolabelled"
    raw = root / "refinement_final"
    raw = raw / "train_extra" if (raw / "train_extra").is_dir() else raw
    return converted, raw if raw.is_dir() else None


CV_SPLITS = 3  # NVIDIA config.py DATASET.CV_SPLITS


def split_cities(train_cities: Sequence[str], val_cities: Sequence[str], split: str,
                 cv_split: int = 0) -> list[tuple[str, str]]:
    """The (folder, city) pairs that make up `split` ("train" or "val") under NVIDIA's cross-validation split.

    As NVIDIA ``cities_cv_split``: the val cities, then the train cities in sorted order, form one list; split
    `cv_split` (0..2) takes as validation the run of ``len(val_cities)`` cities starting at
    ``cv_split * len(all) // 3`` and trains on all the others, so a city is never in both. cv 0 is the official
    split; on the 18 + 3 official cities cv 1 validates on darmstadt, dusseldorf, erfurt and cv 2 on
    monchengladbach, strasbourg, stuttgart (the official val cities then train).

    Args:
        train_cities: the city folders of ``leftImg8bit/train``.
        val_cities: the city folders of ``leftImg8bit/val``.
        split: "train" or "val".
        cv_split: 0, 1 or 2.
    """
    if split not in ("train", "val"):
        raise ValueError(f"cv_split splits 'train' and 'val', not {split!r}")
    if cv_split not in range(CV_SPLITS):
        raise ValueError(f"cv_split must be 0, 1 or 2, got {cv_split!r}")
    everything = [("val", city) for city in sorted(val_cities)] + [("train", city) for city in sorted(train_cities)]
    start = cv_split * len(everything) // CV_SPLITS
    stop = start + len(val_cities)
    chosen = range(start, stop) if split == "val" else [k for k in range(len(everything)) if not start <= k < stop]
    return [everything[k] for k in chosen]


def _city_folders(root: Path, split: str) -> list[str]:
    folder = require_dir(_image_root(root, split), "Cityscapes images")
    return sorted(path.name for path in folder.iterdir() if path.is_dir())


def _split_images(root: Path, split: str, cv_split: int, add_val: bool) -> list[tuple[str, Path]]:
    """(folder split, image) pairs of `split` under the data options, in NVIDIA's / PaddleSeg's list order."""
    if cv_split == 0 or split not in ("train", "val"):
        image_root = require_dir(_image_root(root, split), "Cityscapes images")
        images = sorted(image_root.glob("*/*_leftImg8bit.png"))
        if not images:
            raise DatasetError(f"{image_root}: no <city>/*_leftImg8bit.png images found")
        pairs = [(split, image) for image in images]
        # PaddleSeg add_val: the val split's images (sorted) appended to the train split's.
        return pairs + (_split_images(root, "val", 0, False) if add_val else [])
    cities = split_cities(_city_folders(root, "train"), _city_folders(root, "val"), split, cv_split)
    pairs = []
    for folder, city in cities:
        images = sorted((root / "leftImg8bit" / folder / city).glob("*_leftImg8bit.png"))
        if not images:
            raise DatasetError(f"{root / 'leftImg8bit' / folder / city}: no *_leftImg8bit.png images found")
        pairs.extend((folder, image) for image in images)
    return pairs


def _check_data_options(split: str, mode: str, cv_split: int, add_val: bool) -> None:
    if (cv_split != 0 or add_val) and mode != "fine":
        raise ValueError(f"cv_split / add_val apply to mode 'fine' only, not {mode!r}")
    if cv_split not in range(CV_SPLITS) or isinstance(cv_split, bool):
        raise ValueError(f"cv_split must be 0, 1 or 2, got {cv_split!r}")
    if add_val and split != "train":
        raise ValueError(f"add_val adds the val images to split 'train' only, not {split!r}")
    if add_val and cv_split != 0:
        raise ValueError(f"add_val trains on the official val cities too; cv_split={cv_split} would validate on "
                         "training cities (use cv_split 0)")


def check_layout(root: str | Path, split: str = "train", mode: str = "fine", *, cv_split: int = 0,
                 add_val: bool = False) -> list[Sample]:
    """List the (image, label) pairs of one split, or raise one `DatasetError` naming the missing folder or file.

    This only looks at names (no decoding); `CityscapesDataset.validate` then checks sizes and values.
    `cv_split` and `add_val` (mode "fine" only) are the data options of `CityscapesDataset`.
    """
    root = Path(root)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "autolabelled" and split == "train":
        split = "train_extra"
    valid_splits = ("train_extra",) if mode == "autolabelled" else ("train", "val", "test", "train_extra")
    if split not in valid_splits or (mode == "fine" and split == "train_extra"):
        raise ValueError(f"split {split!r} does not exist for mode {mode!r}")
    _check_data_options(split, mode, cv_split, add_val)
    require_dir(root, "the Cityscapes root")
    images = _split_images(root, split, cv_split, add_val)
    if split == "test":
        return [Sample(path, None, "none", path.name[: -len("_leftImg8bit.png")]) for _, path in images]
    if mode == "autolabelled":
        converted, raw = _autolabel_dirs(root)
        if not converted.is_dir() and raw is None:
            raise DatasetError(f"{converted}: folder not found (run `attnseg prepare autolabelled {root}`)")
    quality = "gtFine" if mode == "fine" else "gtCoarse"
    label_roots: dict[str, Path] = {}
    samples = []
    for folder, image in images:
        city, stem = image.parent.name, image.name[: -len("_leftImg8bit.png")]
        if mode == "autolabelled":
            candidates = [(converted / city / image.name, "trainIds")]
            if raw is not None:
                candidates.append((raw / city / image.name, "labelIds"))
        else:
            if folder not in label_roots:
                label_roots[folder] = require_dir(root / quality / folder, f"{quality} labels for split {folder!r}")
            label_root = label_roots[folder]
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
        autolabel_min_confidence: autolabelled only: ignore pixels whose refinement_final confidence
            (``refinement_final[/train_extra]/<city>/<frame>_leftImg8bit_prob.png``) is below this; None = off.
        autolabel_gtcoarse_classes: autolabelled only: trainIds taken as the union of the autolabel and gtCoarse
            (``gtCoarse/train_extra/<city>/<frame>_gtCoarse_label{TrainIds,Ids}.png``).
        autolabel_mask_border: autolabelled only: ignore the ego-car border (`ego_border_region`).
        cv_split: fine only: NVIDIA's cross-validation split (``--cv``) 0, 1 or 2 choosing which cities form
            "train" and "val" (`split_cities`); 0 is the official split. "test" is not affected.
        add_val: fine, split "train" only: train on the val images too (PaddleSeg Cityscapes ``add_val``; the val
            list, sorted, follows the train list).

    Raises:
        DatasetError: a missing folder or an image without a label file (or, with the autolabel options, without
            its confidence map or gtCoarse label); the message names it.
    """

    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX
    class_names = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        mode: str = "fine",
        transform: Transform | None = None,
        *,
        autolabel_min_confidence: float | None = None,
        autolabel_gtcoarse_classes: Sequence[int] = (),
        autolabel_mask_border: bool = False,
        cv_split: int = 0,
        add_val: bool = False,
    ):
        super().__init__(check_layout(root, split, mode, cv_split=cv_split, add_val=add_val), transform)
        self.root, self.split, self.mode = Path(root), split, mode
        self.cv_split, self.add_val = cv_split, bool(add_val)
        self.lookup_tables = {"labelIds": id_to_train_id, "trainIds": None, "none": None}
        autolabelled = mode == "autolabelled"
        self.allowed_values = {"labelIds": AUTOLABEL_ID_VALUES if autolabelled else VALID_LABEL_IDS,
                               "trainIds": TRAIN_ID_VALUES}  # fmt: skip
        self.value_descriptions = {"labelIds": AUTOLABEL_ID_DESCRIPTION if autolabelled else LABEL_ID_DESCRIPTION,
                                   "trainIds": TRAIN_ID_DESCRIPTION}  # fmt: skip
        self.autolabel_min_confidence = autolabel_min_confidence
        self.autolabel_gtcoarse_classes = tuple(sorted(set(int(c) for c in autolabel_gtcoarse_classes)))
        self.autolabel_mask_border = bool(autolabel_mask_border)
        uses_options = (autolabel_min_confidence is not None, bool(self.autolabel_gtcoarse_classes),
                        self.autolabel_mask_border)  # fmt: skip
        if any(uses_options) and mode != "autolabelled":
            raise ValueError(f"the autolabel_* options apply to mode 'autolabelled' only, not {mode!r}")
        if autolabel_min_confidence is not None and not 0.0 <= autolabel_min_confidence <= 1.0:
            raise ValueError(f"autolabel_min_confidence must be in [0, 1], got {autolabel_min_confidence}")
        outside = [c for c in self.autolabel_gtcoarse_classes if not 0 <= c < NUM_CLASSES]
        if outside:
            raise ValueError(f"autolabel_gtcoarse_classes must be trainIds 0..{NUM_CLASSES - 1}, got {outside}")
        # label path -> confidence map / (gtCoarse label, encoding), looked up now so that a missing file fails here.
        self._confidence_files: dict[Path, Path] = {}
        self._gtcoarse_files: dict[Path, tuple[Path, str]] = {}
        if autolabel_min_confidence is not None:
            self._confidence_files = _confidence_files(self.root, self.samples)
        if self.autolabel_gtcoarse_classes:
            self._gtcoarse_files = _gtcoarse_files(self.root, self.samples)

    @property
    def label_options(self) -> tuple[tuple[str, object], ...]:
        """The options in use that change labels beyond their files, as (name, value) pairs; () when none is.

        Cache keys over labels (the class-centroid cache) include them.
        """
        options: list[tuple[str, object]] = []
        if self.autolabel_min_confidence is not None:
            options.append(("autolabel_min_confidence", self.autolabel_min_confidence))
        if self.autolabel_gtcoarse_classes:
            options.append(("autolabel_gtcoarse_classes", self.autolabel_gtcoarse_classes))
        if self.autolabel_mask_border:
            options.append(("autolabel_mask_border", True))
        return tuple(options)

    def load_label(self, sample: Sample) -> np.ndarray | None:
        """The trainId label of `sample`, with the autolabel options applied."""
        return self._refined_label(sample, for_centroids=False)

    def centroid_label(self, sample: Sample) -> np.ndarray | None:
        """The label class-uniform centroids are computed on.

        As NVIDIA's ``uniform.class_centroids_image``: the gtCoarse union is applied, the border mask and the
        confidence threshold are not (they only remove pixels at load time).
        """
        return self._refined_label(sample, for_centroids=True)

    def _refined_label(self, sample: Sample, for_centroids: bool) -> np.ndarray | None:
        label = super().load_label(sample)
        min_confidence = None if for_centroids else self.autolabel_min_confidence
        mask_border = self.autolabel_mask_border and not for_centroids
        if label is None or (min_confidence is None and not self.autolabel_gtcoarse_classes and not mask_border):
            return label
        confidence = coarse = None
        if min_confidence is not None:
            confidence = _read_same_size(self._confidence_files[sample.label], label.shape, sample.label)
        if self.autolabel_gtcoarse_classes:
            coarse_path, encoding = self._gtcoarse_files[sample.label]
            coarse = super().load_label(Sample(sample.image, coarse_path, encoding, sample.name))
            if coarse.shape != label.shape:
                raise DatasetError(f"{coarse_path}: gtCoarse label is {coarse.shape[1]}x{coarse.shape[0]} but the "
                                   f"autolabel {sample.label} is {label.shape[1]}x{label.shape[0]}")
        return refine_autolabel(
            label,
            confidence=confidence,
            min_confidence=min_confidence,
            coarse_train_ids=coarse,
            gtcoarse_classes=self.autolabel_gtcoarse_classes,
            mask_border=mask_border,
            ignore_index=self.ignore_index,
        )

    def __repr__(self) -> str:
        return f"CityscapesDataset(root={str(self.root)!r}, split={self.split!r}, mode={self.mode!r}, n={len(self)})"


def _confidence_files(root: Path, samples: list[Sample]) -> dict[Path, Path]:
    """label path -> its ``*_leftImg8bit_prob.png``: beside the label (what `attnseg autolabel` writes), else in
    refinement_final (NVIDIA's release, also when its labels are read from ``convert_autolabelled``)."""
    _, raw = _autolabel_dirs(root)
    found = {}
    for sample in samples:
        name = f"{sample.name}_leftImg8bit_prob.png"
        candidates = [sample.label.parent / name] + ([raw / sample.image.parent.name / name] if raw else [])
        path = next((candidate for candidate in candidates if candidate.is_file()), None)
        if path is None:
            raise DatasetError(f"{candidates[-1]}: confidence map not found (needed by autolabel_min_confidence for "
                               f"{sample.image.name}; looked in {', '.join(str(c.parent) for c in candidates)})")
        found[sample.label] = path
    return found


def _gtcoarse_files(root: Path, samples: list[Sample]) -> dict[Path, tuple[Path, str]]:
    """label path -> (gtCoarse label of the same frame, "trainIds" or "labelIds")."""
    coarse_root = require_dir(root / "gtCoarse" / "train_extra", "gtCoarse labels for autolabel_gtcoarse_classes")
    found = {}
    for sample in samples:
        folder = coarse_root / sample.image.parent.name
        candidates = [(folder / f"{sample.name}_gtCoarse_labelTrainIds.png", "trainIds"),
                      (folder / f"{sample.name}_gtCoarse_labelIds.png", "labelIds")]  # fmt: skip
        match = next(((path, encoding) for path, encoding in candidates if path.is_file()), None)
        if match is None:
            raise DatasetError(f"{candidates[1][0]}: gtCoarse label not found (needed by autolabel_gtcoarse_classes "
                               f"for {sample.image.name})")
        found[sample.label] = match
    return found


def _read_same_size(path: Path, shape: tuple[int, ...], label_path: Path | None) -> np.ndarray:
    array = read_label_png(path)
    if array.shape != shape:
        raise DatasetError(f"{path}: is {array.shape[1]}x{array.shape[0]} but the label {label_path} is "
                           f"{shape[1]}x{shape[0]}")
    if array.dtype != np.uint8:
        raise DatasetError(f"{path}: a confidence map must be 8-bit (0-255 = 0-1), got {array.dtype}")
    return array


def label_encodings(dataset: CityscapesDataset) -> dict[str, int]:
    """How many label files of each encoding a dataset reads (e.g. to tell the user to run `prepare`)."""
    names, counts = np.unique([s.encoding for s in dataset.samples], return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}
