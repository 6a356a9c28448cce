"""Joint image/label training transforms (OpenCV + NumPy) and the crop arithmetic behind them.

A sample is a dict with ``image`` (H x W x 3 uint8 RGB) and ``label`` (H x W uint8 trainIds), optionally
``centroid`` ((y, x) in pixels: a point the crop must contain, for class-uniform sampling). Every transform is
called as ``transform(sample, rng)`` with a ``numpy.random.Generator``; all randomness comes from that generator,
so a sample's augmentation depends only on the seed the sampler gave it (not on worker count or process).

Geometry follows NVIDIA's ``RandomSizeAndCrop`` and PaddleSeg's ``ResizeStepScaling`` + ``RandomPaddingCrop``:
random scale, then pad (image with a constant, label with the ignore index) up to the crop size, then a random
crop (one that contains the centroid when there is one). Labels are always resized with nearest neighbour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import cv2
import numpy as np
import torch

Sample = dict[str, Any]

_INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


class Transform(Protocol):
    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample: ...


# ----------------------------------------------------------------------------------------------------------------
# Pure crop geometry
# ----------------------------------------------------------------------------------------------------------------


def floored_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Size after scaling by `scale`, floored like NVIDIA's ``int(size * scale)``, at least 1 pixel (the training
    transforms' rule)."""
    return max(1, int(height * scale)), max(1, int(width * scale))


def padding_to_crop(height: int, width: int, crop_height: int, crop_width: int) -> tuple[int, int]:
    """(bottom, right) padding that makes an image at least as large as the crop; zero when it already is."""
    return max(crop_height - height, 0), max(crop_width - width, 0)


def random_crop_start(length: int, crop: int, rng: np.random.Generator) -> int:
    """Uniform start of a `crop`-long window inside `length` (needs ``length >= crop``)."""
    if crop > length:
        raise ValueError(f"crop {crop} is longer than the side {length}; pad first")
    return int(rng.integers(0, length - crop + 1))


def crop_start_containing(length: int, crop: int, point: int, rng: np.random.Generator) -> int:
    """Start of a `crop`-long window inside `length` that contains `point`, drawn uniformly then clamped.

    Like NVIDIA's class-uniform crop: the start is drawn uniformly from the starts whose window covers the point,
    ``[point - crop + 1, point]`` (NVIDIA's ``randint(c - crop, c)`` includes one start that misses it by a
    pixel), then clamped into ``[0, length - crop]`` so the window lies inside the image.
    """
    if crop > length:
        raise ValueError(f"crop {crop} is longer than the side {length}; pad first")
    start = int(rng.integers(point - crop + 1, point + 1))
    return min(max(start, 0), length - crop)


def step_scales(scale_min: float, scale_max: float, step: float) -> list[float]:
    """The discrete scales PaddleSeg's ``ResizeStepScaling`` picks from: min, min + step, ... up to max."""
    if step <= 0:
        raise ValueError("step must be positive for discrete scales")
    count = int(math.floor((scale_max - scale_min) / step + 1e-9)) + 1
    return [scale_min + i * step for i in range(count)]


# ----------------------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------------------


class Compose:
    """Applies transforms in order, threading the same generator through them."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


class RandomScale:
    """Resizes image and label by a random factor (and the centroid with them).

    Args:
        scale_range: (min, max) factor; equal values give a fixed scale.
        step: 0 draws the factor uniformly (NVIDIA, PaddleSeg ``scale_step_size: 0``); > 0 draws one of the
            discrete factors ``min, min + step, ..., max`` (PaddleSeg's default 0.25).
        pre_size: when > 0, the image is first brought to this longer side (NVIDIA ``pre_size``), the factor
            multiplying that pre-scale.
        interpolation: image interpolation; NVIDIA uses bicubic, PaddleSeg bilinear. Labels use nearest.
    """

    def __init__(self, scale_range: tuple[float, float] = (0.5, 2.0), step: float = 0.0, pre_size: int = 0,
                 interpolation: Literal["bilinear", "bicubic"] = "bilinear"):
        self.scale_range = scale_range
        self.step = step
        self.pre_size = pre_size
        self.interpolation = _INTERPOLATION[interpolation]
        self._choices = step_scales(*scale_range, step) if step > 0 else None

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        low, high = self.scale_range
        if self._choices is not None:
            scale = float(self._choices[int(rng.integers(len(self._choices)))])
        else:
            scale = float(rng.uniform(low, high)) if high > low else float(low)
        image, label = sample["image"], sample["label"]
        if self.pre_size > 0:
            scale *= self.pre_size / max(image.shape[:2])
        height, width = floored_size(image.shape[0], image.shape[1], scale)
        if (height, width) == image.shape[:2]:
            return sample
        out = dict(sample)
        out["image"] = cv2.resize(image, (width, height), interpolation=self.interpolation)
        out["label"] = cv2.resize(label, (width, height), interpolation=cv2.INTER_NEAREST)
        if sample.get("centroid") is not None:
            out["centroid"] = (int(sample["centroid"][0] * scale), int(sample["centroid"][1] * scale))
        return out


class RandomCrop:
    """Pads up to `crop_size` (image with `pad_value`, label with `ignore_index`, at the bottom/right, as
    PaddleSeg's ``RandomPaddingCrop``) and takes a random crop; with a centroid, a crop containing it.

    Args:
        crop_size: (height, width).
        pad_value: image fill per channel, in 0-255 (the normalisation mean makes padded pixels 0 after
            normalising; PaddleSeg uses 127.5 with mean 0.5, NVIDIA 0).
        ignore_index: label fill.
    """

    def __init__(self, crop_size: tuple[int, int], pad_value: Sequence[float] = (0.0, 0.0, 0.0),
                 ignore_index: int = 255):
        self.crop_size = tuple(crop_size)
        self.pad_value = tuple(float(v) for v in pad_value)
        self.ignore_index = ignore_index

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image, label = sample["image"], sample["label"]
        crop_h, crop_w = self.crop_size
        pad_bottom, pad_right = padding_to_crop(image.shape[0], image.shape[1], crop_h, crop_w)
        if pad_bottom or pad_right:
            image = cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, cv2.BORDER_CONSTANT, value=self.pad_value)
            label = cv2.copyMakeBorder(label, 0, pad_bottom, 0, pad_right, cv2.BORDER_CONSTANT,
                                       value=self.ignore_index)
        height, width = label.shape
        centroid = sample.get("centroid")
        if centroid is not None:
            top = crop_start_containing(height, crop_h, int(centroid[0]), rng)
            left = crop_start_containing(width, crop_w, int(centroid[1]), rng)
        else:
            top = random_crop_start(height, crop_h, rng)
            left = random_crop_start(width, crop_w, rng)
        out = dict(sample)
        out["image"] = np.ascontiguousarray(image[top:top + crop_h, left:left + crop_w])
        out["label"] = np.ascontiguousarray(label[top:top + crop_h, left:left + crop_w])
        out.pop("centroid", None)
        return out


class RandomHorizontalFlip:
    """Mirrors image and label left-right with probability `prob`."""

    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        out = dict(sample)
        out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
        out["label"] = np.ascontiguousarray(sample["label"][:, ::-1])
        if sample.get("centroid") is not None:
            out["centroid"] = (sample["centroid"][0], sample["label"].shape[1] - 1 - sample["centroid"][1])
        return out


class ColorJitter:
    """Random brightness, contrast, saturation and hue on the image (the label is untouched).

    Each enabled adjustment is applied with probability `prob`, in a random order (PaddleSeg ``RandomDistort``;
    NVIDIA's torchvision-style jitter is ``prob=1``). Factors are drawn from ``[1 - s, 1 + s]``; the hue shift
    from ``[-hue, hue]`` as a fraction of the colour circle (PaddleSeg's ``hue_range: 63`` on the 0-255 PIL
    hue scale is 63 / 256 ~ 0.25; its default 18 is ~0.07).
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0,
                 prob: float = 1.0):
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (fraction of the colour circle), got {hue}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        ops = [name for name in ("brightness", "contrast", "saturation", "hue") if getattr(self, name) > 0]
        if not ops:
            return sample
        image = sample["image"].astype(np.float32)
        for index in rng.permutation(len(ops)):
            name = ops[index]
            if rng.random() >= self.prob:
                continue
            strength = getattr(self, name)
            if name == "hue":
                image = _shift_hue(image, float(rng.uniform(-strength, strength)))
                continue
            factor = float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))
            if name == "brightness":
                image = image * factor
            elif name == "contrast":
                image = _blend(image, float(_gray(image).mean()), factor)
            else:
                image = _blend(image, _gray(image)[..., None], factor)
            image = np.clip(image, 0.0, 255.0)
        out = dict(sample)
        out["image"] = np.clip(image + 0.5, 0, 255).astype(np.uint8)
        return out


def _gray(image: np.ndarray) -> np.ndarray:
    return image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114


def _blend(image: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    return other + factor * (image - other)


def _shift_hue(image: np.ndarray, shift: float) -> np.ndarray:
    hsv = cv2.cvtColor(np.clip(image, 0, 255).astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # H in [0, 360)
    hsv[..., 0] = np.mod(hsv[..., 0] + shift * 360.0, 360.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0


class GaussianBlur:
    """Blurs the image with sigma drawn from `sigma_range` (NVIDIA ``--gblur``: 0.15 + U(0, 1.15)), with
    probability `prob` (NVIDIA blurs every image)."""

    def __init__(self, sigma_range: tuple[float, float] = (0.15, 1.3), prob: float = 1.0):
        self.sigma_range = sigma_range
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        sigma = float(rng.uniform(*self.sigma_range))
        out = dict(sample)
        out["image"] = cv2.GaussianBlur(sample["image"], (0, 0), sigmaX=sigma, sigmaY=sigma)
        return out


class NormalizeToTensor:
    """uint8 HWC RGB -> float32 CHW tensor ``(x - mean) / std`` (0-255 statistics); label -> int64 tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.inv_std = 1.0 / np.asarray(std, dtype=np.float32)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        image = (sample["image"].astype(np.float32) - self.mean) * self.inv_std
        out = dict(sample)
        out["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out["label"] = torch.from_numpy(np.ascontiguousarray(sample["label"]).astype(np.int64))
        out.pop("centroid", None)
        return out


def build_train_transform(
    *,
    crop_size: tuple[int, int],
    scale_range: tuple[float, float] = (0.5, 2.0),
    scale_step: float = 0.0,
    pre_size: int = 0,
    interpolation: Literal["bilinear", "bicubic"] = "bilinear",
    horizontal_flip: bool = True,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    color_prob: float = 1.0,
    gaussian_blur: bool = False,
    mean: Sequence[float] = (123.675, 116.28, 103.53),
    std: Sequence[float] = (58.395, 57.12, 57.375),
    pad_value: Sequence[float] | None = None,
    ignore_index: int = 255,
) -> Compose:
    """The standard training pipeline: scale, pad + crop, flip, colour, blur, normalise.

    `pad_value` None pads the image with `mean` (zero after normalisation).
    """
    transforms: list[Transform] = [
        RandomScale(scale_range, step=scale_step, pre_size=pre_size, interpolation=interpolation),
        RandomCrop(crop_size, pad_value=mean if pad_value is None else pad_value, ignore_index=ignore_index),
    ]
    if horizontal_flip:
        transforms.append(RandomHorizontalFlip())
    if max(brightness, contrast, saturation, hue) > 0:
        transforms.append(ColorJitter(brightness, contrast, saturation, hue, prob=color_prob))
    if gaussian_blur:
        transforms.append(GaussianBlur())
    transforms.append(NormalizeToTensor(mean, std))
    return Compose(transforms)
