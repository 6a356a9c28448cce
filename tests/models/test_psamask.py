"""psamask: exact equality with the reference op (Paddle goldens, outputs and gradients) and with a per-pixel loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parity import paddle_golden
from psanet_reference_layouts import psa_mask_loop

from attnseg.models.ops.psamask import COLLECT, DISTRIBUTE, psa_grid_size, psa_mask, psa_mask_gather, psa_mask_size


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return paddle_golden("psanet")


# (case, mask side, seed of the gradient weights G = default_rng(seed + 100))
GOLDEN_CASES = [("c1", 5, 40), ("c2", 7, 41)]


@pytest.mark.parametrize("mode", [COLLECT, DISTRIBUTE])
@pytest.mark.parametrize("case,mask,seed", GOLDEN_CASES)
def test_outputs_and_gradients_equal_reference_op(golden, case, mask, seed, mode):
    x = torch.from_numpy(golden[f"psamask/{case}_input"]).requires_grad_()
    out = psa_mask(x, mode, (mask, mask))
    np.testing.assert_array_equal(out.detach().numpy(), golden[f"psamask/{case}_type{mode}_out"])
    weights = np.random.default_rng(seed + 100).standard_normal(out.shape).astype(np.float32)
    (grad,) = torch.autograd.grad((out * torch.from_numpy(weights)).sum(), x)
    np.testing.assert_array_equal(grad.numpy(), golden[f"psamask/{case}_type{mode}_grad_in"])


@pytest.mark.parametrize("mode", [COLLECT, DISTRIBUTE])
def test_cfg59_window_larger_than_grid_equals_reference_op(golden, mode):
    x = np.random.default_rng(42).standard_normal((1, 59 * 59, 8, 16)).astype(np.float32)
    np.testing.assert_allclose([x.sum(dtype=np.float64), x.flat[0], x.flat[-1]], golden["psamask/cfg59_input_checksum"])
    out = psa_mask(torch.from_numpy(x), mode, (59, 59))
    assert out.shape == (1, 128, 8, 16)
    np.testing.assert_array_equal(out.numpy(), golden[f"psamask/cfg59_type{mode}_out"])


# (batch, mask_h, mask_w, height, width): window inside the grid, over-complete, 1x1, single row/column, mixed.
LOOP_CASES = [
    (1, 3, 3, 6, 7),
    (2, 5, 3, 4, 9),
    (1, 9, 11, 3, 4),
    (1, 1, 1, 3, 5),
    (1, 7, 5, 1, 6),
    (3, 3, 9, 5, 1),
    (1, 1, 1, 1, 1),
    (1, 13, 13, 7, 7),
    (2, 15, 31, 8, 16),
]


@pytest.mark.parametrize("mode", [COLLECT, DISTRIBUTE])
@pytest.mark.parametrize("batch,mask_h,mask_w,height,width", LOOP_CASES)
def test_matches_per_pixel_loop_with_gradients(batch, mask_h, mask_w, height, width, mode):
    x = torch.randn(batch, mask_h * mask_w, height, width, dtype=torch.float64)
    weights = torch.randn(batch, height * width, height, width, dtype=torch.float64)
    grads = []
    for op in (psa_mask, psa_mask_loop, psa_mask_gather):
        leaf = x.clone().requires_grad_()
        out = op(leaf, mode, (mask_h, mask_w))
        (grad,) = torch.autograd.grad((out * weights).sum(), leaf)
        grads.append((out.detach(), grad))
    for out, grad in grads[1:]:
        assert torch.equal(grads[0][0], out)
        assert torch.equal(grads[0][1], grad)


def test_distribute_is_transpose_of_collect():
    x = torch.randn(2, 25, 4, 6)
    collect = psa_mask(x, COLLECT, (5, 5)).reshape(2, 24, 24)
    distribute = psa_mask(x, DISTRIBUTE, (5, 5)).reshape(2, 24, 24)
    assert torch.equal(distribute, collect.transpose(1, 2))


def test_full_window_puts_every_cell_once():
    # A window of 2H-1 x 2W-1 covers the grid from every position: every output entry is a real cell.
    x = torch.arange(1, 1 + 7 * 9 * 4 * 5, dtype=torch.float32).reshape(1, 63, 4, 5)
    out = psa_mask(x, COLLECT, (7, 9))
    assert bool((out > 0).all())
    centre = (7 // 2) * 9 + 9 // 2  # window centre = the position itself -> diagonal of the (q, p) map
    assert torch.equal(out.reshape(20, 20).diagonal(), x[0, centre].flatten())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"mode": 2, "mask_size": (3, 3)}, "mode"),
        ({"mode": 0, "mask_size": (4, 3)}, "odd"),
        ({"mode": 0, "mask_size": (3, 5)}, "channels"),
    ],
)
def test_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        psa_mask(torch.zeros(1, 9, 2, 2), **kwargs)


def test_grid_size_is_ceil_division():
    assert psa_grid_size(1) == 1
    assert psa_grid_size(16) == 1
    assert psa_grid_size(17) == 2
    assert psa_grid_size(512) == 32
    assert psa_grid_size(1024, 8, 2) == 64
    assert psa_grid_size(1024, 16, 1) == 64
    assert psa_grid_size(1025, 32, 1) == 33
    with pytest.raises(ValueError):
        psa_grid_size(0)


def test_mask_size_rule_of_semseg_configs():
    assert psa_mask_size((465, 465)) == (59, 59)  # ADE20K / VOC crops in semseg -> the 59x59 default
    assert psa_mask_size((473, 473)) == (59, 59)
    assert psa_mask_size((705, 705)) == (89, 89)  # semseg Cityscapes
    assert psa_mask_size((713, 713)) == (89, 89)
    # PSANet_paddle's 1024x512 crops would need 63x127 to cover the grid; it trains with 59x59.
    assert psa_mask_size((512, 1024)) == (63, 127)
    assert psa_mask_size((1, 1)) == (1, 1)
    assert psa_mask_size((16, 17)) == (1, 3)
    assert psa_mask_size((512, 1024), output_stride=8, shrink_factor=1) == (127, 255)
