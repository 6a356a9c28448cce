"""Which training samples each epoch holds, in which order, on which process: class-uniform crops and coarse mixing.

Every epoch is planned up front as a list of `SampleSpec` (dataset index, augmentation seed, optional crop centre)
drawn from a generator seeded by ``(seed, epoch)``, so the plan is the same on every process and after a restart.
`DistributedPlanSampler` hands each process its interleaved share and can start mid-epoch (exact resume).

Strategies, as in the references:

- NVIDIA class-uniform sampling (``class_uniform_pct``): each label image is cut into tiles; for every class in a
  tile the class's centre of mass there is a *centroid*. An epoch of N samples has ``int(N * fraction / K)``
  crops centred on centroids of each of the K classes (drawn with wrap-around from a shuffled list) and the rest
  plain random images. Centroids are computed once per dataset and cached in a file keyed by the dataset content.
- NVIDIA coarse boosting (``coarse_boost_classes``, mode ``"boost"``): coarse/autolabelled images enter only as
  class-uniform crops of the boosted classes; the plain random part stays fine-only. NVIDIA drops the coarse
  images again after ``max_cu_epoch`` (``coarse_max_epoch`` here).
- PaddleSeg CityscapesSOTA (mode ``"equal"``): each epoch is all fine images plus ``coarse_multiple`` times as
  many coarse ones, drawn anew each epoch (a fresh shuffle of the coarse list, first ones taken).
- ``"all"``: coarse images simply appended to the fine list.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from torch.utils.data import Dataset, Sampler

CoarseMix = Literal["none", "equal", "all", "boost"]


class SampleSpec(NamedTuple):
    """One planned training sample: what the sampler yields and `PlannedDataset` receives as its index."""

    index: int  # into the concatenation of the dataset parts (fine first, then coarse)
    seed: int  # seeds the sample's augmentation generator
    centroid_y: int = -1  # crop centre for class-uniform samples, -1 when the crop is plain random
    centroid_x: int = -1


# ----------------------------------------------------------------------------------------------------------------
# Class centroids
# ----------------------------------------------------------------------------------------------------------------


def tile_origins(height: int, width: int, tile: int) -> list[tuple[int, int]]:
    """Top-left corners of the tiles covering an image, row-major.

    NVIDIA keeps only whole tiles (``height // tile``); partial tiles at the bottom/right are kept here so that
    images smaller than a tile (or not a multiple of it) are still covered. For 1024x2048 Cityscapes frames and
    1024 tiles both give the same two tiles.
    """
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    return [(y, x) for y in range(0, height, tile) for x in range(0, width, tile)]


def label_centroids(label: np.ndarray, num_classes: int, tile: int) -> list[tuple[int, int, int]]:
    """(class_id, y, x) of every class's centre of mass in every tile of a trainId label image.

    Coordinates are floored to integers and absolute in the image; ignore (>= num_classes) pixels are skipped.
    """
    centroids = []
    for top, left in tile_origins(label.shape[0], label.shape[1], tile):
        patch = label[top:top + tile, left:left + tile]
        counts = np.bincount(patch.ravel(), minlength=256)[:num_classes]
        present = np.flatnonzero(counts)
        if present.size == 0:
            continue
        rows = np.arange(patch.shape[0], dtype=np.float64)[:, None]
        cols = np.arange(patch.shape[1], dtype=np.float64)[None, :]
        for class_id in present:
            mask = patch == class_id
            y = (mask * rows).sum() / counts[class_id]
            x = (mask * cols).sum() / counts[class_id]
            centroids.append((int(class_id), top + int(y), left + int(x)))
    return centroids


@dataclass(frozen=True)
class CentroidTable:
    """All centroids of a dataset: row i is (item index, y, x) of class ``class_ids[i]``."""

    class_ids: np.ndarray
    items: np.ndarray
    ys: np.ndarray
    xs: np.ndarray

    @staticmethod
    def from_rows(rows: Sequence[tuple[int, int, int, int]]) -> CentroidTable:
        """Rows are (item, class_id, y, x)."""
        array = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
        return CentroidTable(class_ids=array[:, 1].copy(), items=array[:, 0].copy(), ys=array[:, 2].copy(),
                             xs=array[:, 3].copy())

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def for_class(self, class_id: int) -> np.ndarray:
        """(M, 3) array of (item, y, x) for one class."""
        keep = self.class_ids == class_id
        return np.stack([self.items[keep], self.ys[keep], self.xs[keep]], axis=1)

    def shifted(self, offset: int) -> CentroidTable:
        """The same centroids with item indices moved by `offset` (a dataset placed after another)."""
        return CentroidTable(self.class_ids, self.items + offset, self.ys, self.xs)

    def save(self, path: str | Path) -> None:
        """Writes an ``.npz`` atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, class_ids=self.class_ids, items=self.items, ys=self.ys, xs=self.xs)
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    @staticmethod
    def load(path: str | Path) -> CentroidTable:
        with np.load(path) as data:
            return CentroidTable(data["class_ids"], data["items"], data["ys"], data["xs"])


def dataset_fingerprint(paths: Sequence[str | Path], *extra: Any) -> str:
    """A key that changes when the file list, any file's size or modification time, or `extra` changes.

    Order matters: centroids refer to items by position.
    """
    digest = hashlib.sha256()
    for value in extra:
        digest.update(repr(value).encode() + b"\0")
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.fspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


_WORKER_LOADER: Callable[[int], np.ndarray] | None = None
_WORKER_ARGS: tuple[int, int] = (19, 1024)


def _centroids_of_item(index: int) -> list[tuple[int, int, int, int]]:
    assert _WORKER_LOADER is not None
    num_classes, tile = _WORKER_ARGS
    return [(index, c, y, x) for c, y, x in label_centroids(_WORKER_LOADER(index), num_classes, tile)]


def compute_centroids(
    load_label: Callable[[int], np.ndarray],
    num_items: int,
    *,
    num_classes: int,
    tile: int,
    workers: int = 0,
    progress: bool = True,
) -> CentroidTable:
    """Centroids of every item, reading labels with ``load_label(index)``; `workers` > 0 uses forked processes."""
    from tqdm import tqdm

    global _WORKER_LOADER, _WORKER_ARGS
    _WORKER_LOADER, _WORKER_ARGS = load_label, (num_classes, tile)
    rows: list[tuple[int, int, int, int]] = []
    bar = tqdm(total=num_items, desc="class centroids", unit="img", disable=not progress, file=sys.stderr)
    try:
        if workers > 0 and num_items > 1 and "fork" in _start_methods():
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for item_rows in pool.imap(_centroids_of_item, range(num_items), chunksize=4):
                    rows.extend(item_rows)
                    bar.update(1)
        else:
            for index in range(num_items):
                rows.extend(_centroids_of_item(index))
                bar.update(1)
    finally:
        bar.close()
        _WORKER_LOADER = None
    return CentroidTable.from_rows(rows)


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def cached_centroids(
    cache_dir: str | Path,
    fingerprint: str,
    compute: Callable[[], CentroidTable],
    *,
    is_writer: bool = True,
    barrier: Callable[[], None] | None = None,
) -> CentroidTable:
    """Loads ``centroids_<fingerprint>.npz`` from `cache_dir`, or computes and writes it.

    In a distributed run, only the writer (rank 0) looks at the cache and computes; every other rank waits at
    `barrier` first and then reads the file. The others must not look at the file before the barrier: one that found
    it already written would skip the barrier the writer is waiting at, and the two would deadlock at their next
    collective operations (seen under load: rank 1 in DDP's first buffer broadcast, rank 0 here).
    """
    path = Path(cache_dir) / f"centroids_{fingerprint}.npz"
    table = None
    if is_writer:
        if path.is_file():
            table = CentroidTable.load(path)
        else:
            table = compute()
            table.save(path)
    if barrier is not None:
        barrier()
    return table if table is not None else CentroidTable.load(path)


# ----------------------------------------------------------------------------------------------------------------
# Epoch planning
# ----------------------------------------------------------------------------------------------------------------


def wrapped_draw(num_available: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` positions from a shuffled ``range(num_available)``, wrapping around when count > available
    (NVIDIA ``random_sampling``)."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if num_available <= 0:
        raise ValueError("cannot draw from an empty list")
    order = rng.permutation(num_available)
    return order[np.arange(count) % num_available]


def class_uniform_counts(epoch_length: int, fraction: float, num_classes: int) -> tuple[int, int]:
    """(crops per class, plain random samples) for an epoch of `epoch_length` (NVIDIA ``build_epoch``)."""
    per_class = int(epoch_length * fraction / num_classes)
    return per_class, epoch_length - per_class * num_classes


class EpochPlanner:
    """Builds the global, shuffled list of `SampleSpec` for an epoch.

    Items ``0 .. num_fine-1`` are fine images, ``num_fine .. num_fine+num_coarse-1`` coarse ones.

    Args:
        num_fine: number of fine images.
        num_coarse: number of coarse/autolabelled images (0 without coarse data).
        coarse_mix: "none", "equal" (PaddleSeg), "all" (appended) or "boost" (NVIDIA: coarse only through
            class-uniform crops of `boost_classes`).
        coarse_multiple: coarse images per fine image each epoch in "equal" mode (PaddleSeg default 1).
        coarse_max_epoch: from this epoch on the coarse images are no longer used (NVIDIA ``max_cu_epoch``);
            None keeps them to the end.
        class_uniform_fraction: fraction of each epoch centred on a uniformly drawn class (0 disables).
        num_classes: K.
        fine_centroids, coarse_centroids: centroid tables (item indices local to each part); needed when
            class_uniform_fraction > 0.
        boost_classes: classes whose coarse centroids join the class pools; empty means every class.
        seed: the run seed.
    """

    def __init__(
        self,
        *,
        num_fine: int,
        num_coarse: int = 0,
        coarse_mix: CoarseMix = "none",
        coarse_multiple: float = 1.0,
        coarse_max_epoch: int | None = None,
        class_uniform_fraction: float = 0.0,
        num_classes: int = 19,
        fine_centroids: CentroidTable | None = None,
        coarse_centroids: CentroidTable | None = None,
        boost_classes: Sequence[int] = (),
        seed: int = 0,
    ):
        if num_fine <= 0:
            raise ValueError("the training set has no fine images")
        if coarse_mix != "none" and num_coarse <= 0:
            raise ValueError(f"coarse_mix={coarse_mix!r} needs coarse images, found none")
        if coarse_mix == "boost" and class_uniform_fraction <= 0:
            raise ValueError("coarse_mix='boost' adds coarse images only through class-uniform crops; "
                             "set class_uniform_fraction > 0")
        if class_uniform_fraction > 0 and fine_centroids is None:
            raise ValueError("class-uniform sampling needs the fine centroids")
        self.num_fine = num_fine
        self.num_coarse = num_coarse if coarse_mix != "none" else 0
        self.coarse_mix = coarse_mix
        self.coarse_multiple = coarse_multiple
        self.coarse_max_epoch = coarse_max_epoch
        self.fraction = class_uniform_fraction
        self.num_classes = num_classes
        self.seed = seed
        self._pools_fine: list[np.ndarray] = []
        self._pools_all: list[np.ndarray] = []
        if class_uniform_fraction > 0:
            boosted = set(boost_classes) if boost_classes else set(range(num_classes))
            coarse_table = coarse_centroids.shifted(num_fine) if coarse_centroids is not None else None
            for class_id in range(num_classes):
                fine = fine_centroids.for_class(class_id)
                self._pools_fine.append(fine)
                if coarse_table is not None and self.num_coarse and class_id in boosted:
                    self._pools_all.append(np.concatenate([fine, coarse_table.for_class(class_id)]))
                else:
                    self._pools_all.append(fine)

    def coarse_active(self, epoch: int) -> bool:
        return self.num_coarse > 0 and (self.coarse_max_epoch is None or epoch < self.coarse_max_epoch)

    def plan(self, epoch: int) -> list[SampleSpec]:
        """The epoch's samples, shuffled; identical for identical (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        coarse = self.coarse_active(epoch)
        pool = np.arange(self.num_fine)
        if coarse and self.coarse_mix == "equal":
            count = int(round(self.num_fine * self.coarse_multiple))
            pool = np.concatenate([pool, self.num_fine + wrapped_draw(self.num_coarse, count, rng)])
        elif coarse and self.coarse_mix == "all":
            pool = np.arange(self.num_fine + self.num_coarse)
        items: list[tuple[int, int, int]]
        if self.fraction > 0:
            per_class, num_random = class_uniform_counts(len(pool), self.fraction, self.num_classes)
            items = [(int(i), -1, -1) for i in pool[wrapped_draw(len(pool), num_random, rng)]]
            pools = self._pools_all if coarse else self._pools_fine
            for class_pool in pools:
                if len(class_pool) == 0:
                    continue  # a class absent from the data gives a shorter epoch, as in the reference
                for item, y, x in class_pool[wrapped_draw(len(class_pool), per_class, rng)]:
                    items.append((int(item), int(y), int(x)))
        else:
            items = [(int(i), -1, -1) for i in pool]
        order = rng.permutation(len(items))
        seeds = rng.integers(0, 2**63 - 1, size=len(items), dtype=np.int64)
        return [SampleSpec(items[k][0], int(seeds[n]), items[k][1], items[k][2]) for n, k in enumerate(order)]


def batches_per_epoch(epoch_length: int, batch_size: int, world_size: int) -> int:
    """Whole global batches in an epoch (the incomplete last one is dropped)."""
    return epoch_length // (batch_size * world_size)


class DistributedPlanSampler(Sampler[SampleSpec]):
    """Yields this process's share of an epoch plan, optionally starting part-way through.

    Global batch k is ``plan[k*G:(k+1)*G]`` with ``G = batch_size * world_size``; process r takes every
    ``world_size``-th element of it starting at r, so one process with batch G sees the same samples per step as
    ``world_size`` processes with batch ``batch_size`` each.

    Call ``set_epoch(epoch, start_batch)`` before iterating.
    """

    def __init__(self, planner: EpochPlanner, *, batch_size: int, rank: int = 0, world_size: int = 1):
        self.planner = planner
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        self._plan: list[SampleSpec] | None = None
        self._plan_epoch = -1

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_plan(self, epoch: int) -> list[SampleSpec]:
        if self._plan_epoch != epoch:
            self._plan = self.planner.plan(epoch)
            self._plan_epoch = epoch
        assert self._plan is not None
        return self._plan

    def num_batches(self, epoch: int | None = None) -> int:
        """Batches per process in the given (default: current) epoch."""
        plan = self.epoch_plan(self.epoch if epoch is None else epoch)
        return batches_per_epoch(len(plan), self.batch_size, self.world_size)

    def __len__(self) -> int:
        return max(0, self.num_batches() - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[SampleSpec]:
        plan = self.epoch_plan(self.epoch)
        stop = self.num_batches() * self.batch_size * self.world_size
        start = self.start_batch * self.batch_size * self.world_size
        return iter(plan[start + self.rank:stop:self.world_size])


class PlannedDataset(Dataset):
    """Reads the sample a `SampleSpec` names from the concatenated `parts` and augments it with its own seed.

    Returns ``{"image": float CHW tensor, "label": int64 HW tensor, "index": int}`` (after `transform`).

    Args:
        parts: raw datasets (items with uint8 ``image`` and ``label``), indexed one after the other.
        transform: ``transform(sample, rng) -> sample``.
        cache_decoded: keep every decoded image and label in memory after its first read. For data sets that fit in
            RAM (the demo's 300 scenes take 160 MB; Cityscapes fine would take 25 GB): decoding a PNG costs more
            than the crop and augmentation made from it. Each loader worker keeps its own copy, for as long as the
            worker lives (one epoch), so it pays off with ``num_workers=0``.
    """

    def __init__(self, parts: Sequence[Any], transform: Callable[[dict, np.random.Generator], dict],
                 cache_decoded: bool = False):  # fmt: skip
        self.parts = list(parts)
        self.transform = transform
        self.offsets = np.cumsum([0] + [len(part) for part in self.parts])
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache_decoded else None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, spec: SampleSpec | int) -> dict:
        if not isinstance(spec, SampleSpec):
            spec = SampleSpec(int(spec), int(spec))
        image, label = self._decoded(spec.index)
        sample = {"image": image, "label": label}
        if spec.centroid_y >= 0:
            sample["centroid"] = (spec.centroid_y, spec.centroid_x)
        sample = self.transform(sample, np.random.default_rng(spec.seed))
        return {"image": sample["image"], "label": sample["label"], "index": spec.index}

    def _decoded(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        part = int(np.searchsorted(self.offsets, index, side="right")) - 1
        if part < 0 or part >= len(self.parts):
            raise IndexError(f"sample index {index} outside 0..{len(self) - 1}")
        item = self.parts[part][index - int(self.offsets[part])]
        decoded = (item["image"], item["label"])
        if self.cache is not None:
            # Read-only, so that no transform can change what later epochs read.
            for array in decoded:
                if isinstance(array, np.ndarray):
                    array.flags.writeable = False
            self.cache[index] = decoded
        return decoded


def epochs_for_iters(iters: int, batches: int) -> int:
    """Epochs needed to run `iters` steps of `batches` per epoch."""
    return math.ceil(iters / max(batches, 1))
