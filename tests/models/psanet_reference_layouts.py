"""Stand-ins for the reference implementations that PSANet tests and benchmarks compare against.

- `psa_mask_loop`: the psamask op written the way `psamask.cc` / semseg's `psamask.cpp` do it, one pixel at a
  time (the window row/column ranges per pixel vectorised, nothing else).
- `semseg_resnet_layout` / `semseg_psanet_layout`: key -> shape of hszhao/semseg checkpoints, written from
  their module code (`model/resnet.py` deep_base ResNet, `model/psanet.py` PSANet built in training mode, so
  it has ``aux``; saved from DataParallel, hence ``module.``).
"""

from __future__ import annotations

import torch


def psa_mask_loop(x: torch.Tensor, mode: int, mask_size: tuple[int, int]) -> torch.Tensor:
    """Reference psamask: for every pixel p, copy the in-grid part of its window into the (N, H*W, H, W) map."""
    mask_h, mask_w = mask_size
    half_h, half_w = mask_h // 2, mask_w // 2
    n, _, height, width = x.shape
    window = x.reshape(n, mask_h, mask_w, height, width)
    out = x.new_zeros(n, height, width, height, width)  # (n, channel-grid h, w, spatial h, w)
    for h in range(height):
        for w in range(width):
            h_start, h_end = max(0, half_h - h), min(mask_h, height + half_h - h)
            w_start, w_end = max(0, half_w - w), min(mask_w, width + half_w - w)
            q_h = slice(h_start + h - half_h, h_end + h - half_h)
            q_w = slice(w_start + w - half_w, w_end + w - half_w)
            cells = window[:, h_start:h_end, w_start:w_end, h, w]
            if mode == 0:
                out[:, q_h, q_w, h, w] = cells
            else:
                out[:, h, w, q_h, q_w] = cells
    return out.reshape(n, height * width, height, width)


def _conv(keys: dict, name: str, out_ch: int, in_ch: int, kernel: int, bias: bool = False) -> None:
    keys[f"{name}.weight"] = (out_ch, in_ch, kernel, kernel)
    if bias:
        keys[f"{name}.bias"] = (out_ch,)


def _bn(keys: dict, name: str, channels: int) -> None:
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        keys[f"{name}.{leaf}"] = (channels,)
    keys[f"{name}.num_batches_tracked"] = ()


def _semseg_layers(keys: dict, depths: tuple[int, ...], inplanes: int = 128) -> None:
    for stage, (depth, planes) in enumerate(zip(depths, (64, 128, 256, 512))):
        for block in range(depth):
            p = f"layer{stage + 1}.{block}"
            _conv(keys, f"{p}.conv1", planes, inplanes, 1)
            _bn(keys, f"{p}.bn1", planes)
            _conv(keys, f"{p}.conv2", planes, planes, 3)
            _bn(keys, f"{p}.bn2", planes)
            _conv(keys, f"{p}.conv3", planes * 4, planes, 1)
            _bn(keys, f"{p}.bn3", planes * 4)
            if block == 0:
                _conv(keys, f"{p}.downsample.0", planes * 4, inplanes, 1)
                _bn(keys, f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4


def semseg_resnet_layout(depths: tuple[int, ...] = (3, 4, 6, 3)) -> dict[str, tuple[int, ...]]:
    """semseg ImageNet ``resnet50_v2.pth``: deep-base stem conv1/bn1..conv3/bn3, layer1-4, fc."""
    keys: dict[str, tuple[int, ...]] = {}
    _conv(keys, "conv1", 64, 3, 3)
    _bn(keys, "bn1", 64)
    _conv(keys, "conv2", 64, 64, 3)
    _bn(keys, "bn2", 64)
    _conv(keys, "conv3", 128, 64, 3)
    _bn(keys, "bn3", 128)
    _semseg_layers(keys, depths)
    keys["fc.weight"] = (1000, 2048)
    keys["fc.bias"] = (1000,)
    return keys


def semseg_psanet_layout(
    depths: tuple[int, ...] = (3, 4, 6, 3), classes: int = 19, mask: int = 89
) -> dict[str, tuple[int, ...]]:
    """semseg ``train_epoch_*.pth`` ``state_dict`` of PSANet(psa_type=2), with DataParallel's ``module.``."""
    keys: dict[str, tuple[int, ...]] = {}
    # layer0 = Sequential(conv1, bn1, relu, conv2, bn2, relu, conv3, bn3, relu, maxpool)
    _conv(keys, "layer0.0", 64, 3, 3)
    _bn(keys, "layer0.1", 64)
    _conv(keys, "layer0.3", 64, 64, 3)
    _bn(keys, "layer0.4", 64)
    _conv(keys, "layer0.6", 128, 64, 3)
    _bn(keys, "layer0.7", 128)
    _semseg_layers(keys, depths)
    for suffix in ("", "_p"):
        _conv(keys, f"psa.reduce{suffix}.0", 512, 2048, 1)
        _bn(keys, f"psa.reduce{suffix}.1", 512)
        _conv(keys, f"psa.attention{suffix}.0", 512, 512, 1)
        _bn(keys, f"psa.attention{suffix}.1", 512)
        _conv(keys, f"psa.attention{suffix}.3", mask * mask, 512, 1)
    _conv(keys, "psa.proj.0", 2048, 1024, 1)
    _bn(keys, "psa.proj.1", 2048)
    for name, in_ch, mid in (("cls", 4096, 512), ("aux", 1024, 256)):
        _conv(keys, f"{name}.0", mid, in_ch, 3)
        _bn(keys, f"{name}.1", mid)
        _conv(keys, f"{name}.4", classes, mid, 1, bias=True)
    return {f"module.{key}": shape for key, shape in keys.items()}


def fill_layout(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """A distinct constant per key (its position + 1; counters for num_batches_tracked): a key mapped to the
    wrong place is detectable, and filling 25M values stays cheap."""
    state = {}
    for index, (key, shape) in enumerate(layout.items()):
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(index, dtype=torch.long)
        else:
            state[key] = torch.full(shape, float(index + 1))
    return state
