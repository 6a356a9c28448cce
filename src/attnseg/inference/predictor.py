"""`Predictor`: a trained checkpoint as a function from an image (array, PIL image or file) to a label map.

Pre-processing (mean/std, channel order), class names and palette come from the checkpoint's sidecar, never from
the caller, so a model is always fed the numbers it was trained with::

    predictor = Predictor.from_weights("runs/cityscapes/checkpoints/best")
    labels = predictor("frankfurt_000000_000294_leftImg8bit.png")       # (H, W) uint8 trainIds
    cv2.imwrite("overlay.png", predictor.overlay(image, labels)[..., ::-1])
    result = predictor.predict(image, confidence=True, attention=True)  # .confidence (H, W), .attention[0.5]

Probabilities are those of the fused prediction (after scale / flip / window fusion; the softmax of fused logits),
on every route: whole image or windows, hierarchical or averaged scales, model or exported backend.

The network sits behind a small seam, `logits_fn` (normalised NCHW float tensor -> logits), so a runtime other
than eager PyTorch (ONNX Runtime, OpenVINO) can be plugged in with `Predictor.from_numpy_backend`.

Large images: before each image the predictor estimates the peak memory of a whole-image pass
(`attnseg.inference.memory.MemoryModel`, measured once per predictor by two small probe passes) and, when it
exceeds `max_memory_bytes` (default: half the machine's available memory, 80 % of free CUDA memory), runs
sliding windows instead (`attnseg.inference.sliding`), with the given `crop_size` / `stride` or a crop chosen to
fit, and says so through `log`. ``slide=True`` always uses windows. `Predictor.plan` tells what a size would get.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch import nn

from attnseg.errors import ConfigError, DatasetError, WeightsError
from attnseg.inference.confidence import confidence_of, log_probabilities, probabilities_of
from attnseg.inference.dump import colorize, overlay, scale_maps
from attnseg.inference.evaluate import (
    InferenceRecipe,
    _with_autocast,
    eval_mode,
    model_forward,
    predict_scores,
    scores_to_labels,
)
from attnseg.inference.memory import MemoryModel, default_memory_budget, format_bytes, probe_memory_model
from attnseg.inference.preprocess import normalize_image, to_rgb_uint8
from attnseg.models import default_scales, fuses_scales, unwrap_model
from attnseg.models.outputs import SegmentationOutput

LogitsFn = Callable[[torch.Tensor], Any]
# A runtime backend: (N, 3, H, W) float32 normalised array -> (N, K, H, W) logits array.
NumpyBackend = Callable[[np.ndarray], np.ndarray]
MemoryBudget = int | Literal["auto"] | None
# A window side chosen to fit the budget is capped here: beyond it windows gain nothing but latency.
MAX_AUTO_CROP = 1024
# Far above what the networks here hold per input pixel (MscaleOCR W18-small, 2 scales: 525 bytes measured).
UNPROBED_BYTES_PER_PIXEL = 64 * 2**10
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferencePlan:
    """How one image of a given size is run.

    Attributes:
        mode: ``"whole"`` or ``"slide"``.
        crop_size: window (height, width) when sliding.
        stride: window stride (height, width) when sliding.
        estimate_bytes: predicted peak of a whole-image pass (None: not estimated).
        budget_bytes: the memory budget it was compared with (None: no budget).
        automatic: sliding was chosen because the whole pass would not fit the budget.
    """

    mode: str
    crop_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    estimate_bytes: float | None = None
    budget_bytes: int | None = None
    automatic: bool = False

    def describe(self) -> str:
        """One line saying why windows are used (for `automatic` plans)."""
        window = f"{self.crop_size[0]}x{self.crop_size[1]} windows, stride {self.stride[0]}x{self.stride[1]}"
        if not self.automatic:
            return f"sliding {window}"
        return (f"a whole-image pass needs about {format_bytes(self.estimate_bytes)}, more than the "
                f"{format_bytes(self.budget_bytes)} memory budget: sliding {window}")  # fmt: skip


@dataclass
class Prediction:
    """What `Predictor.predict` returns for one image.

    Attributes:
        labels: (H, W) uint8 class ids.
        probabilities: (K, H, W) float32 fused class probabilities, when asked for.
        confidence: (H, W) float32 top fused probability (``probabilities.max(0)``), when asked for.
        attention: MscaleOCR's attention map per fused scale below the largest, (h, w) float32 in [0, 1] at that
            scale's size, when asked for (empty otherwise).
        scale_labels: the class ids each scale alone predicts, (h, w) uint8 at that scale's size, with `attention`.
        plan: whole image or windows (`Predictor.plan`).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    confidence: np.ndarray | None = None
    attention: dict[float, np.ndarray] = field(default_factory=dict)
    scale_labels: dict[float, np.ndarray] = field(default_factory=dict)
    plan: InferencePlan | None = None


def default_stride(crop_size: tuple[int, int]) -> tuple[int, int]:
    """Two thirds of the window (at least 1), the overlap of the references' Cityscapes recipes (512 of 769)."""
    return max(1, crop_size[0] * 2 // 3), max(1, crop_size[1] * 2 // 3)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB (grayscale, 16-bit and RGBA files are converted).

    Raises:
        DatasetError: the file is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such image file")
    data = np.fromfile(str(path), dtype=np.uint8)  # fromfile + imdecode also handles non-ASCII paths
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DatasetError(f"{path}: cannot be decoded as an image (corrupt or unsupported format)")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    elif image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return to_rgb_uint8(image)


def as_rgb_array(image: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a path, a PIL image, or an RGB/RGBA/grayscale numpy array."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL.Image without importing PIL
        image = np.asarray(image.convert("RGBA") if image.mode in ("RGBA", "LA", "P") else image)
    return to_rgb_uint8(np.asarray(image))


def resolve_weights(path: str | os.PathLike) -> Path:
    """The native checkpoint base path for `path`: a checkpoint file/base name, or a training run directory.

    In a run directory (or its ``checkpoints/`` folder, or an `attnseg demo` output folder holding the run in
    ``run/``) the ``best`` checkpoint is taken, else ``last``.

    Raises:
        WeightsError: nothing usable is found.
    """
    path = Path(path)
    if path.is_dir():
        for folder in (path / "checkpoints", path, path / "run" / "checkpoints"):
            for stem in ("best", "last"):
                if (folder / f"{stem}.safetensors").is_file() and (folder / f"{stem}.json").is_file():
                    return folder / stem
        raise WeightsError(f"{path}: a directory without checkpoints/best.safetensors or checkpoints/last.safetensors")
    return path


def run_config_path(path: str | os.PathLike) -> Path | None:
    """The ``config.yaml`` of the training run `path` names (a run directory, an `attnseg demo` folder, or a
    checkpoint inside ``<run>/checkpoints/``), or None when `path` is not part of a run."""
    path = Path(path)
    if path.is_dir():
        try:
            path = resolve_weights(path)
        except WeightsError:
            return None
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    return run / "config.yaml" if run is not None and (run / "config.yaml").is_file() else None


class Predictor:
    """Segment single images with a trained model.

    Args:
        logits_fn: normalised (N, 3, H, W) float tensor -> logits (N, K, H, W) (tensor or `SegmentationOutput`).
        mean, std: input normalisation on 0-255 RGB values.
        class_names: one name per class.
        palette: (K, 3) RGB colours.
        device: where input tensors are put.
        precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast, CUDA only).
        scales, multi_scale, flip, fusion: test-time recipe (see `attnseg.inference.evaluate.evaluate_model`).
        model: the module behind `logits_fn` if any: put in eval mode per call; a model that fuses scales
            (MscaleOCR) is called as ``model(images, scales=...)`` with the recipe's scales, so `logits_fn` must be
            the model itself then.
        slide: always run sliding windows (`crop_size` default: the largest that fits the budget, at most
            `MAX_AUTO_CROP`).
        crop_size: window (height, width) for sliding, explicit or automatic.
        stride: window stride (height, width); default two thirds of the window.
        max_memory_bytes: budget of one pass; a larger whole-image estimate switches to windows. ``"auto"``:
            `attnseg.inference.memory.default_memory_budget` at call time; None: never switch. Estimates need
            `model` (eager PyTorch); runtime backends only slide when told to.
        log: receives the line saying that windows were chosen; default: this module's logger (warning).
        labels_only: `logits_fn` returns one-hot class ids (an export with ``--output argmax``): labels only, no
            probabilities or confidence.
    """

    def __init__(
        self,
        logits_fn: LogitsFn,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str],
        palette: np.ndarray | Sequence[Sequence[int]],
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        scales: Sequence[float] = (1.0,),
        multi_scale: str = "hierarchical",
        flip: bool = False,
        fusion: str = "softmax",
        model: nn.Module | None = None,
        slide: bool = False,
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        max_memory_bytes: MemoryBudget = "auto",
        log: Callable[[str], None] | None = None,
        labels_only: bool = False,
    ):
        self.logits_fn = logits_fn
        self.labels_only = bool(labels_only)
        self.slide = bool(slide)
        self.crop_size = _pair_or_none(crop_size, "crop_size")
        self.stride = _pair_or_none(stride, "stride")
        if max_memory_bytes not in ("auto", None) and (not isinstance(max_memory_bytes, int) or max_memory_bytes < 1):
            raise ConfigError(f"max_memory_bytes must be a positive int, 'auto' or None, got {max_memory_bytes!r}")
        self.max_memory_bytes = max_memory_bytes
        self.log = log if log is not None else _LOG.warning
        self.last_plan: InferencePlan | None = None
        self._memory_model: MemoryModel | None = None
        self.model = model
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.class_names = list(class_names)
        self.palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        self.device = torch.device(device)
        self.recipe = InferenceRecipe(
            scales=tuple(float(s) for s in scales), multi_scale=multi_scale, flip=flip, precision=precision,
            fusion=fusion,
        )
        if model is None and self.recipe.multi_scale == "hierarchical" and self.recipe.scales != (1.0,):
            raise ValueError(
                "hierarchical multi-scale needs the model itself; use multi_scale='average' with a backend"
            )
        if model is not None and fuses_scales(model) and logits_fn is not model:
            raise ValueError("a model that fuses scales is called with the recipe's scales: pass it as logits_fn too")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_weights(
        cls,
        path: str | os.PathLike,
        device: torch.device | str | None = None,
        precision: str = "fp32",
        *,
        scales: Sequence[float] | None = None,
        multi_scale: str = "hierarchical",
        flip: bool = False,
        fusion: str = "softmax",
        slide: bool = False,
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        max_memory_bytes: MemoryBudget = "auto",
        log: Callable[[str], None] | None = None,
    ) -> Predictor:
        """Load a native checkpoint (``.safetensors`` + sidecar ``.json``) or a run directory's best checkpoint.

        Args:
            path: checkpoint base name or file, or a training run directory.
            device: default CUDA when available, else CPU.
            precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (CUDA only).
            scales: test scales; None: the model's own (`attnseg.models.default_scales`: MscaleOCR's
                `eval_scales`, else 1.0) for hierarchical, 1.0 for average.
            multi_scale: ``"hierarchical"`` (inside MscaleOCR) or ``"average"``.
            flip: add flipped passes.
            fusion: ``"softmax"`` or ``"logits"`` averaging of the passes.
            slide, crop_size, stride, max_memory_bytes, log: sliding windows and the memory budget (see the
                class).
        """
        from attnseg.weights import load_model

        device = torch.device(device) if device is not None else _default_device()
        model, sidecar = load_model(resolve_weights(path), device=device)
        if scales is None:
            scales = default_scales(model) if multi_scale == "hierarchical" else (1.0,)
        return cls(
            model, mean=sidecar.mean, std=sidecar.std, class_names=sidecar.class_names, palette=sidecar.palette,
            device=device, precision=precision, scales=scales, multi_scale=multi_scale, flip=flip, fusion=fusion,
            model=model, slide=slide, crop_size=crop_size, stride=stride, max_memory_bytes=max_memory_bytes, log=log,
        )  # fmt: skip

    @classmethod
    def from_numpy_backend(
        cls, backend: NumpyBackend, sidecar: Any, *, scales: Sequence[float] = (1.0,), flip: bool = False,
        slide: bool = False, crop_size: Sequence[int] | None = None, stride: Sequence[int] | None = None,
        log: Callable[[str], None] | None = None, output: str | None = None,
    ) -> Predictor:
        """A predictor over a non-torch runtime: `backend` maps a normalised NCHW float32 array to scores.

        Args:
            backend: e.g. an ONNX Runtime session's run wrapped in a function.
            sidecar: the checkpoint's `attnseg.weights.CheckpointSidecar` or an export's
                `attnseg.export.onnx.ExportSidecar` (pre-processing, names, palette).
            scales: scales averaged outside the backend.
            flip: add flipped passes.
            slide, crop_size, stride, log: sliding windows (see the class; without a torch model there is no
                memory estimate, so windows are used only when asked for).
            output: what `backend` returns: ``"logits"``, ``"softmax"`` probabilities (fused as their log, so the
                probabilities come back unchanged) or ``"argmax"`` as one-hot scores (labels only); default the
                sidecar's ``output`` (an export's), else ``"logits"``.
        """
        output = output or getattr(sidecar, "output", None) or "logits"
        if output not in ("logits", "softmax", "argmax"):
            raise ValueError(f"output must be 'logits', 'softmax' or 'argmax', got {output!r}")

        def logits_fn(images: torch.Tensor) -> torch.Tensor:
            scores = torch.from_numpy(np.asarray(backend(images.cpu().numpy().astype(np.float32)), dtype=np.float32))
            return log_probabilities(scores) if output == "softmax" else scores

        return cls(
            logits_fn, mean=sidecar.mean, std=sidecar.std, class_names=sidecar.class_names, palette=sidecar.palette,
            scales=scales, multi_scale="average", flip=flip, slide=slide, crop_size=crop_size, stride=stride, log=log,
            labels_only=output == "argmax",
        )  # fmt: skip

    def preprocess(self, image: Any) -> torch.Tensor:
        """(1, 3, H, W) normalised tensor on the predictor's device."""
        return normalize_image(as_rgb_array(image), self.mean, self.std)[None].to(self.device)

    def __call__(self, image: Any, return_probabilities: bool = False):
        """Segment one image (`predict` returns more).

        Args:
            image: file path, PIL image, or numpy array (H, W) gray / (H, W, 3) RGB / (H, W, 4) RGBA, any size.
            return_probabilities: also return (K, H, W) float32 class probabilities.

        Returns:
            (H, W) uint8 class ids, or ``(labels, probabilities)``.
        """
        prediction = self.predict(image, probabilities=return_probabilities)
        return (prediction.labels, prediction.probabilities) if return_probabilities else prediction.labels

    def predict(
        self, image: Any, *, probabilities: bool = False, confidence: bool = False, attention: bool = False
    ) -> Prediction:
        """Segment one image, with the fused probabilities, the confidence and the attention maps on request.

        Args:
            image: as for `__call__`.
            probabilities: fill `Prediction.probabilities`.
            confidence: fill `Prediction.confidence`.
            attention: fill `Prediction.attention` and `Prediction.scale_labels` (a model that fuses scales, run
                at two or more scales on the whole image; the per-scale logits are kept, which costs memory).

        Raises:
            ConfigError: something asked for that this predictor cannot give (`check_outputs`), or attention maps
                of an image that runs as sliding windows (each window has its own; they are not assembled).
        """
        self.check_outputs(probabilities=probabilities or confidence, attention=attention)
        tensor = self.preprocess(image)
        plan = self.plan(tensor.shape[-2], tensor.shape[-1])
        self.last_plan = plan
        recipe = self.recipe
        if plan.mode == "slide":
            if attention:
                raise ConfigError(f"attention maps are not assembled over sliding windows ({plan.describe()}); "
                                  "predict the whole image (no --slide / slide=False, a larger memory budget)")
            recipe = dataclasses.replace(recipe, mode="slide", crop_size=plan.crop_size, stride=plan.stride)
            if plan.automatic:
                self.log(plan.describe())
        forward = self._forward(recipe, keep_scale_outputs=attention)
        with self._eval_mode(), torch.inference_mode():
            result = predict_scores(forward, tensor, recipe, self.num_classes)
        prediction = Prediction(scores_to_labels(result.scores)[0].cpu().numpy(), plan=plan)
        if probabilities:
            prediction.probabilities = probabilities_of(result.scores, result.are_probabilities)[0].cpu().numpy()
        if confidence:
            prediction.confidence = confidence_of(result.scores, result.are_probabilities)[0].cpu().numpy()
        if attention and isinstance(result.output, SegmentationOutput):
            prediction.attention, prediction.scale_labels = scale_maps(result.output, 0)
        return prediction

    def check_outputs(self, *, probabilities: bool = False, attention: bool = False) -> None:
        """Refuse, before any image, what `predict` cannot give: probabilities (or confidence) of a labels-only
        export; attention maps of an exported graph, of a model without scale fusion, or at a single scale.

        Raises:
            ConfigError: naming what is missing and how to get it.
        """
        if probabilities and self.labels_only:
            raise ConfigError("this exported model outputs argmax class ids, which carry no probabilities; "
                              "export it again with `attnseg export ... --output softmax` (or logits)")
        if not attention:
            return
        if self.model is None:
            raise ConfigError("an exported model returns only its fused scores, no attention maps; "
                              "predict with the checkpoint (--backend torch)")
        if not fuses_scales(self.model):
            raise ConfigError(f"{type(unwrap_model(self.model)).__name__} does not fuse scales, so it has no attention "
                              "maps (MscaleOCR has)")
        if len(self.recipe.model_scales) < 2:
            raise ConfigError(f"the model runs at the single scale {list(self.recipe.model_scales)}, where no "
                              "attention is used; give two or more hierarchical scales, e.g. --scales 0.5,1.0")

    def _forward(self, recipe: InferenceRecipe, keep_scale_outputs: bool = False) -> LogitsFn:
        """`logits_fn`, or the model with the recipe's in-model scales bound (`model_forward`, which also refuses
        hierarchical scales for a model without fusion)."""
        if self.model is None:
            return self.logits_fn
        forward = model_forward(self.model, recipe, keep_scale_outputs)
        return forward if fuses_scales(self.model) else self.logits_fn

    def _eval_mode(self):
        return eval_mode(self.model) if self.model is not None else contextlib.nullcontext()

    def budget_bytes(self) -> int | None:
        """The memory budget now in force (``"auto"`` resolved against the current free memory)."""
        if self.max_memory_bytes == "auto":
            return default_memory_budget(self.device)
        return self.max_memory_bytes

    def memory_model(self) -> MemoryModel | None:
        """The fitted `MemoryModel` of this predictor's network and recipe (probed on first use); None without a
        torch model."""
        if self.model is None:
            return None
        if self._memory_model is None:
            window = _with_autocast(self._forward(self.recipe), self.device, self.recipe.precision)
            with eval_mode(self.model):
                self._memory_model = probe_memory_model(window, self.device, self.num_classes,
                                                        self.recipe.tta_scales, not self.recipe.single_pass)
        return self._memory_model

    def plan(self, height: int, width: int) -> InferencePlan:
        """Whole image or sliding windows for an image of `height` x `width` (see the module docstring).

        Raises:
            ConfigError: not even the smallest window fits the budget next to the full-size score maps.
        """
        budget = self.budget_bytes() if not (self.slide and self.crop_size) else None
        # Images so small that even UNPROBED_BYTES_PER_PIXEL fits need no probe (it costs two forward passes).
        pixels = height * width * max(self.recipe.tta_scales) ** 2
        small = budget is not None and not self.slide and pixels * UNPROBED_BYTES_PER_PIXEL <= budget
        memory = self.memory_model() if budget is not None and not small else None
        estimate = memory.whole_bytes(height, width) if memory is not None else None
        automatic = not self.slide and estimate is not None and estimate > budget
        if not (self.slide or automatic):
            return InferencePlan("whole", estimate_bytes=estimate, budget_bytes=budget)
        crop = self.crop_size
        if crop is None:
            side = MAX_AUTO_CROP if memory is None else memory.fitting_crop(height, width, budget)
            if side is None:
                raise ConfigError(
                    f"a {width}x{height} image needs about {format_bytes(memory.score_map_bytes(height, width, True))} "
                    f"for its full-size score maps alone, more than the memory budget {format_bytes(budget)} "
                    "(--max-memory / max_memory_bytes)"
                )
            crop = (min(side, MAX_AUTO_CROP), min(side, MAX_AUTO_CROP))
        stride = self.stride or default_stride(crop)
        if self.crop_size is None:  # a window chosen here may be smaller than the stride the caller gave
            stride = (min(stride[0], crop[0]), min(stride[1], crop[1]))
        return InferencePlan("slide", crop, stride, estimate, budget, automatic)

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB of a label map in the checkpoint's palette."""
        return colorize(labels, self.palette)

    def overlay(self, image: Any, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
        """(H, W, 3) uint8 RGB: `image` blended with the colours of `labels` (opacity `alpha`)."""
        return overlay(as_rgb_array(image), self.colorize(labels), alpha)


def _pair_or_none(value: Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ConfigError(f"{name} must be two positive integers (height, width), got {value!r}")
    return pair


def _default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
