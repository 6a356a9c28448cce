"""Image pre-processing for inference: any decoded image -> RGB uint8 -> normalised float tensor.

Kept in one place so that evaluation, `Predictor` and `attnseg predict` feed a network exactly the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """An (H, W, 3) uint8 RGB view of a grayscale (H, W) / (H, W, 1), RGB or RGBA (alpha dropped) image.

    Integer images of another depth (16-bit PNG) are scaled down to 8 bits; float images are taken as 0-1.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def normalize_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(3, H, W) float32 tensor ``(pixel - mean) / std`` of an (H, W, 3) uint8 RGB image (mean/std on 0-255)."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on read-only memory
        image = image.copy()
    tensor = torch.from_numpy(image).permute(2, 0, 1).float()
    return tensor.sub_(mean_t).div_(std_t)


def denormalize_image(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Inverse of `normalize_image`: (3, H, W) tensor -> (H, W, 3) uint8 RGB."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=tensor.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=tensor.device).view(3, 1, 1)
    image = (tensor.float() * std_t + mean_t).round_().clamp_(0, 255).to(torch.uint8)
    return image.permute(1, 2, 0).cpu().numpy()
