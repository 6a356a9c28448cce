"""The dataset writer: scenes rendered in worker processes and written atomically in the exact Cityscapes layout."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from attnseg.data.labels import colorize_label_ids, id_to_train_id
from attnseg.data.synthetic.render import render_scene
from attnseg.data.synthetic.scene import FORCED_CLASSES
from attnseg.fileio import atomic_write_text, atomic_write_with

#: Fictional city names (no underscores: Cityscapes file names split on them); distinct per split like the real set.
SPLIT_CITIES: dict[str, tuple[str, ...]] = {
    "train": ("arden", "brookfield", "cedarville"),
    "val": ("dunmore", "elmstead"),
}
FRAME_NUMBER = 19  # the annotated frame of every real Cityscapes fine snippet is _000019


@dataclass(frozen=True)
class _Job:
    root: str
    split: str
    index: int
    count: int
    height: int
    width: int
    seed: int


def _split_code(split: str) -> int:
    return {"train": 1, "val": 2, "test": 3}[split]


def _forced_for(index: int, count: int) -> tuple[str, ...]:
    """Round-robin share of `FORCED_CLASSES` for image `index` of `count`, so every split holds all of them."""
    return tuple(name for k, name in enumerate(FORCED_CLASSES) if k % max(count, 1) == index % max(count, 1))


def image_stem(split: str, index: int) -> tuple[str, str]:
    """(city, '<city>_<seq:06d>_000019') of image `index` in `split`."""
    cities = SPLIT_CITIES[split]
    city = cities[index % len(cities)]
    return city, f"{city}_{index // len(cities):06d}_{FRAME_NUMBER:06d}"


def _write_png(path: Path, array: np.ndarray) -> None:
    atomic_write_with(path, lambda temp: cv2.imwrite(str(temp), array, [cv2.IMWRITE_PNG_COMPRESSION, 1]))


def _generate(job: _Job) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng([job.seed, _split_code(job.split), job.index])
    scene = render_scene(rng, job.height, job.width, _forced_for(job.index, job.count))
    city, stem = image_stem(job.split, job.index)
    image_dir = Path(job.root, "leftImg8bit", job.split, city)
    label_dir = Path(job.root, "gtFine", job.split, city)
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    _write_png(image_dir / f"{stem}_leftImg8bit.png", cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR))
    base = label_dir / f"{stem}_gtFine"
    atomic_write_text(f"{base}_polygons.json", json.dumps(scene.annotation))
    _write_png(Path(f"{base}_labelIds.png"), scene.label_ids)
    _write_png(Path(f"{base}_instanceIds.png"), scene.instance_ids.astype(np.uint16))  # 16-bit like the official files
    color = colorize_label_ids(scene.label_ids)
    rgba = np.concatenate([color[..., ::-1], np.full(color.shape[:2] + (1,), 255, np.uint8)], axis=2)
    _write_png(Path(f"{base}_color.png"), rgba)
    return job.split, np.bincount(id_to_train_id[scene.label_ids].ravel(), minlength=256)[:19]


def make_synthetic_dataset(
    root: str | Path,
    num_train: int = 8,
    num_val: int = 4,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset in the Cityscapes layout and return its root.

    Images are independent functions of ``(seed, split, index)``, so the output does not depend on `workers`.

    Args:
        root: dataset folder (created; existing files with the same names are overwritten).
        num_train: images in ``train``.
        num_val: images in ``val``; every trainId class appears in it at least once when num_val >= 1.
        height: image height (the default 256x512 keeps Cityscapes' 1:2 aspect at 1/4 of its side, where poles are
            still 1-3 px wide, which a small HRNet can train on in minutes on a CPU).
        width: image width.
        seed: base random seed.
        workers: processes to use (1 = in this process).
        progress: show a tqdm bar.
    """
    if height < 32 or width < 64:
        raise ValueError(f"synthetic images must be at least 32x64 pixels, got {height}x{width}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [_Job(str(root), split, k, count, height, width, seed)
            for split, count in (("train", num_train), ("val", num_val)) for k in range(count)]  # fmt: skip
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            results = pool.imap_unordered(_generate, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
            results = list(_maybe_progress(results, len(jobs), progress))
    else:
        results = list(_maybe_progress(map(_generate, jobs), len(jobs), progress))
    return root


def _maybe_progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="synthetic", unit="img")


def class_pixel_counts(root: str | Path, split: str) -> np.ndarray:
    """(19,) int64 trainId pixel counts over the labelIds files of one split (handy to check class coverage)."""
    counts = np.zeros(19, dtype=np.int64)
    for path in sorted(Path(root, "gtFine", split).glob("*/*_gtFine_labelIds.png")):
        label_ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        counts += np.bincount(id_to_train_id[label_ids].ravel(), minlength=256)[:19]
    return counts
