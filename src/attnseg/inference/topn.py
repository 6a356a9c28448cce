"""The images an evaluation gets most wrong (`attnseg eval --dump-topn N`, NVIDIA's ``dump_topn``).

Each image's own confusion gives its per-class intersection and union (ignored pixels count in neither); its score is
the mean IoU over the classes present in its ground truth or prediction, and per class the IoU of that class in the
images where it appears. `WorstImages` keeps, per process, at most N candidates per list (overall and one per
class) with their input | ground truth | prediction strips in a candidate folder; `WorstImages.finish` merges the
processes' lists (``all_gather_object`` under torch.distributed), has each process copy the strips it holds to::

    DIR/topn/overall/NN_<name>.png          the N lowest image mIoU, NN = rank (01 = worst)
    DIR/topn/<class_name>/NN_<name>.png     the N lowest IoU of that class
    DIR/topn/topn.json                      image, IoU and rank of every list

and removes the candidates. Predictions are never kept in memory beyond the current batch.
"""

from __future__ import annotations

import bisect
import json
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnseg.fileio import atomic_write_text, atomic_write_with
from attnseg.inference.dump import colorize, compare_strip, input_image, label_of, overlay, safe_name, write_png

OVERALL = "overall"


@dataclass(frozen=True, order=True)
class ScoredImage:
    """One image's place in a list, ordered by IoU then name (so ties rank the same on every run).

    Attributes:
        iou: the image's mIoU (overall list) or its IoU of the list's class.
        name: the sample name.
        process: rank of the process holding its strip.
        strip: the candidate strip's file name in that process's candidate folder ("" without strips).
    """

    iou: float
    name: str
    process: int = 0
    strip: str = ""


def image_iou(prediction: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int = 255
              ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(intersection, union) pixel counts per class of one image, from its confusion matrix.

    Pixels whose label is `ignore_index` (or no class id) count in neither, as in the split's confusion matrix.
    """
    label = np.asarray(label).astype(np.int64, copy=False)
    valid = (label != ignore_index) & (label >= 0) & (label < num_classes)
    pairs = label[valid] * num_classes + np.asarray(prediction)[valid].astype(np.int64)
    confusion = np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    intersection = np.diag(confusion)
    return intersection, confusion.sum(0) + confusion.sum(1) - intersection


def image_scores(intersection: np.ndarray, union: np.ndarray) -> tuple[float | None, dict[int, float]]:
    """(image mIoU over the classes present in ground truth or prediction, IoU per present class); the mIoU is
    None when no class is present (every pixel ignored)."""
    present = np.flatnonzero(union > 0)
    ious = {int(c): float(intersection[c] / union[c]) for c in present}
    return (float(np.mean(list(ious.values()))) if ious else None), ious


def folder_name(class_name: str, index: int) -> str:
    """A folder name for a class (``traffic light`` -> ``traffic_light``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(class_name)).strip("_.") or f"class_{index}"


class WorstImages:
    """An ``on_prediction`` callback of `evaluate_model` that keeps the `n` lowest-IoU images (module docstring).

    Args:
        n: images per list.
        class_names: one per class (their folders under ``topn/``).
        palette: (K, 3) colours of the strips.
        mean: input normalisation (to show the input when its file is not at hand).
        std: see `mean`.
        out_dir: the dump folder (strips and JSON under ``topn/``); None: scores only.
        ignore_index: label value that is not counted.
        alpha: opacity of the prediction over the input in the strips.
    """

    def __init__(
        self,
        n: int,
        class_names: Sequence[str],
        palette: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        out_dir: Path | None = None,
        ignore_index: int = 255,
        alpha: float = 0.5,
    ):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        self.n, self.class_names = int(n), list(class_names)
        self.palette, self.mean, self.std = np.asarray(palette, dtype=np.uint8), tuple(mean), tuple(std)
        self.ignore_index, self.alpha = ignore_index, alpha
        self.root = Path(out_dir) / "topn" if out_dir is not None else None
        self.process = _rank()
        # lists[c] for class c, lists[K] overall; each sorted, lowest IoU first, at most n long.
        self.lists: list[list[ScoredImage]] = [[] for _ in range(len(self.class_names) + 1)]
        self._references: Counter[str] = Counter()
        self._written = 0
        if self.root is not None:
            shutil.rmtree(self._candidates, ignore_errors=True)  # what a killed run left

    @property
    def _candidates(self) -> Path:
        return self.root / f".candidates-{self.process}"

    def __call__(self, names: Sequence[str], predictions: np.ndarray, extras: dict[str, Any]) -> None:
        batch = extras.get("batch", {})
        labels = batch.get("label")
        if labels is None:
            return
        overall = len(self.class_names)
        for index, name in enumerate(names):
            label = label_of(labels, index)
            miou, ious = image_scores(*image_iou(predictions[index], label, overall, self.ignore_index))
            if miou is None:
                continue
            scores = {overall: miou, **ious}
            entering = [key for key, iou in scores.items() if self._enters(key, ScoredImage(iou, str(name)))]
            if not entering:
                continue
            strip = self._write_strip(batch, index, predictions[index], label) if self.root is not None else ""
            for key in entering:
                self._insert(key, ScoredImage(scores[key], str(name), self.process, strip))

    def _enters(self, key: int, entry: ScoredImage) -> bool:
        ranked = self.lists[key]
        return len(ranked) < self.n or entry < ranked[-1]

    def _insert(self, key: int, entry: ScoredImage) -> None:
        ranked = self.lists[key]
        bisect.insort(ranked, entry)
        self._references[entry.strip] += 1
        if len(ranked) > self.n:
            self._release(ranked.pop())

    def _release(self, entry: ScoredImage) -> None:
        self._references[entry.strip] -= 1
        if entry.strip and self._references[entry.strip] <= 0:
            del self._references[entry.strip]
            (self._candidates / entry.strip).unlink(missing_ok=True)

    def _write_strip(self, batch: dict[str, Any], index: int, prediction: np.ndarray, label: np.ndarray) -> str:
        image = input_image(batch, index, prediction.shape, self.mean, self.std)
        blended = overlay(image, colorize(prediction, self.palette), self.alpha)
        self._written += 1
        name = f"{self._written:07d}.png"
        write_png(self._candidates / name, compare_strip(image, label, blended, self.palette))
        return name

    def finish(self) -> dict[str, Any]:
        """Merge the processes' lists, write the strips this process holds and (rank 0) ``topn.json``.

        Every process must call it (it gathers under torch.distributed).

        Returns:
            ``{"n", "overall": [records], "classes": {class name: [records]}}``, a record being ``{"rank", "image",
            "iou", "file"}`` (``file`` relative to ``topn/``, None without strips), lowest IoU first.
        """
        merged = _merge(_gather(self.lists), self.n)
        result: dict[str, Any] = {"n": self.n, OVERALL: [], "classes": {}}
        written: set[Path] = set()
        for key, ranked in enumerate(merged):
            if not ranked:
                continue
            overall = key == len(self.class_names)
            folder = OVERALL if overall else folder_name(self.class_names[key], key)
            records = []
            for rank, entry in enumerate(ranked, start=1):
                relative = f"{folder}/{rank:0{max(2, len(str(self.n)))}d}_{safe_name(entry.name)}.png"
                records.append({"rank": rank, "image": entry.name, "iou": entry.iou,
                                "file": relative if self.root is not None else None})  # fmt: skip
                if self.root is not None:
                    written.add(self.root / relative)
                    if entry.process == self.process:
                        source = self._candidates / entry.strip
                        atomic_write_with(self.root / relative, lambda temp, src=source: shutil.copyfile(src, temp))
            if overall:
                result[OVERALL] = records
            else:
                result["classes"][self.class_names[key]] = records
        self._write_index(result, written)
        return result

    def _write_index(self, result: dict[str, Any], written: set[Path]) -> None:
        """After every process has copied its strips: rank 0 writes ``topn.json`` and removes the strips of an
        earlier run that this one did not write; each process removes its candidates."""
        if self.root is None:
            return
        _barrier()
        if self.process == 0:
            for stale in self.root.glob("*/*.png"):
                if stale not in written and not stale.parent.name.startswith(".candidates-"):
                    stale.unlink(missing_ok=True)
            atomic_write_text(self.root / "topn.json", json.dumps(result, indent=2) + "\n")
        shutil.rmtree(self._candidates, ignore_errors=True)


def format_worst_table(records: Sequence[dict[str, Any]]) -> str:
    """The printed table of the overall list: rank, image mIoU, image."""
    lines = [f"worst {len(records)} images by image mIoU (classes in its ground truth or prediction):",
             f"{'rank':>6}  {'mIoU':>7}  image"]  # fmt: skip
    lines += [f"{r['rank']:>6}  {r['iou']:>7.4f}  {r['image']}" for r in records]
    return "\n".join(lines)


def _merge(per_process: list[list[list[ScoredImage]]], n: int) -> list[list[ScoredImage]]:
    """The `n` lowest of each list over all processes."""
    return [sorted(entry for lists in per_process for entry in lists[key])[:n] for key in range(len(per_process[0]))]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _rank() -> int:
    return torch.distributed.get_rank() if _distributed() else 0


def _gather(lists: list[list[ScoredImage]]) -> list[list[list[ScoredImage]]]:
    """Every process's lists (only this one's when not distributed)."""
    if not _distributed():
        return [lists]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, lists)
    return gathered


def _barrier() -> None:
    if _distributed():
        torch.distributed.barrier()
