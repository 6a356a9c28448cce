"""Builders that turn config sections into objects: the model, the one dataset switch, evaluation loaders.

With `attnseg.config.train_data` (training loaders) and `attnseg.config.training` (the whole training set-up) this is
the only place where configs become objects; library code takes explicit arguments instead of configs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from attnseg.config.schema import DataConfig, ModelConfig
from attnseg.errors import ConfigError, DatasetError
from attnseg.inference.preprocess import normalize_image, to_rgb_uint8


def build_model(model_cfg: ModelConfig) -> nn.Module:
    """The configured model, initialised from `model_cfg.pretrained` when set (entries that fit are loaded).

    Raises:
        ConfigError: unknown model name or builder arguments.
        WeightsError: the pretrained file cannot be read or nothing in it fits.
    """
    from attnseg.models import create_model

    try:
        model = create_model(model_cfg.name, num_classes=model_cfg.num_classes, **model_cfg.kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model.name={model_cfg.name!r} with kwargs {model_cfg.kwargs}: {error}") from None
    if model_cfg.pretrained:
        from attnseg.weights import load_pretrained

        load_pretrained(model, model_cfg.pretrained, source=model_cfg.pretrained_source)
    return model


class EvalSampleDataset(Dataset):
    """Wraps a dataset of raw samples (uint8 RGB ``image``, uint8 trainId ``label`` or None, ``name``) into
    normalised tensors for evaluation. Images keep their size; nothing random happens.

    Args:
        base: dataset whose items are dicts with ``image``, ``label``, ``name`` (and optionally ``image_path``).
        mean, std: normalisation on 0-255 RGB values.
    """

    def __init__(self, base: Dataset, mean: Sequence[float], std: Sequence[float]):
        self.base = base
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.base[index]
        image = to_rgb_uint8(sample["image"])
        label = sample.get("label")
        item: dict[str, Any] = {
            "image": normalize_image(image, self.mean, self.std),
            "label": None if label is None else torch.from_numpy(np.asarray(label).astype(np.int64)),
            "name": str(sample["name"]),
            "image_path": str(sample.get("image_path", "")),
        }
        return item


def collate_eval_batch(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images (and labels when every item has one); names and paths stay lists.

    Images of different sizes cannot share a batch: use batch size 1 for such datasets.
    """
    shapes = {tuple(item["image"].shape) for item in items}
    if len(shapes) > 1:
        raise DatasetError(f"images of different sizes {sorted(shapes)} in one evaluation batch; use batch_size 1")
    labels = [item["label"] for item in items]
    return {
        "image": torch.stack([item["image"] for item in items]),
        "label": torch.stack(labels) if all(label is not None for label in labels) else None,
        "name": [item["name"] for item in items],
        "image_path": [item.get("image_path", "") for item in items],
    }


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every image exactly once over all processes.

    Unlike `DistributedSampler` nothing is padded, so no image is counted twice in the metrics; shards may differ
    by one image, which is harmless because evaluation synchronises only once at the end.
    """

    def __init__(self, length: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def build_dataset(data_cfg: DataConfig, split: str, num_classes: int | None = None) -> Dataset:
    """The raw samples (uint8 RGB image, uint8 trainId or class-id label) of one split: the one dataset switch,
    for training and evaluation alike.

    Args:
        data_cfg: data section (kind, root, Mapillary class table, ignore value).
        split: split name.
        num_classes: the model's class count; a folder dataset's labels are checked against it (default 19).

    Raises:
        ConfigError: unknown dataset kind, or a folder layout that does not exist.
        DatasetError: the dataset folder is missing or laid out wrongly (raised by the dataset class).
    """
    kind = data_cfg.dataset
    if kind == "cityscapes":
        from attnseg.data.cityscapes import CityscapesDataset

        # NVIDIA's cross-validation folds move cities between train and val; PaddleSeg's add_val trains on both.
        return CityscapesDataset(data_cfg.root, split, cv_split=data_cfg.cv_split,
                                 add_val=data_cfg.add_val and split == data_cfg.train_split)
    if kind == "mapillary":
        from attnseg.data.mapillary import MapillaryDataset

        return MapillaryDataset(data_cfg.root, split, classes=data_cfg.mapillary_classes,
                                version=data_cfg.mapillary_version)
    if kind == "folder":
        options = {} if num_classes is None else {"num_classes": num_classes}
        return folder_dataset(data_cfg.root, split, ignore_index=data_cfg.ignore_index, **options)
    raise ConfigError(f"data.dataset={kind!r} is not one of cityscapes, mapillary, folder")


def folder_dataset(root: str | Path, split: str, num_classes: int = 19, ignore_index: int = 255) -> Dataset:
    """A `FolderDataset` for one split of a plain folder, found by the first layout that exists:

    ``<root>/<split>.txt`` (PaddleSeg-style list of ``<image> [<label>]`` lines relative to root);
    ``<root>/<split>/images`` with optional ``<root>/<split>/labels``;
    ``<root>/images/<split>`` with optional ``<root>/labels/<split>``.

    Args:
        root: the dataset folder.
        split: split name.
        num_classes: label values must be class ids ``0..num_classes-1`` or `ignore_index`.
        ignore_index: the label value meaning "no class".

    Raises:
        ConfigError: none of these exists.
    """
    from attnseg.data.folder import FolderDataset

    root = Path(root)
    labels_options = dict(num_classes=num_classes, ignore_index=ignore_index)
    if (root / f"{split}.txt").is_file():
        return FolderDataset(list_file=root / f"{split}.txt", root=root, **labels_options)
    for images, labels in ((root / split / "images", root / split / "labels"),
                           (root / "images" / split, root / "labels" / split)):  # fmt: skip
        if images.is_dir():
            return FolderDataset(images, labels if labels.is_dir() else None, **labels_options)
    raise ConfigError(
        f"data.root={root}: for data.dataset=folder, split {split!r} needs {root / (split + '.txt')}, "
        f"{root / split / 'images'} (+ labels/) or {root / 'images' / split} (+ labels/{split})"
    )


def build_eval_dataset(
    data_cfg: DataConfig, split: str | None = None, num_classes: int | None = None
) -> EvalSampleDataset:
    """The split (default `data_cfg.val_split`) as normalised, full-size evaluation samples.

    Args:
        data_cfg: data section.
        split: split name, default `data_cfg.val_split`.
        num_classes: the model's class count (checks a folder dataset's labels; see `build_dataset`).

    Raises:
        DatasetError: the dataset folder is missing or laid out wrongly (raised by the dataset class).
    """
    raw = build_dataset(data_cfg, split or data_cfg.val_split, num_classes)
    return EvalSampleDataset(raw, data_cfg.mean, data_cfg.std)


def build_eval_loader(
    data_cfg: DataConfig,
    split: str | None = None,
    batch_size: int = 1,
    num_workers: int | None = None,
    dataset: Dataset | None = None,
    num_classes: int | None = None,
) -> DataLoader:
    """A deterministic evaluation loader; under torch.distributed each process gets a disjoint shard.

    Args:
        data_cfg: dataset section (root, mean/std, workers).
        split: split name, default `data_cfg.val_split`.
        batch_size: images per batch (images of one batch must share a size).
        num_workers: loader workers, default `data_cfg.num_workers`.
        dataset: use this dataset instead of building one (e.g. a prebuilt `EvalSampleDataset`).
        num_classes: the model's class count (checks a folder dataset's labels; see `build_dataset`).
    """
    dataset = dataset if dataset is not None else build_eval_dataset(data_cfg, split, num_classes)
    sampler = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = ShardSampler(len(dataset), torch.distributed.get_rank(), torch.distributed.get_world_size())
    workers = data_cfg.num_workers if num_workers is None else num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_eval_batch,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


# Split names each dataset kind knows (a folder dataset's splits are whatever sub-folders or lists it holds).
KNOWN_SPLITS = {"cityscapes": ("train", "val", "test"), "mapillary": ("train", "val", "test")}


def dataset_class_count(data_cfg: DataConfig, dataset: Dataset | None = None) -> int | None:
    """Classes the dataset evaluates: its own table for Cityscapes and Mapillary, None for a folder dataset (whose
    label files hold the model's own class ids).

    Args:
        data_cfg: the data section.
        dataset: the built dataset, whose own class table is preferred when it has one.
    """
    if data_cfg.dataset == "folder":
        return None
    if dataset is not None and hasattr(getattr(dataset, "base", None), "num_classes"):
        return int(dataset.base.num_classes)
    from attnseg.data.labels import CITYSCAPES_CLASSES

    classes = getattr(data_cfg, "mapillary_classes", "cityscapes")
    if data_cfg.dataset == "mapillary" and classes != "cityscapes":
        from attnseg.data.mapillary import read_label_set

        return read_label_set(data_cfg.root, data_cfg.mapillary_version).num_classes
    return len(CITYSCAPES_CLASSES)


def build_eval_split(data_cfg: DataConfig, split: str, flag: str, num_classes: int | None = None) -> Dataset:
    """The evaluation dataset of `split`, refusing a split name the dataset kind does not have.

    Args:
        data_cfg: the data section.
        split: the split name.
        flag: how the user gave the split (``--split`` or ``eval.split``), for the message.
        num_classes: the model's class count (a folder dataset's labels are checked against it).

    Raises:
        ConfigError: `split` is not a split of the dataset kind.
    """
    known = KNOWN_SPLITS.get(data_cfg.dataset)
    if known is not None and split not in known:
        raise ConfigError(f"{flag} {split!r}: {data_cfg.dataset} has the splits {', '.join(known)}")
    return build_eval_dataset(data_cfg, split, num_classes)


def dataset_class_table(data_cfg: DataConfig, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Class names and colours a run on this dataset records: the dataset's own table when it has one of
    `num_classes` classes (Cityscapes; Mapillary Vistas from its config file), else `fallback_class_table`."""
    from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, fallback_class_table

    names: Sequence[str] | None = None
    palette = None
    if data_cfg.dataset == "mapillary" and data_cfg.mapillary_classes == "vistas":
        from attnseg.data.mapillary import read_label_set

        label_set = read_label_set(data_cfg.root, data_cfg.mapillary_version)
        names, palette = label_set.class_names, label_set.palette
    elif data_cfg.dataset in ("cityscapes", "mapillary"):
        names, palette = CITYSCAPES_CLASSES, np.asarray(CITYSCAPES_PALETTE, dtype=np.uint8)
    if names is None or len(names) != num_classes:
        return fallback_class_table(num_classes)
    return list(names), np.asarray(palette, dtype=np.uint8)
