"""Config sections -> the training loader: datasets (from the one switch in `attnseg.config.build`), transforms,
class centroids, epoch planner, sampler.

Only build code (`attnseg.config.training`) and tests call these; the engine itself takes explicit objects.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from attnseg.config.schema import DataConfig, TrainConfig
from attnseg.data.sampling import (
    CentroidTable,
    DistributedPlanSampler,
    EpochPlanner,
    PlannedDataset,
    cached_centroids,
    compute_centroids,
    dataset_fingerprint,
)
from attnseg.data.transforms import Compose, build_train_transform
from attnseg.engine import distributed
from attnseg.errors import ConfigError, DatasetError


def train_transform_from_config(data_cfg: DataConfig) -> Compose:
    """The augmentation pipeline a DataConfig describes."""
    return build_train_transform(
        crop_size=tuple(data_cfg.crop_size),
        scale_range=tuple(data_cfg.scale_range),
        scale_step=data_cfg.scale_step,
        pre_size=data_cfg.pre_size,
        interpolation=data_cfg.resize_interpolation,
        horizontal_flip=data_cfg.horizontal_flip,
        brightness=data_cfg.color_jitter,
        contrast=data_cfg.color_jitter,
        saturation=data_cfg.color_jitter,
        hue=data_cfg.hue_jitter,
        color_prob=data_cfg.color_jitter_prob,
        gaussian_blur=data_cfg.gaussian_blur,
        mean=data_cfg.mean,
        std=data_cfg.std,
        pad_value=data_cfg.pad_value,
        ignore_index=data_cfg.ignore_index,
    )


def build_train_datasets(data_cfg: DataConfig, num_classes: int | None = None) -> tuple[Dataset, Dataset | None]:
    """(fine training set, coarse/autolabelled set or None) as raw samples (uint8 image, trainId label).

    Args:
        data_cfg: data section.
        num_classes: the model's class count (checks a folder dataset's labels; see `build_dataset`).

    Raises:
        ConfigError: coarse data asked for a dataset kind other than Cityscapes, or an unknown kind.
    """
    from attnseg.config.build import build_dataset

    if data_cfg.coarse != "none" and data_cfg.dataset != "cityscapes":
        raise ConfigError(f"data.coarse={data_cfg.coarse!r} exists only for data.dataset=cityscapes")
    fine = build_dataset(data_cfg, data_cfg.train_split, num_classes)
    if data_cfg.coarse == "none":
        return fine, None
    from attnseg.data.cityscapes import CityscapesDataset

    options = {}
    if data_cfg.coarse == "autolabelled":
        options = dict(autolabel_min_confidence=data_cfg.autolabel_min_confidence,
                       autolabel_gtcoarse_classes=data_cfg.autolabel_gtcoarse_classes,
                       autolabel_mask_border=data_cfg.autolabel_mask_border)  # fmt: skip
    return fine, CityscapesDataset(data_cfg.root, "train_extra", mode=data_cfg.coarse, **options)


def dataset_label_files(dataset: Any) -> list[str] | None:
    """The label file (or, for an unlabelled item, image file) of every item when the dataset lists its files
    (`attnseg.data.base.SegmentationFiles.samples`), for the centroid cache key; None otherwise."""
    samples = getattr(dataset, "samples", None)
    if samples is None or not len(samples) or not hasattr(samples[0], "image"):
        return None
    return [os.fspath(s.label if getattr(s, "label", None) is not None else s.image) for s in samples]


def label_loader(dataset: Any):
    """A function index -> trainId label array, without decoding the image when the dataset allows it.

    A dataset's `centroid_label` (the label its centroids are computed on, e.g. autolabels before the load-time
    confidence threshold) is preferred to its `load_label`.
    """
    samples = getattr(dataset, "samples", None)
    load = getattr(dataset, "centroid_label", None) or getattr(dataset, "load_label", None)
    if samples is not None and load is not None:
        return lambda index: load(samples[index])
    return lambda index: np.asarray(dataset[index]["label"])


def dataset_centroids(
    dataset: Any, *, num_classes: int, tile: int, cache_dir: str | Path, workers: int, progress: bool
) -> CentroidTable:
    """Class centroids of `dataset`, from the content-keyed cache or computed once (rank 0) and cached."""
    files = dataset_label_files(dataset)
    if files is not None:
        key = dataset_fingerprint(files, "centroids/1", num_classes, tile,
                                  *getattr(dataset, "label_options", ()))
    else:  # no file list (e.g. an in-memory dataset): key on the labels themselves
        digest = hashlib.sha256(repr(("centroids/1", num_classes, tile, len(dataset))).encode())
        load = label_loader(dataset)
        for index in range(len(dataset)):
            label = np.ascontiguousarray(load(index))
            digest.update(repr(label.shape).encode() + label.tobytes())
        key = digest.hexdigest()[:24]
    return cached_centroids(
        cache_dir, key,
        lambda: compute_centroids(label_loader(dataset), len(dataset), num_classes=num_classes, tile=tile,
                                  workers=workers, progress=progress),
        is_writer=distributed.get_rank() == 0, barrier=distributed.barrier,
    )  # fmt: skip


@dataclass
class TrainData:
    """What the trainer consumes: the loader, its sampler and the dataset behind it."""

    loader: DataLoader
    sampler: DistributedPlanSampler
    dataset: PlannedDataset


def collate_train_batch(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return default_collate(list(items))


def build_train_data(
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    *,
    num_classes: int,
    fine: Dataset | None = None,
    coarse: Dataset | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> TrainData:
    """Training loader: datasets (built from `data_cfg` unless given), transforms, epoch planner, sampler.

    Args:
        data_cfg: data section.
        train_cfg: train section (batch size, seed).
        num_classes: K (class-uniform sampling draws over these).
        fine, coarse: prebuilt raw datasets (tests, custom data); built from the config when `fine` is None.
        rank, world_size: this process and the number of processes.
        progress: progress bar for the one-time centroid computation.
    """
    if fine is None:
        fine, coarse = build_train_datasets(data_cfg, num_classes)
    if len(fine) == 0:
        raise DatasetError(f"the training split {data_cfg.train_split!r} under {data_cfg.root} holds no images")
    use_coarse = coarse is not None and data_cfg.coarse != "none"
    fine_centroids = coarse_centroids = None
    if data_cfg.class_uniform_fraction > 0:
        cache_dir = data_cfg.centroid_cache_dir or os.path.join(data_cfg.root, ".attnseg_cache")
        options = dict(num_classes=num_classes, tile=data_cfg.class_uniform_tile, cache_dir=cache_dir,
                       workers=data_cfg.num_workers, progress=progress and rank == 0)
        fine_centroids = dataset_centroids(fine, **options)
        if use_coarse:
            coarse_centroids = dataset_centroids(coarse, **options)
    try:
        planner = EpochPlanner(
            num_fine=len(fine),
            num_coarse=len(coarse) if use_coarse else 0,
            coarse_mix=data_cfg.coarse_mix if use_coarse else "none",
            coarse_multiple=data_cfg.coarse_multiple,
            coarse_max_epoch=data_cfg.coarse_max_epoch,
            class_uniform_fraction=data_cfg.class_uniform_fraction,
            num_classes=num_classes,
            fine_centroids=fine_centroids,
            coarse_centroids=coarse_centroids,
            boost_classes=data_cfg.coarse_boost_classes,
            seed=train_cfg.seed,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    sampler = DistributedPlanSampler(planner, batch_size=train_cfg.batch_size, rank=rank, world_size=world_size)
    parts = [fine, coarse] if use_coarse else [fine]
    dataset = PlannedDataset(parts, train_transform_from_config(data_cfg), cache_decoded=data_cfg.cache_decoded)
    loader = DataLoader(
        dataset,
        # Micro-batches under gradient accumulation: the sampler plans whole steps of batch_size samples, the loader
        # cuts its stream into accumulate pieces per step (the trainer groups them back).
        batch_size=train_cfg.batch_size // train_cfg.accumulate,
        sampler=sampler,
        num_workers=data_cfg.num_workers,
        collate_fn=collate_train_batch,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=False,
        # A private generator: creating an iterator must not consume the global torch RNG, or a resumed run
        # (which creates one mid-epoch) would draw different dropout masks than an uninterrupted one.
        generator=torch.Generator().manual_seed(train_cfg.seed),
    )
    return TrainData(loader=loader, sampler=sampler, dataset=dataset)
