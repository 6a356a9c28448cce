"""Sliding-window inference: run a network on overlapping crops and average the logits where crops overlap.

The window grid follows PaddleSeg's ``slide_inference`` and mmsegmentation's ``EncoderDecoder.slide_inference``:
``ceil((size - crop) / stride) + 1`` windows per axis at multiples of the stride, the last one shifted back so
that it ends at the image border (for a 256-wide image, crop 128 and stride 96: x = 0, 96, 128). An image
smaller than the crop is one window covering the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from attnseg.models.outputs import SegmentationOutput, logits_of

LogitsFn = Callable[[torch.Tensor], torch.Tensor | SegmentationOutput]


def window_starts(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) of every window along one axis.

    Args:
        length: image side in pixels.
        crop: window side.
        stride: distance between the starts of neighbouring windows; at most `crop`, or pixels would be missed.

    >>> window_starts(256, 128, 96)
    [(0, 128), (96, 224), (128, 256)]
    """
    if length < 1 or crop < 1 or stride < 1:
        raise ValueError(f"length, crop and stride must be positive, got {length}, {crop}, {stride}")
    if stride > crop:
        raise ValueError(
            f"stride {stride} is larger than the crop {crop}: pixels between windows would get no prediction"
        )
    if length <= crop:
        return [(0, length)]
    count = math.ceil((length - crop) / stride) + 1
    windows = []
    for index in range(count):
        end = min(index * stride + crop, length)
        windows.append((max(end - crop, 0), end))
    return windows


def window_grid(
    height: int, width: int, crop_size: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Every window as (top, bottom, left, right), row by row.

    Args:
        height, width: image size.
        crop_size: window (height, width).
        stride: (vertical, horizontal) stride.
    """
    rows = window_starts(height, crop_size[0], stride[0])
    cols = window_starts(width, crop_size[1], stride[1])
    return [(top, bottom, left, right) for top, bottom in rows for left, right in cols]


def slide_inference(
    fn: LogitsFn,
    image: torch.Tensor,
    crop_size: tuple[int, int],
    stride: tuple[int, int],
    num_classes: int,
) -> torch.Tensor:
    """Logits of `image` assembled from overlapping windows, averaged where windows overlap.

    Args:
        fn: maps an (N, C, h, w) crop to (N, num_classes, h, w) logits (a tensor or a `SegmentationOutput`).
        image: (N, C, H, W) normalised images.
        crop_size: window (height, width). Note: PaddleSeg configs write (width, height).
        stride: (vertical, horizontal) stride, each at most the crop side.
        num_classes: channels `fn` must return.

    Returns:
        (N, num_classes, H, W) float32 logits.
    """
    batch, _, height, width = image.shape
    total = None
    count = torch.zeros(1, 1, height, width, dtype=torch.float32, device=image.device)
    for top, bottom, left, right in window_grid(height, width, crop_size, stride):
        logits = logits_of(fn(image[:, :, top:bottom, left:right]))
        expected = (batch, num_classes, bottom - top, right - left)
        if tuple(logits.shape) != expected:
            raise ValueError(f"window logits have shape {tuple(logits.shape)}, expected {expected}")
        if total is None:
            total = torch.zeros(batch, num_classes, height, width, dtype=torch.float32, device=logits.device)
        total[:, :, top:bottom, left:right] += logits.float()
        count[:, :, top:bottom, left:right] += 1
    return total / count.to(total.device)
