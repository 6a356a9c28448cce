"""The experiment configuration schema: one frozen dataclass per section.

A YAML experiment file has the sections `model`, `data`, `train`, `eval` and `export`; every key it may
contain is a field below (`attnseg print-config CONFIG` shows the resolved values). Library code never reads
these objects: the CLI and the builders in `attnseg.config.build` turn them into explicit constructor arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# ImageNet statistics in 0-255 RGB, what the NVIDIA reference normalises with.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


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


@dataclass(frozen=True)
class DataConfig:
    """Dataset, sampling and augmentation."""

    dataset: Literal["cityscapes", "mapillary", "folder"] = "cityscapes"
    root: str = "data/cityscapes"
    train_split: str = "train"
    val_split: str = "val"
    # Extra coarse data mixed into training: none, Cityscapes gtCoarse, or the autolabelled refinement_final set.
    coarse: Literal["none", "coarse", "autolabelled"] = "none"
    # "equal": every epoch all fine images plus an equal number of coarse ones drawn anew (PaddleSeg CityscapesSOTA);
    # "all": the coarse images are simply appended to the fine list (NVIDIA).
    coarse_mix: Literal["equal", "all"] = "equal"
    # Fraction of crops centred on a uniformly drawn class (NVIDIA class-uniform sampling); 0 disables it.
    class_uniform_fraction: float = 0.0
    class_uniform_tile: int = 1024
    crop_size: tuple[int, int] = (512, 1024)  # (height, width)
    scale_range: tuple[float, float] = (0.5, 2.0)
    # Resize the image so that its longer side equals this before random scaling (0 keeps the size).
    pre_size: int = 0
    horizontal_flip: bool = True
    color_jitter: float = 0.0  # brightness/contrast/saturation strength, 0 disables
    gaussian_blur: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ignore_index: int = 255
    num_workers: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.class_uniform_fraction <= 1.0:
            raise ValueError(f"class_uniform_fraction must be in [0, 1], got {self.class_uniform_fraction}")
        if self.scale_range[0] <= 0 or self.scale_range[0] > self.scale_range[1]:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {self.scale_range}")


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
    """Optimisation and run control."""

    iters: int = 1000
    batch_size: int = 2  # per process
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_start_factor: float = 0.1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_clip_norm: float | None = None
    ema_decay: float | None = None
    sync_bn: bool = True
    losses: tuple[LossTermConfig, ...] = (LossTermConfig(output="logits", loss="cross_entropy"),)
    eval_interval: int = 500
    save_interval: int = 500
    log_interval: int = 20
    seed: int = 0
    deterministic: bool = False
    out_dir: str = "runs/experiment"

    def __post_init__(self) -> None:
        if self.iters <= 0 or self.batch_size <= 0:
            raise ValueError("iters and batch_size must be positive")


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
    mode: Literal["whole", "slide"] = "whole"
    crop_size: tuple[int, int] | None = None  # sliding window (height, width)
    stride: tuple[int, int] | None = None
    batch_size: int = 1
    num_workers: int = 2
    precision: Literal["fp32", "bf16"] = "fp32"


@dataclass(frozen=True)
class ExportConfig:
    """Export for deployment."""

    format: Literal["onnx", "openvino"] = "onnx"
    input_shape: tuple[int, int, int, int] = (1, 3, 1024, 2048)
    dynamic: bool = False
    output: Literal["logits", "softmax", "argmax"] = "argmax"
    opset: int = 17


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: what `attnseg train/eval/export CONFIG` reads."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
