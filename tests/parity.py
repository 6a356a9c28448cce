"""Shared helpers for parity tests against the reference measurements in `tests/reference/`.

The reference folders hold key layouts of the released checkpoints and golden outputs measured by running
the original implementations on CPU. A parity test fills a reference-layout state dict with the
deterministic rule below, converts it with our converter, loads it strictly, runs the input recipe and
compares with the golden arrays.

Two fill rules exist because the two measurement campaigns used different ones:
- NVIDIA (torch): per key, ``torch.Generator().manual_seed(seed)``; conv tensors 0.02 * randn.
- Paddle (numpy): per key, ``numpy.random.default_rng(seed)``; conv weights fan-in scaled by a per-model gain.
In both, ``seed = int(sha256(key).hexdigest()[:8], 16)`` of the source checkpoint's own key (without any
``module.`` prefix).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch

REFERENCE_DIR = Path(__file__).parent / "reference"
NVIDIA_DIR = REFERENCE_DIR / "nvidia"
PADDLE_DIR = REFERENCE_DIR / "paddle"

NUM_CLASSES = 19
IGNORE_INDEX = 255
PADDLE_GAIN = {"mscale_ocrnet": 0.8, "psanet": 1.0}


def key_seed(key: str) -> int:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16)


# --------------------------------------------------------------------------------------------------------
# NVIDIA rule (torch generators)
# --------------------------------------------------------------------------------------------------------
def nvidia_reference_entries() -> list[dict]:
    """The released NVIDIA MscaleOCR checkpoint layout: dicts with key, checkpoint_key, shape, kind..."""
    return json.loads((NVIDIA_DIR / "mscale_ocr_keys.json").read_text())["entries"]


def nvidia_fill_tensor(key: str, shape: tuple[int, ...], bn_prefixes: set[str]) -> torch.Tensor | None:
    key = key.removeprefix("module.")
    prefix, leaf = key.rsplit(".", 1)
    if leaf == "num_batches_tracked":
        return None
    generator = torch.Generator().manual_seed(key_seed(key))
    if leaf == "running_mean":
        return 0.1 * torch.randn(shape, generator=generator)
    if leaf == "running_var":
        return 1.0 + 0.5 * torch.rand(shape, generator=generator)
    if prefix in bn_prefixes and leaf == "weight":
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if prefix in bn_prefixes and leaf == "bias":
        return 0.1 * torch.randn(shape, generator=generator)
    return 0.02 * torch.randn(shape, generator=generator)


def nvidia_filled_checkpoint() -> dict[str, torch.Tensor]:
    """A state dict in the released NVIDIA `.pth` layout (keys with ``module.``), filled by the rule."""
    entries = nvidia_reference_entries()
    bn_prefixes = {e["key"].rsplit(".", 1)[0] for e in entries if e["key"].endswith(".running_var")}
    state = {}
    for entry in entries:
        shape = tuple(entry["shape"])
        value = nvidia_fill_tensor(entry["key"], shape, bn_prefixes)
        state[entry["checkpoint_key"]] = torch.zeros(shape, dtype=torch.long) if value is None else value
    return state


def nvidia_golden() -> dict[str, np.ndarray]:
    with np.load(NVIDIA_DIR / "golden_mscale_ocr.npz") as data:
        return {name: data[name] for name in data.files}


def nvidia_image() -> torch.Tensor:
    return torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(0))


def nvidia_odd_image() -> torch.Tensor:
    return torch.randn(1, 3, 67, 131, generator=torch.Generator().manual_seed(5))


def blocky_labels(generator: torch.Generator, n: int, h: int, w: int, block: int = 8) -> torch.Tensor:
    coarse = torch.randint(0, NUM_CLASSES, (n, h // block, w // block), generator=generator)
    labels = coarse.repeat_interleave(block, dim=1).repeat_interleave(block, dim=2).clone()
    labels[torch.rand(n, h, w, generator=generator) < 0.1] = IGNORE_INDEX
    return labels.long()


def nvidia_label() -> torch.Tensor:
    return blocky_labels(torch.Generator().manual_seed(1), 1, 64, 128)


def nvidia_train_b_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.randn(2, 3, 128, 256, generator=torch.Generator().manual_seed(10))
    return image, blocky_labels(torch.Generator().manual_seed(11), 2, 128, 256)


def nvidia_loss_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-alone loss case: logits (2, 19, 64, 64) and labels (2, 64, 64) from one seed-1234 generator."""
    generator = torch.Generator().manual_seed(1234)
    coarse = torch.randint(0, NUM_CLASSES, (2, 8, 8), generator=generator)
    clean = coarse.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
    onehot = torch.nn.functional.one_hot(clean, NUM_CLASSES).permute(0, 3, 1, 2).float()
    logits = 2.0 * torch.randn(2, NUM_CLASSES, 64, 64, generator=generator) + 3.0 * onehot
    labels = clean.clone()
    labels[torch.rand(2, 64, 64, generator=generator) < 0.1] = IGNORE_INDEX
    return logits.contiguous(), labels.long()


def nvidia_comb_image() -> torch.Tensor:
    return torch.randn(1, 3, 35, 51, generator=torch.Generator().manual_seed(7))


def nvidia_comb_label() -> torch.Tensor:
    generator = torch.Generator().manual_seed(8)
    coarse = torch.randint(0, NUM_CLASSES, (1, 7, 10), generator=generator)
    labels = coarse.repeat_interleave(5, dim=1).repeat_interleave(5, dim=2)
    labels = torch.cat([labels, labels[:, :, -1:]], dim=2).clone()
    labels[torch.rand(1, 35, 51, generator=generator) < 0.1] = IGNORE_INDEX
    return labels.long()


def nvidia_fake_scale_forward(image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The synthetic per-scale network of the combination golden: fixed linear maps of the pixels."""
    generator = torch.Generator().manual_seed(100)
    w_cls = torch.randn(NUM_CLASSES, 3, generator=generator)
    w_aux = torch.randn(NUM_CLASSES, 3, generator=generator)
    w_att = torch.randn(1, 3, generator=generator)
    image = image.to(torch.float32)
    return {
        "cls_out": torch.einsum("kc,nchw->nkhw", w_cls, image),
        "aux_out": torch.einsum("kc,nchw->nkhw", w_aux, image),
        "logit_attn": torch.sigmoid(2.0 * torch.einsum("kc,nchw->nkhw", w_att, image)),
    }


# --------------------------------------------------------------------------------------------------------
# Paddle rule (numpy generators)
# --------------------------------------------------------------------------------------------------------
def paddle_reference_keys(model: str) -> list[tuple[str, tuple[int, ...]]]:
    """(paddle key, shape) of a released `.pdparams`; model is ``"mscale_ocrnet"`` or ``"psanet"``."""
    data = json.loads((PADDLE_DIR / f"{model}_keys.json").read_text())
    return [(key, tuple(int(s) for s in shape)) for key, shape, *_ in data["keys"]]


def paddle_fill_array(key: str, shape: tuple[int, ...], all_keys: set[str], gain: float) -> np.ndarray:
    generator = np.random.default_rng(key_seed(key))
    is_bn = key.rsplit(".", 1)[0] + "._mean" in all_keys
    if key.endswith("._mean"):
        value = 0.1 * generator.standard_normal(shape)
    elif key.endswith("._variance"):
        value = 1.0 + 0.5 * generator.random(shape)
    elif is_bn and key.endswith(".weight"):
        value = 1.0 + 0.1 * generator.standard_normal(shape)
    elif is_bn and key.endswith(".bias"):
        value = 0.1 * generator.standard_normal(shape)
    elif len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        value = generator.standard_normal(shape) * (gain / math.sqrt(fan_in))
    else:
        value = 0.02 * generator.standard_normal(shape)
    return value.astype(np.float32)


def paddle_filled_checkpoint(model: str) -> dict[str, np.ndarray]:
    """A state dict in the released `.pdparams` layout (numpy arrays, paddle key names), filled by the rule."""
    keys = paddle_reference_keys(model)
    all_keys = {key for key, _ in keys}
    return {key: paddle_fill_array(key, shape, all_keys, PADDLE_GAIN[model]) for key, shape in keys}


def paddle_golden(name: str) -> dict[str, np.ndarray]:
    """Arrays of `tests/reference/paddle/<name>.npz` (``mscale_ocrnet``, ``psanet``, ``losses_metrics``)."""
    with np.load(PADDLE_DIR / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}


def paddle_image(height: int = 128, width: int = 256) -> torch.Tensor:
    x = np.random.default_rng(0).standard_normal((1, 3, height, width)).astype(np.float32)
    return torch.from_numpy(x)


def paddle_train_labels() -> torch.Tensor:
    generator = np.random.default_rng(30)
    labels = generator.integers(0, NUM_CLASSES, (1, 128, 256))
    labels[generator.random(labels.shape) < 0.15] = IGNORE_INDEX
    return torch.from_numpy(labels).long()


# --------------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------------
def assert_close_to_golden(ours, golden, rel: float = 1e-4, name: str = "") -> None:
    """max|ours - golden| <= rel * max|golden| (the references' stated tolerance for fp32 outputs)."""
    ours = ours.detach().cpu().double().numpy() if torch.is_tensor(ours) else np.asarray(ours, dtype=np.float64)
    golden = np.asarray(golden, dtype=np.float64)
    assert ours.shape == golden.shape, f"{name}: shape {ours.shape} != golden {golden.shape}"
    error = float(np.abs(ours - golden).max()) if golden.size else 0.0
    allowed = rel * float(np.abs(golden).max())
    assert error <= allowed, f"{name}: max|diff| {error:.3e} > allowed {allowed:.3e}"


def assert_argmax_agrees(ours, golden, min_fraction: float = 0.999, name: str = "") -> None:
    ours = ours.detach().cpu().numpy() if torch.is_tensor(ours) else np.asarray(ours)
    golden = np.asarray(golden)
    assert ours.shape == golden.shape, f"{name}: shape {ours.shape} != golden {golden.shape}"
    agreement = float((ours.astype(np.int64) == golden.astype(np.int64)).mean())
    assert agreement >= min_fraction, f"{name}: argmax agreement {agreement:.5f} < {min_fraction}"
