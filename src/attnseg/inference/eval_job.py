"""The work of `attnseg eval` without the command line: load what is evaluated, attach the dumps and the submission
writer, run the recipe over a loader, check the submission folder. The CLI parses, prints and writes the JSON.

Nothing here reads configs: the caller passes the values (and, for a foreign checkpoint, a function that builds the
config's model).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnseg.errors import ConfigError
from attnseg.inference.evaluate import InferenceRecipe, evaluate_model
from attnseg.metrics.confusion import SegmentationMetrics


@dataclass
class EvalModel:
    """What is evaluated and what its outputs mean.

    Attributes:
        module: the model, or an exported backend as a module (`attnseg.export.runtime.BackendModule`).
        class_names: one name per class.
        palette: (K, 3) uint8 RGB colours.
        description: how the weights are named in the printed lines and the JSON recipe.
        mean: the input normalisation the checkpoint was trained with (None: the data config's).
        std: see `mean`.
        device: where the module runs.
    """

    module: nn.Module
    class_names: list[str]
    palette: np.ndarray
    description: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def gives_probabilities(self) -> bool:
        """False for an exported model that outputs argmax class ids (its scores are one-hot: no confidence)."""
        return getattr(getattr(self.module, "backend", None), "output", "logits") != "argmax"


def load_eval_model(
    weights: str | Path,
    device: torch.device,
    *,
    build_model: Callable[[], nn.Module],
    model_name: str,
    num_classes: int,
    source: str = "auto",
) -> EvalModel:
    """A native checkpoint / run directory (its sidecar says everything), or a foreign checkpoint (NVIDIA ``.pth``,
    PaddleSeg ``.pdparams``) loaded strictly into ``build_model()``, named by `fallback_class_table`.

    Args:
        weights: checkpoint base name or file, run directory, or foreign file.
        device: where the model goes.
        build_model: builds the architecture of a foreign checkpoint (the config's model, no pretrained weights).
        model_name: the config's model name (for the description of a foreign checkpoint).
        num_classes: the config's class count (names and palette of a foreign checkpoint).
        source: the foreign checkpoint's layout (`attnseg.weights.load_weights`).
    """
    from attnseg.data.labels import fallback_class_table
    from attnseg.inference.predictor import resolve_weights
    from attnseg.weights import checkpoint_paths, load_model, load_weights

    path = resolve_weights(weights)
    if checkpoint_paths(path)[1].is_file():
        model, sidecar = load_model(path, device=device)
        return EvalModel(model, list(sidecar.class_names), np.asarray(sidecar.palette), f"{path} ({sidecar.model})",
                         tuple(sidecar.mean), tuple(sidecar.std), device)  # fmt: skip
    model = build_model()
    load_weights(model, path, source=source, strict=True)
    model.to(device).eval()
    names, palette = fallback_class_table(num_classes)
    return EvalModel(model, names, palette, f"{path} ({model_name})", None, None, device)


class EvalOutputs:
    """The per-batch writers of an evaluation: image dumps and Cityscapes submission PNGs, called together.

    Args:
        class_names: the model's classes (19 = Cityscapes trainIds: labelIds can be written).
        palette: (K, 3) colours of the dumps.
        mean: input normalisation (to show the input images in the dumps).
        std: see `mean`.
        dump_dir: where `attnseg.inference.dump.PredictionDumper` writes (None: no dumps).
        dump_kinds: which images it writes; ``labelIds`` is dropped for a model without Cityscapes classes.
        submission_dir: where `attnseg.inference.submission.SubmissionWriter` writes (None: no submission).
        topn: keep the N lowest-IoU images overall and per class (`attnseg.inference.topn.WorstImages`; strips
            under ``dump_dir/topn/`` when `dump_dir` is given); 0: off.
        ignore_index: label value that the per-image IoU of `topn` does not count.

    Raises:
        ConfigError: a submission asked of a model without the 19 Cityscapes classes.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        palette: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        dump_dir: Path | None = None,
        dump_kinds: Sequence[str] = (),
        submission_dir: Path | None = None,
        topn: int = 0,
        ignore_index: int = 255,
    ):
        from attnseg.data.labels import train_id_to_id
        from attnseg.inference.dump import PredictionDumper
        from attnseg.inference.submission import SubmissionWriter
        from attnseg.inference.topn import WorstImages

        cityscapes_ids = len(class_names) == 19
        if submission_dir is not None and not cityscapes_ids:
            raise ConfigError("--submission writes Cityscapes labelIds and needs a 19-class model")
        self.callbacks: list[Callable] = []
        self.keeps_scale_logits = False
        if dump_dir is not None:
            kinds = [kind for kind in dump_kinds if cityscapes_ids or kind != "labelIds"]
            self.keeps_scale_logits = "scales" in kinds
            self.callbacks.append(PredictionDumper(dump_dir, np.asarray(palette), mean, std, kinds=kinds,
                                                   train_id_to_label_id=train_id_to_id if cityscapes_ids else None))
        self.submission = SubmissionWriter(submission_dir) if submission_dir is not None else None
        if self.submission is not None:
            self.callbacks.append(self.submission)
        self.worst = (WorstImages(topn, class_names, palette, mean, std, dump_dir, ignore_index)
                      if topn > 0 else None)  # fmt: skip
        if self.worst is not None:
            self.callbacks.append(self.worst)
        # (height, width) of every prediction, in the order written: the size a submission's PNGs must have.
        self.sizes: list[tuple[int, int]] = []

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def __call__(self, names: list[str], predictions: np.ndarray, extras: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback(names, predictions, extras)
        self.sizes.extend([tuple(predictions.shape[-2:])] * len(names))

    def finish(self) -> dict[str, Any] | None:
        """After the last batch, on every process: merge and write the top-N lists (`WorstImages.finish`); None
        without ``topn``."""
        return self.worst.finish() if self.worst is not None else None

    def check_submission(self, root: str | Path | None, split: str) -> int | None:
        """Check the submission folder (`attnseg.inference.submission.check_submission`); None without one.

        Args:
            root: a Cityscapes root whose ``leftImg8bit/<split>`` lists the expected images; None (or a root
                without that folder): the images written are expected.
            split: the evaluated split.

        The PNGs must have the size of the predictions: the first one's, so an image of another size is reported.
        """
        from attnseg.inference.submission import check_submission

        if self.submission is None:
            return None
        use_root = root is not None and (Path(root) / "leftImg8bit" / split).is_dir()
        expected = root if use_root else [path.name for path in self.submission.written]
        size = {"expected_size": self.sizes[0]} if self.sizes else {}
        return check_submission(self.submission.out_dir, expected, split=split, **size)


@dataclass
class EvalRun:
    """Result of `run_evaluation`: the split's metrics, the wall time of the loop and, with ``topn``, the lowest-IoU
    images (`attnseg.inference.topn.WorstImages.finish`)."""

    metrics: SegmentationMetrics
    seconds: float
    worst: dict[str, Any] | None = None


def run_evaluation(
    model: EvalModel,
    loader: Iterable[Mapping[str, Any]],
    recipe: InferenceRecipe,
    *,
    outputs: EvalOutputs | None = None,
    ignore_index: int = 255,
    progress: bool = True,
    pipeline: bool = True,
    idle_writer: bool = False,
) -> EvalRun:
    """Evaluate `model` under `recipe` on every batch of `loader`, feeding the predictions to `outputs`.

    Args:
        model: from `load_eval_model` or `attnseg.export.runtime.eval_backend_model`.
        loader: yields the batches `attnseg.inference.evaluate.evaluate_model` takes.
        recipe: scales, flip, windows, precision, fusion.
        outputs: dumps and submission writer (None: metrics only).
        ignore_index: label value that is not counted.
        progress: show a progress bar.
        pipeline: read ahead and write behind the model in background threads (`evaluate_model`).
        idle_writer: without `pipeline`, write behind at idle priority (`evaluate_model`).
    """
    start = time.perf_counter()
    metrics = evaluate_model(
        model.module, loader, len(model.class_names), scales=recipe.scales, multi_scale=recipe.multi_scale,
        flip=recipe.flip, mode=recipe.mode, crop_size=recipe.crop_size, stride=recipe.stride,
        precision=recipe.precision, device=model.device, progress=progress,
        on_prediction=outputs if outputs else None, fusion=recipe.fusion, ignore_index=ignore_index,
        keep_scale_outputs=bool(outputs and outputs.keeps_scale_logits), pipeline=pipeline, idle_writer=idle_writer,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return EvalRun(metrics, seconds, outputs.finish() if outputs is not None else None)
