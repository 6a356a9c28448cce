"""Evaluate a segmentation model on a labelled split: inference recipe + confusion matrix on the fly.

`evaluate_model` is what both `attnseg eval` and the training engine's periodic evaluation call::

    evaluate_model
      ├─ eval mode (restored after); `model_forward` passes the scales to MscaleOCR's forward (hierarchical)
      │  or runs the model at 1.0 and the scales here (average)
      ├─ per batch: `predict_scores` = window/whole forward, flip/scale TTA (`attnseg.inference.tta`)
      ├─ `scores_to_labels` (max over channels; bilinear resize first when labels have another size)
      ├─ `ConfusionMatrix.update` on the device, `on_prediction(...)` for dumps and submission files
      │  (pipelined: batches read ahead by a `Prefetcher`, `on_prediction` run by a `BackgroundWriter`)
      └─ `ConfusionMatrix.all_reduce` (sums shards when torch.distributed is initialised) and `compute`
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attnseg.errors import ConfigError
from attnseg.inference.pipeline import BackgroundWriter, Prefetcher
from attnseg.inference.scales import check_hierarchical_scales, check_scales
from attnseg.inference.sliding import slide_inference
from attnseg.inference.tta import Fusion, tta_inference_with_output
from attnseg.metrics.confusion import ConfusionMatrix, SegmentationMetrics
from attnseg.models import fuses_scales, unwrap_model
from attnseg.models.outputs import SegmentationOutput, logits_of

MultiScale = Literal["hierarchical", "average"]
Mode = Literal["whole", "slide"]
Precision = Literal["fp32", "bf16", "fp16"]
# on_prediction(names, predictions (N, H, W) uint8 trainIds, extras)
PredictionCallback = Callable[[list[str], np.ndarray, dict[str, Any]], None]


@dataclass(frozen=True)
class InferenceRecipe:
    """How one batch is turned into scores; see `evaluate_model` for the meaning of each field."""

    scales: tuple[float, ...] = (1.0,)
    multi_scale: MultiScale = "hierarchical"
    flip: bool = False
    mode: Mode = "whole"
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    precision: Precision = "fp32"
    fusion: Fusion = "softmax"

    def __post_init__(self) -> None:
        if not self.scales:
            raise ConfigError("eval scales: at least one scale is needed")
        if self.multi_scale not in ("hierarchical", "average"):
            raise ConfigError(f"multi_scale must be 'hierarchical' or 'average', got {self.multi_scale!r}")
        # The one scale check (attnseg.inference.scales), as the config and the command line apply it.
        check_scales(self.scales)
        if self.multi_scale == "hierarchical":
            check_hierarchical_scales(self.scales)
        if self.mode not in ("whole", "slide"):
            raise ConfigError(f"eval mode must be 'whole' or 'slide', got {self.mode!r}")
        if self.mode == "slide" and (self.crop_size is None or self.stride is None):
            raise ConfigError("sliding-window evaluation needs crop_size and stride (height, width)")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"eval precision must be 'fp32', 'bf16' or 'fp16', got {self.precision!r}")

    @property
    def model_scales(self) -> tuple[float, ...]:
        """Scales fused inside the model (all of them for "hierarchical", only 1.0 for "average")."""
        return self.scales if self.multi_scale == "hierarchical" else (1.0,)

    @property
    def tta_scales(self) -> tuple[float, ...]:
        """Scales run outside the model (all of them for "average", none but 1.0 for "hierarchical")."""
        return self.scales if self.multi_scale == "average" else (1.0,)

    @property
    def single_pass(self) -> bool:
        return self.tta_scales == (1.0,) and not self.flip


def check_class_count(
    model_classes: int, dataset_classes: int | None, dataset: str, weights: str = "the model"
) -> None:
    """Refuse to score a model on a dataset that evaluates a different number of classes.

    The confusion matrix has the model's K rows: with fewer classes than the dataset, ground-truth ids >= K would be
    dropped as "ignore" and the rest scored against classes of another meaning, and an mIoU would still print.

    Args:
        model_classes: classes the model predicts (its checkpoint's class names, or ``model.num_classes``).
        dataset_classes: classes the dataset's labels are mapped to; None when the dataset has no class table of
            its own (a folder dataset holds the model's class ids), which is not checked.
        dataset: how to name the dataset in the message, e.g. ``"cityscapes:val"``.
        weights: how to name the model in the message.

    Raises:
        ConfigError: the counts differ.
    """
    if dataset_classes is not None and model_classes != dataset_classes:
        raise ConfigError(
            f"{weights} predicts {model_classes} classes but {dataset} evaluates {dataset_classes}: its class ids "
            f"do not mean the dataset's classes, so an mIoU would be meaningless; evaluate a {dataset_classes}-class "
            "model, or the model on a folder dataset (data.dataset=folder) whose labels hold its own class ids"
        )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode; its train/eval mode is restored on exit (the training loop evaluates between steps)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_forward(model: nn.Module, recipe: InferenceRecipe, keep_scale_outputs: bool = False) -> Callable:
    """The callable ``images -> output`` that runs `model` with the recipe's in-model scales.

    A model that fuses scales (`attnseg.models.fuses_scales`, MscaleOCR) gets ``scales=recipe.model_scales``: the
    recipe's scales for "hierarchical", (1.0,) for "average" (every averaged pass is a plain single-scale forward).
    Any other model accepts only scale 1.0 in hierarchical mode.

    Args:
        model: the network (possibly wrapped in DDP / torch.compile).
        recipe: the inference recipe.
        keep_scale_outputs: let a scale-fusing model return every scale's logits (for per-scale dumps).

    Raises:
        ConfigError: hierarchical scales other than (1.0,) for a model without multi-scale fusion.
    """
    if fuses_scales(model):
        return partial(model, scales=recipe.model_scales, keep_scale_outputs=keep_scale_outputs)
    if recipe.multi_scale == "hierarchical" and recipe.scales != (1.0,):
        raise ConfigError(
            f"{type(unwrap_model(model)).__name__} has no hierarchical multi-scale fusion (it takes no scales); "
            f"evaluate scales {list(recipe.scales)} with multi_scale='average' instead"
        )
    return model


def autocast_dtype(precision: Precision, device_type: str) -> torch.dtype | None:
    """The autocast dtype of an inference precision on a device type (None: fp32, no autocast).

    fp16 is CUDA only (NVIDIA's Mapillary evaluation needs it to fit a 32 GB GPU): CPU kernels for float16 are
    missing or emulated, so it is refused there rather than run slowly.

    Raises:
        ConfigError: fp16 on a device other than CUDA, or an unknown precision.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device_type != "cuda":
            raise ConfigError(f"fp16 evaluation needs a CUDA device, not {device_type}; use fp32 or bf16 on CPU")
        return torch.float16
    raise ConfigError(f"eval precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}")


def _with_autocast(fn: Callable, device: torch.device, precision: Precision) -> Callable:
    """`fn` run under bfloat16 / float16 autocast (`autocast_dtype`); only the network, so fusion stays float32."""
    dtype = autocast_dtype(precision, device.type)
    if dtype is None:
        return fn

    def run(images: torch.Tensor):
        with torch.autocast(device_type=device.type, dtype=dtype):
            return fn(images)

    return run


@dataclass
class BatchScores:
    """Scores of one batch.

    Attributes:
        scores: (N, K, H, W) float32: logits of a single pass, else fused probabilities or logits.
        are_probabilities: whether `scores` are softmax probabilities.
        output: raw output of the reference pass (a `SegmentationOutput` keeps MscaleOCR's per-scale maps).
    """

    scores: torch.Tensor
    are_probabilities: bool
    output: torch.Tensor | SegmentationOutput


def predict_scores(model: Callable, images: torch.Tensor, recipe: InferenceRecipe, num_classes: int) -> BatchScores:
    """Scores of a batch under `recipe`.

    Args:
        model: callable `images -> logits | SegmentationOutput` in eval mode, with the recipe's in-model scales
            bound (`model_forward`).
        images: (N, 3, H, W) normalised images on the model's device.
        recipe: the inference recipe.
        num_classes: K, needed by sliding-window assembly.
    """
    fn = _with_autocast(model, images.device, recipe.precision)
    if recipe.mode == "slide":
        fn = partial(slide_inference, fn, crop_size=recipe.crop_size, stride=recipe.stride, num_classes=num_classes)
    if recipe.single_pass:
        output = fn(images)
        return BatchScores(logits_of(output).float(), False, output)
    result = tta_inference_with_output(fn, images, scales=recipe.tta_scales, flip=recipe.flip, fusion=recipe.fusion)
    return BatchScores(result.scores, recipe.fusion == "softmax", result.reference_output)


def scores_to_labels(scores: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
    """Class ids (N, H, W) (uint8 when K <= 256) of (N, K, h, w) scores, resized bilinearly to `size` first.

    The ids are those of ``scores.max(dim=1).indices`` (the first of equal maxima; a NaN counts as the maximum),
    computed by `first_max_labels` where it applies: on CPU, the reduction over the channels of an NCHW map
    takes 0.25-0.55 s for 19x1024x2048 (PERF_NOTES; `argmax` is slower still), `first_max_labels` ~0.05 s.
    """
    if size is not None and tuple(scores.shape[-2:]) != tuple(size):
        scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
    labels = first_max_labels(scores)
    if labels is not None:
        return labels
    labels = scores.max(dim=1).indices
    return labels.to(torch.uint8) if scores.shape[1] <= 256 else labels


# Pixels per block of `first_max_labels`: its per-class temporaries (64 KiB each) stay in the core's L2 cache.
_FIRST_MAX_BLOCK = 1 << 16


def first_max_labels(scores: torch.Tensor) -> torch.Tensor | None:
    """uint8 (N, H, W) index of the first maximum over the channels of CPU float (N, K, H, W) NCHW scores.

    Equal to ``scores.max(dim=1).indices``, without its strided reduction: per block of pixels, the maximum over
    the classes (a vectorised elementwise max of the K planes), then for each class k the value ``k`` where the
    plane equals the maximum and 255 elsewhere, folded in with an elementwise minimum, so the first equal class
    wins. Everything runs on uint8 and in one thread.

    Returns:
        The ids, or None where this does not apply (another device, dtype or memory layout, K > 256, a NaN in the
        maximum); `scores_to_labels` then uses ``max``.
    """
    count, classes = scores.shape[:2] if scores.dim() == 4 else (0, 0)
    if not (count and scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64)
            and 1 <= classes <= 256 and scores.is_contiguous()):  # fmt: skip
        return None
    planes = scores.detach().numpy().reshape(count, classes, -1)
    labels = np.empty(planes.shape[::2], dtype=np.uint8)
    hit = np.empty(min(planes.shape[2], _FIRST_MAX_BLOCK), dtype=bool)
    code = np.empty(hit.shape, dtype=np.uint8)
    for index in range(count):
        for start in range(0, planes.shape[2], _FIRST_MAX_BLOCK):
            block = planes[index, :, start : start + _FIRST_MAX_BLOCK]
            best = block.max(axis=0)
            if np.isnan(best).any():  # max's own rule (the first NaN wins) is not worth copying here
                return None
            out, size = labels[index, start : start + block.shape[1]], block.shape[1]
            out.fill(255)
            for k in range(classes):
                np.equal(block[k], best, out=hit[:size])
                np.subtract(hit[:size].view(np.uint8), 1, out=code[:size])  # 0 where equal, 255 elsewhere
                np.bitwise_or(code[:size], k, out=code[:size])
                np.minimum(out, code[:size], out=out)
    return torch.from_numpy(labels.reshape(count, *scores.shape[2:]))


def evaluate_model(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    num_classes: int,
    *,
    scales: Sequence[float] = (1.0,),
    multi_scale: MultiScale = "hierarchical",
    flip: bool = False,
    mode: Mode = "whole",
    crop_size: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
    precision: Precision = "fp32",
    device: torch.device | str | None = None,
    progress: bool = True,
    on_prediction: PredictionCallback | None = None,
    fusion: Fusion = "softmax",
    ignore_index: int = 255,
    keep_scale_outputs: bool = False,
    pipeline: bool = True,
    idle_writer: bool = False,
) -> SegmentationMetrics:
    """Evaluate `model` on every batch of `loader` and return the metrics of the whole split.

    Args:
        model: a module returning logits or `SegmentationOutput`; its train/eval mode is restored afterwards, so
            the training loop can call this between steps.
        loader: yields dicts with ``"image"`` (N, 3, H, W) normalised float, ``"label"`` (N, H, W) long trainIds
            (or None for an unlabelled split: no metrics, predictions still reach `on_prediction`) and ``"name"``.
            Under torch.distributed each process iterates its own shard.
        num_classes: K.
        scales: test scales; 1.0 must be among them for hierarchical fusion.
        multi_scale: ``"hierarchical"`` = MscaleOCR's attention fusion inside the model (``scales=`` of forward);
            ``"average"`` = the model runs at each scale and the passes are averaged here (any model).
        flip: add horizontally flipped passes (fused with `fusion`).
        mode: ``"whole"`` image or ``"slide"`` window inference (then `crop_size` and `stride`, (height, width)).
        crop_size: sliding window size.
        stride: sliding window stride.
        precision: ``"bf16"`` / ``"fp16"`` (CUDA only) run the model under bfloat16 / float16 autocast; fusion and
            metrics stay in float32.
        device: where the model runs; defaults to the device of its parameters.
        progress: show a tqdm bar (only on rank 0).
        on_prediction: called per batch with (names, trainId predictions (N, H, W) uint8 numpy, extras) where
            extras holds ``"batch"`` (the loader's dict), ``"scores"`` (N, K, H, W tensor), ``"are_probabilities"``
            and ``"output"`` (the model output of the reference pass, with MscaleOCR's per-scale maps).
        fusion: how TTA passes are combined: ``"softmax"`` (mean of probabilities) or ``"logits"``.
        ignore_index: label value that is not counted.
        keep_scale_outputs: let MscaleOCR return every scale's logits (for per-scale dumps; costs memory: the
            2.0-scale logits of a 1024x2048 image alone take 640 MB).
        pipeline: take batches from `loader` in a background thread while the model runs, and call
            `on_prediction` in a background writer (`attnseg.inference.pipeline`; its errors are raised here, and
            it is drained before this returns); False does everything in this thread, one step after the other.
        idle_writer: with `pipeline` False, still call `on_prediction` in a background writer, at idle priority
            (`attnseg.inference.pipeline.lower_thread_priority`): for a machine whose cores the model's threads
            take, where it runs on the cycles they leave.

    Returns:
        Metrics over all processes' images (`SegmentationMetrics.num_images` counts labelled images).
    """
    recipe = InferenceRecipe(
        scales=tuple(float(s) for s in scales), multi_scale=multi_scale, flip=flip, mode=mode,
        crop_size=None if crop_size is None else tuple(crop_size), stride=None if stride is None else tuple(stride),
        precision=precision, fusion=fusion,
    )  # fmt: skip
    if device is None:
        parameter = next(iter(model.parameters()), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)
    confusion = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    forward = model_forward(model, recipe, keep_scale_outputs)
    with eval_mode(model), torch.inference_mode():
        _evaluate_batches(forward, loader, recipe, num_classes, device, confusion, on_prediction, progress, pipeline,
                          idle_writer)
    confusion.all_reduce()
    return confusion.compute()


def _evaluate_batches(
    forward: Callable,
    loader: Iterable[Mapping[str, Any]],
    recipe: InferenceRecipe,
    num_classes: int,
    device: torch.device,
    confusion: ConfusionMatrix,
    on_prediction: PredictionCallback | None,
    progress: bool,
    pipeline: bool,
    idle_writer: bool,
) -> None:
    """The loop of `evaluate_model`: every batch through the recipe into `confusion` and `on_prediction`.

    Returns only when `on_prediction` has been called for every batch (the background writer is drained when the
    ``with`` block is left), so every file is written, or its error raised, before the metrics are computed.
    """
    with contextlib.ExitStack() as stack:
        # Read ahead while the model runs (a DataLoader's workers decode; this thread takes their batches in).
        batches = stack.enter_context(Prefetcher(loader)) if pipeline else loader
        deliver = on_prediction
        if (pipeline or idle_writer) and on_prediction is not None:
            # Dumps and submission PNGs are written behind the model. One batch in the writer at a time: its
            # extras hold the full-size scores (160 MB for 19x1024x2048, more with per-scale outputs).
            writer = stack.enter_context(BackgroundWriter(max_pending=1, idle_priority=not pipeline))
            deliver = partial(writer.submit, _in_inference_mode, on_prediction)
        total = len(loader) if hasattr(loader, "__len__") else None
        for batch in _progress_bar(batches, progress, total):
            images = batch["image"].to(device, non_blocking=True)
            labels = batch.get("label")
            result = predict_scores(forward, images, recipe, num_classes)
            size = labels.shape[-2:] if labels is not None else None
            predictions = scores_to_labels(result.scores, size)
            if labels is not None:
                confusion.update(predictions, labels.to(device, non_blocking=True))
            if deliver is not None:
                extras = {
                    "batch": batch, "scores": result.scores, "are_probabilities": result.are_probabilities,
                    "output": result.output,
                }  # fmt: skip
                deliver(list(batch["name"]), predictions.cpu().numpy(), extras)


def _in_inference_mode(callback: PredictionCallback, *args: Any) -> None:
    """`callback` in the writer thread under inference mode, as it ran in the loop (the mode is per thread)."""
    with torch.inference_mode():
        callback(*args)


def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def _progress_bar(batches: Iterable, progress: bool, total: int | None) -> Iterable:
    if not (progress and _is_main_process()):
        return batches
    from tqdm import tqdm

    return tqdm(batches, total=total, desc="eval", unit="batch", dynamic_ncols=True)
