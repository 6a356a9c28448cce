"""The experiment configuration schema: one frozen dataclass per section.

A YAML experiment file has the sections `model`, `data`, `train`, `eval` and `export`; every key it may
contain is a field below (`attnseg print-config CONFIG` shows the resolved values). Library code never reads
these objects: the CLI and the builders in `attnseg.config.build` turn them into explicit constructor arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from attnseg.data.statistics import IMAGENET_MEAN, IMAGENET_STD
from attnseg.errors import ConfigError
from attnseg.inference.scales import MAX_SIDE, check_hierarchical_scales, check_scales


class FieldError(ValueError):
    """A field's value is out of its range; `field` is the key, so the loader can name ``section.key``."""

    def __init__(self, field_name: str, value: Any, allowed: str):
        super().__init__(f"{field_name}={value!r}: {allowed}")
        self.field, self.value, self.allowed = field_name, value, allowed


def _check(ok: bool, field_name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise FieldError(field_name, value, allowed)


def _is_number_at_least(value: float, low: float) -> bool:
    """True for a finite number >= low (NaN and infinities fail every range here)."""
    return math.isfinite(value) and value >= low


def _check_counts(config: Any, minimums: dict[str, int]) -> None:
    for name, low in minimums.items():
        value = getattr(config, name)
        if value is not None:
            _check(value >= low, name, value, f"must be an integer >= {low}")


def _check_size(field_name: str, size: tuple[int, ...] | None) -> None:
    if size is None:
        return
    _check(min(size) > 0, field_name, size, "sizes must be positive")
    _check(max(size) <= MAX_SIDE, field_name, size,
           f"more than the {MAX_SIDE} px per side attnseg allows for one input")  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build and how to initialise it."""

    name: str = "mscale_ocr_hrnet_w18_small"
    num_classes: int = 19
    # Builder keyword arguments beyond num_classes (e.g. eval_scales for MscaleOCR); checked by the builder.
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Initialisation weights (ImageNet backbone, Mapillary-pretrained OCRNet, a released checkpoint); None = random.
    pretrained: str | None = None
    pretrained_source: Literal["auto", "native", "nvidia", "paddle", "semseg"] = "auto"

    def __post_init__(self) -> None:
        _check(self.num_classes >= 1, "num_classes", self.num_classes, "must be at least 1 (19 for Cityscapes)")


@dataclass(frozen=True)
class DataConfig:
    """Dataset, sampling and augmentation (see `attnseg.data.transforms` and `attnseg.data.sampling`)."""

    dataset: Literal["cityscapes", "mapillary", "folder"] = "cityscapes"
    root: str = "data/cityscapes"
    # Mapillary only: score the 19 Cityscapes trainIds (labels mapped) or Vistas' own 65 classes (NVIDIA's recipe).
    mapillary_classes: Literal["cityscapes", "vistas"] = "cityscapes"
    # Mapillary only: the label version (v2.0: labels under <split>/v2.0/labels, classes from config_v2.0.json).
    mapillary_version: Literal["v1.2", "v2.0"] = "v1.2"
    train_split: str = "train"
    val_split: str = "val"
    # Cityscapes only: NVIDIA's cross-validation split (--cv): 0 = the official cities; 1 and 2 move three train
    # cities to val and the val cities to train (see attnseg.data.cityscapes.split_cities).
    cv_split: Literal[0, 1, 2] = 0
    # Cityscapes only: train on train + val (PaddleSeg Cityscapes add_val), for test-server submissions.
    add_val: bool = False
    # Extra coarse data mixed into training: none, Cityscapes gtCoarse, or the autolabelled refinement_final set.
    coarse: Literal["none", "coarse", "autolabelled"] = "none"
    # "equal": every epoch all fine images plus `coarse_multiple` times as many coarse ones drawn anew (PaddleSeg
    # CityscapesSOTA); "all": the coarse images appended to the fine list; "boost": coarse images enter only as
    # class-uniform crops of `coarse_boost_classes` (NVIDIA sota recipe, needs class_uniform_fraction > 0).
    coarse_mix: Literal["equal", "all", "boost"] = "equal"
    coarse_multiple: float = 1.0  # PaddleSeg CityscapesAutolabeling coarse_multiple
    # Classes whose coarse centroids join the class-uniform pools ("boost"); empty = every class.
    coarse_boost_classes: tuple[int, ...] = ()
    # Stop using coarse images from this epoch on (NVIDIA max_cu_epoch); None = never.
    coarse_max_epoch: int | None = None
    # coarse: autolabelled only (NVIDIA sota recipe; applied per sample at load time, see attnseg.data.cityscapes):
    # ignore pixels whose refinement_final confidence map (*_leftImg8bit_prob.png) is below this (custom_coarse_prob);
    autolabel_min_confidence: float | None = None
    # trainIds given by the union of autolabel and gtCoarse where the autolabel has them (custom_coarse_dropout_classes)
    autolabel_gtcoarse_classes: tuple[int, ...] = ()
    # ignore the ego-car border, outside rows 15..839 / columns 14..2029 of 1024x2048 (mask_out_cityscapes).
    autolabel_mask_border: bool = False
    # Fraction of crops centred on a uniformly drawn class (NVIDIA class-uniform sampling); 0 disables it.
    class_uniform_fraction: float = 0.0
    class_uniform_tile: int = 1024  # NVIDIA class_uniform_tile: centroids are computed per tile of this side
    # Where class centroids are cached (keyed by the dataset's content); "" = <root>/.attnseg_cache.
    centroid_cache_dir: str = ""
    crop_size: tuple[int, int] = (512, 1024)  # (height, width)
    scale_range: tuple[float, float] = (0.5, 2.0)
    # 0 = scale drawn uniformly from scale_range; > 0 = one of min, min+step, ..., max (PaddleSeg default 0.25).
    scale_step: float = 0.0
    # Resize the image so that its longer side equals this before random scaling (0 keeps the size).
    pre_size: int = 0
    # Image interpolation of the random resize (labels always nearest): NVIDIA bicubic, PaddleSeg bilinear.
    resize_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    horizontal_flip: bool = True
    color_jitter: float = 0.0  # brightness/contrast/saturation strength, 0 disables
    hue_jitter: float = 0.0  # hue shift as a fraction of the colour circle (NVIDIA color_aug 0.25; Paddle 63/256)
    color_jitter_prob: float = 1.0  # per-adjustment probability (PaddleSeg RandomDistort default 0.5)
    gaussian_blur: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Image fill of the crop padding on 0-255 values; None = `mean` (0 after normalisation, as PaddleSeg's 127.5
    # with mean 0.5 is). NVIDIA pads with black (0, 0, 0).
    pad_value: tuple[float, float, float] | None = None
    ignore_index: int = 255
    num_workers: int = 2
    # Keep decoded training images and labels in memory (small data sets with num_workers 0; see PlannedDataset).
    cache_decoded: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.class_uniform_fraction <= 1.0:
            raise ValueError(f"class_uniform_fraction must be in [0, 1], got {self.class_uniform_fraction}")
        if self.scale_range[0] <= 0 or self.scale_range[0] > self.scale_range[1]:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {self.scale_range}")
        _check(self.mapillary_classes == "cityscapes" or self.dataset == "mapillary", "mapillary_classes",
               self.mapillary_classes, f"applies to data.dataset 'mapillary' only, not {self.dataset!r}")  # fmt: skip
        _check(self.mapillary_version == "v1.2" or self.dataset == "mapillary", "mapillary_version",
               self.mapillary_version, f"applies to data.dataset 'mapillary' only, not {self.dataset!r}")  # fmt: skip
        self._check_split_options()
        _check_size("crop_size", self.crop_size)
        _check_counts(self, {"num_workers": 0, "pre_size": 0, "class_uniform_tile": 1})
        _check(0 <= self.ignore_index <= 255, "ignore_index", self.ignore_index,
               "labels are 8-bit: must be in 0..255 (255 for Cityscapes)")  # fmt: skip
        _check(_is_number_at_least(self.scale_step, 0.0), "scale_step", self.scale_step, "must be a number >= 0")
        _check(_is_number_at_least(self.coarse_multiple, 0.0), "coarse_multiple", self.coarse_multiple,
               "must be a number >= 0")  # fmt: skip
        if not 0.0 <= self.hue_jitter <= 0.5:
            raise ValueError(f"hue_jitter is a fraction of the colour circle in [0, 0.5], got {self.hue_jitter}")
        uses_autolabel_options = (self.autolabel_min_confidence is not None or self.autolabel_gtcoarse_classes
                                  or self.autolabel_mask_border)
        if uses_autolabel_options and self.coarse != "autolabelled":
            raise ValueError("autolabel_min_confidence / autolabel_gtcoarse_classes / autolabel_mask_border apply to "
                             f"coarse 'autolabelled' only, not {self.coarse!r}")
        if self.autolabel_min_confidence is not None and not 0.0 <= self.autolabel_min_confidence <= 1.0:
            raise ValueError(f"autolabel_min_confidence must be in [0, 1], got {self.autolabel_min_confidence}")
        if self.coarse_mix == "boost" and self.coarse != "none" and self.class_uniform_fraction <= 0:
            raise ValueError("coarse_mix 'boost' adds coarse images only through class-uniform crops; "
                             "set class_uniform_fraction > 0")

    def _check_split_options(self) -> None:
        # bool is an int: YAML `cv_split: true` would otherwise pass the Literal check as 1.
        _check(type(self.cv_split) is int and self.cv_split in (0, 1, 2), "cv_split", self.cv_split,
               "must be 0, 1 or 2 (NVIDIA --cv)")  # fmt: skip
        _check(isinstance(self.add_val, bool), "add_val", self.add_val, "must be true or false")
        for name, default in (("cv_split", 0), ("add_val", False)):
            _check(getattr(self, name) == default or self.dataset == "cityscapes", name, getattr(self, name),
                   f"applies to data.dataset 'cityscapes' only, not {self.dataset!r}")  # fmt: skip
        _check(not (self.add_val and self.cv_split != 0), "add_val", self.add_val,
               f"trains on the official val cities too; it needs cv_split 0, not {self.cv_split}")
        _check(self.cv_split == 0 or (self.train_split, self.val_split) == ("train", "val"), "cv_split",
               self.cv_split, f"re-splits train and val; needs train_split 'train' and val_split 'val', not "
               f"{self.train_split!r} / {self.val_split!r}")  # fmt: skip
        _check(not self.add_val or self.train_split == "train", "add_val", self.add_val,
               f"adds val to train_split 'train', not {self.train_split!r}")  # fmt: skip


@dataclass(frozen=True)
class LossTermConfig:
    """One weighted loss term applied to one named model output."""

    # A field of SegmentationOutput: "logits", "aux_logits", "scale_logits[0.5]", ...
    output: str
    # A loss name known to attnseg.losses.build_loss ("cross_entropy", "rmi", "dice", ...).
    loss: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run control (see `attnseg.engine`)."""

    iters: int = 1000
    batch_size: int = 2  # per process; the global batch is batch_size x number of processes
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd: both references; adamw: from-scratch CPU runs (demo)
    lr: float = 0.01
    momentum: float = 0.9  # SGD only
    weight_decay: float = 1e-4
    no_decay_norm_and_bias: bool = False  # exempt norm scales/shifts and biases from weight decay
    poly_power: float = 0.9  # lr = (lr - end_lr) * (1 - iter / iters) ** poly_power + end_lr
    end_lr: float = 0.0
    warmup_iters: int = 0  # linear warm-up from warmup_start_factor * lr; 0 disables
    warmup_start_factor: float = 0.1
    # fp32; bf16 = autocast bfloat16 (CPU or CUDA); fp16 = autocast float16 + GradScaler (CUDA only); auto = what the
    # hardware runs natively (`attnseg.hardware.resolve_precision`: bf16 only with AVX-512 bf16 or AMX on CPU).
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"
    # Keep weights and activations NHWC: oneDNN (CPU) and cuDNN run their fast kernels without layout reorders
    # (measured with the demo's model on 2 CPU cores: 0.38 vs 0.47 s per fp32 step).
    channels_last: bool = True
    grad_clip_norm: float | None = None  # clip the global gradient norm; None = no clipping (both references)
    ema_decay: float | None = None  # EMA of the weights (evaluated and saved instead); None = off
    sync_bn: bool = True  # SyncBatchNorm when running on several processes
    losses: tuple[LossTermConfig, ...] = (LossTermConfig(output="logits", loss="cross_entropy"),)
    eval_interval: int = 500  # iterations between evaluations (0 = only at the end)
    save_interval: int = 500  # iterations between training-state checkpoints (0 = only at the end)
    log_interval: int = 20
    seed: int = 0
    # Deterministic algorithms and no cuDNN autotuning: bitwise-repeatable on CPU, slower on GPU.
    deterministic: bool = False
    out_dir: str = "runs/experiment"

    def __post_init__(self) -> None:
        _check_counts(self, {"iters": 1, "batch_size": 1, "warmup_iters": 0, "eval_interval": 0,
                             "save_interval": 0, "log_interval": 1})  # fmt: skip
        _check(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "must be a positive finite number")
        for name in ("weight_decay", "end_lr", "poly_power", "momentum"):
            _check(_is_number_at_least(getattr(self, name), 0.0), name, getattr(self, name),
                   "must be a finite number >= 0")  # fmt: skip
        _check(self.momentum < 1.0, "momentum", self.momentum, "must be below 1")
        _check(0.0 <= self.warmup_start_factor <= 1.0, "warmup_start_factor", self.warmup_start_factor,
               "must be in [0, 1]")  # fmt: skip
        if self.grad_clip_norm is not None:
            _check(math.isfinite(self.grad_clip_norm) and self.grad_clip_norm > 0, "grad_clip_norm",
                   self.grad_clip_norm, "must be a positive finite number, or null for no clipping")  # fmt: skip
        if self.ema_decay is not None:
            _check(0.0 <= self.ema_decay < 1.0, "ema_decay", self.ema_decay, "must be in [0, 1), or null for no EMA")


@dataclass(frozen=True)
class EvalConfig:
    """How a split is evaluated."""

    split: str = "val"
    # Scales of test-time inference; 1.0 must be among them for MscaleOCR's hierarchical fusion.
    scales: tuple[float, ...] = (1.0,)
    # "hierarchical": MscaleOCR's learned attention fusion (inside the model); "average": mean of softmax over
    # scales (PaddleSeg aug_eval, any model).
    multi_scale: Literal["hierarchical", "average"] = "hierarchical"
    flip: bool = False
    # How flipped / averaged passes combine: "softmax" = mean of probabilities (PaddleSeg <= 2.7, which gave the
    # published 86.99 / 87.00); "logits" = mean of logits (NVIDIA eval_minibatch, PaddleSeg 2.8).
    fusion: Literal["softmax", "logits"] = "softmax"
    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None  # sliding window (height, width)
    stride: tuple[int, int] | None = None
    batch_size: int = 1
    num_workers: int = 2
    # auto: see TrainConfig.precision; fp16 = float16 autocast, CUDA only (NVIDIA's Mapillary evaluation on 32 GB).
    precision: Literal["fp32", "bf16", "fp16", "auto"] = "fp32"

    def __post_init__(self) -> None:
        try:
            check_scales(tuple(self.scales))
            if self.multi_scale == "hierarchical":
                check_hierarchical_scales(tuple(self.scales))
        except ConfigError as error:
            raise FieldError("scales", list(self.scales), str(error)) from None
        _check_counts(self, {"batch_size": 1, "num_workers": 0})
        _check_size("crop_size", self.crop_size)
        _check_size("stride", self.stride)
        if self.crop_size is not None and self.stride is not None:
            _check(all(s <= c for s, c in zip(self.stride, self.crop_size)), "stride", self.stride,
                   f"must not exceed crop_size {self.crop_size} (windows would leave pixels unpredicted)")


@dataclass(frozen=True)
class ExportConfig:
    """Export for deployment."""

    format: Literal["onnx", "openvino"] = "onnx"
    # (N, C, H, W) the graph is made for. A static export traces at this size (1024x2048 takes 15-19 GB of RAM);
    # with `dynamic` the graph is traced small with symbolic batch/height/width and this is only the typical shape.
    input_shape: tuple[int, int, int, int] = (1, 3, 1024, 2048)
    dynamic: bool = False
    # "argmax" = uint8 class ids (N, H, W); "logits" / "softmax" = (N, K, H, W) float32.
    output: Literal["logits", "softmax", "argmax"] = "argmax"
    opset: int = 17
    # Scales fused inside the graph (MscaleOCR hierarchical attention); None = the model's eval_scales.
    scales: tuple[float, ...] | None = None
    # OpenVINO inference precision hint recorded in the sidecar (OpenVINO picks bf16 on AMX CPUs unless told); auto:
    # bf16 where this CPU runs it natively, else fp32 (OpenVINO's bf16 hint compiles to fp32 there anyway).
    precision: Literal["fp32", "bf16", "auto"] = "fp32"

    def __post_init__(self) -> None:
        _check_size("input_shape", self.input_shape)
        _check(self.opset >= 7, "opset", self.opset, "ONNX opsets start at 7 (default 17)")
        if self.scales is not None:
            try:
                check_scales(tuple(self.scales))
            except ConfigError as error:
                raise FieldError("scales", list(self.scales), str(error)) from None


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: what `attnseg train/eval/export CONFIG` reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
