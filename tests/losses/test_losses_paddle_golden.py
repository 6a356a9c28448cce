"""PaddleSeg 2.8.0 (and Feb-2021 PaddleSeg) loss goldens of `tests/reference/paddle/losses_metrics.npz`.

Inputs: ``make_logits_labels(seed, shape)`` of the reference README (numpy default_rng); "conf" adds +12 to the
true-class logit at every non-ignored pixel. Tolerance: relative 1e-5.
"""

from __future__ import annotations

import numpy as np
import parity
import pytest
import torch
import torch.nn.functional as F

from attnseg.losses import BootstrappedCrossEntropyLoss, CrossEntropyLoss, DiceLoss, LegacyDiceLoss, psanet_criterion
from attnseg.models.outputs import SegmentationOutput


def make_logits_labels(seed: int, shape: tuple[int, ...], confident: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    generator = np.random.default_rng(seed)
    logits = (generator.standard_normal(shape) * 3.0).astype(np.float32)
    n, c, h, w = shape
    labels = generator.integers(0, c, (n, h, w))
    labels[generator.random((n, h, w)) < 0.15] = 255
    if confident:
        image, row, col = np.nonzero(labels != 255)
        logits[image, labels[image, row, col], row, col] += 12.0
    return torch.from_numpy(logits), torch.from_numpy(labels)


def checksum(logits: torch.Tensor) -> list[float]:
    flat = logits.flatten()
    return [float(logits.double().sum()), float(flat[0]), float(flat[-1])]


def assert_scalar_close(ours: torch.Tensor, golden: np.ndarray, name: str, rel: float = 1e-5) -> None:
    value, reference = float(ours), float(golden)
    print(f"{name}: ours {value:.9g} golden {reference:.9g} rel {abs(value / reference - 1):.2e}")
    assert abs(value - reference) <= rel * abs(reference), f"{name}: {value} vs golden {reference}"


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return parity.paddle_golden("losses_metrics")


@pytest.fixture(scope="module")
def case_a(golden):
    logits, labels = make_logits_labels(20, (2, 19, 64, 128))
    np.testing.assert_allclose(checksum(logits), golden["A_logits_checksum"], rtol=1e-9)
    np.testing.assert_array_equal(labels.numpy(), golden["A_labels"])
    return logits, labels


@pytest.fixture(scope="module")
def case_aux(golden):
    logits, _ = make_logits_labels(23, (2, 19, 64, 128))
    np.testing.assert_allclose(checksum(logits), golden["AUX_logits_checksum"], rtol=1e-9)
    return logits


def test_dice_2_8(case_a, golden):
    logits, labels = case_a
    before = labels.clone()
    assert_scalar_close(DiceLoss()(logits, labels), golden["dice_v28"], "dice_v28")
    assert_scalar_close(DiceLoss(smooth=0.0)(logits, labels), golden["dice_v28_smooth0"], "dice_v28_smooth0")
    assert torch.equal(labels, before), "DiceLoss must not touch the caller's labels by default"


def test_dice_2_8_label_mutation_option_reproduces_the_reference(case_a, golden):
    logits, labels = case_a
    shared = labels.clone()
    first = DiceLoss(overwrite_ignored_labels=True)(logits, shared)
    assert_scalar_close(first, golden["dice_v28"], "dice_v28 (mutating call)")
    assert int((shared == 255).sum()) == int(golden["dice_v28_mutates_labels"]) == 0
    assert torch.equal(shared, torch.where(labels == 255, 0, labels))
    second = DiceLoss()(logits, shared)
    assert_scalar_close(second, golden["dice_v28_second_call_same_tensor"], "dice_v28_second_call_same_tensor")


def test_dice_feb_2021_formula(case_a, golden):
    loss = LegacyDiceLoss()(*case_a)
    assert_scalar_close(loss, golden["dice_v20_0fde07f6"], "dice_v20_0fde07f6")
    assert_scalar_close(loss, golden["dice_v20_numpy_formula"], "dice_v20_numpy_formula")


def test_bootstrapped_ce_threshold_branch(case_a, golden):
    logits, labels = case_a
    assert_scalar_close(BootstrappedCrossEntropyLoss(2000, 0.05)(logits, labels), golden["bce_K2000_th0.05"],
                        "bce_K2000_th0.05")


def test_bootstrapped_ce_top_k_branch_including_ignored_zeros(golden):
    logits, labels = make_logits_labels(20, (2, 19, 64, 128), confident=True)
    assert_scalar_close(BootstrappedCrossEntropyLoss(2000, 0.05)(logits, labels), golden["bce_conf_K2000_th0.05"],
                        "bce_conf_K2000_th0.05")
    # 7500 > the ~6960 valid pixels per image: the mean includes zero losses of ignored pixels
    assert int((labels[0] != 255).sum()) < 7500
    assert_scalar_close(BootstrappedCrossEntropyLoss(7500, 0.05)(logits, labels), golden["bce_conf_K7500_th0.05"],
                        "bce_conf_K7500_th0.05")


def eight_lane_float32_mean(values: np.ndarray) -> np.float32:
    """Mean as Paddle's CPU kernel sums: eight float32 accumulators (one AVX register), then across them."""
    lanes = np.zeros(8, np.float32)
    for row in values.astype(np.float32).reshape(-1, 8):
        lanes = (lanes + row).astype(np.float32)
    return np.float32(lanes.sum(dtype=np.float32)) / np.float32(values.size)


def test_bootstrapped_ce_config_values_on_a_large_image(golden):
    logits, labels = make_logits_labels(22, (1, 19, 320, 384))
    np.testing.assert_allclose(checksum(logits), golden["C_logits_checksum"], rtol=1e-9)
    assert [int(labels.sum()), int((labels == 255).sum())] == list(golden["C_labels_checksum"])
    loss = BootstrappedCrossEntropyLoss(100000, 0.05)
    assert_scalar_close(loss(logits, labels), golden["bce_cfg_K100000_th0.05"], "bce_cfg_K100000_th0.05")

    logits, labels = make_logits_labels(22, (1, 19, 320, 384), confident=True)
    ours = loss(logits, labels)
    # Top-K branch: the mean of 100000 losses of ~1e-5 .. 10. Paddle's float32 8-lane summation loses 1.3e-5 of it
    # (float64: 0.09984199733, ours 0.09984198213, Paddle 0.09984073043); the same summation of our sorted pixel
    # losses gives the golden exactly, so the selected pixels are the same. Our value is the accurate one.
    pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none").flatten()
    top = pixel.sort(descending=True).values[:100000].numpy()
    assert float(eight_lane_float32_mean(top)) == pytest.approx(float(golden["bce_cfg_conf_K100000_th0.05"]), rel=1e-7)
    exact = float(pixel.double().topk(100000).values.mean())
    assert float(ours) == pytest.approx(exact, rel=1e-6)
    assert_scalar_close(ours, golden["bce_cfg_conf_K100000_th0.05"], "bce_cfg_conf_K100000_th0.05", rel=2e-5)


def test_cross_entropy_and_psanet_loss(case_a, case_aux, golden):
    logits, labels = case_a
    assert_scalar_close(CrossEntropyLoss()(logits, labels), golden["ce_main"], "ce_main")
    assert_scalar_close(CrossEntropyLoss()(case_aux, labels), golden["ce_aux"], "ce_aux")
    result = psanet_criterion()(SegmentationOutput(logits=logits, aux_logits=case_aux), labels)
    assert list(result) == ["main", "aux", "loss"]
    assert_scalar_close(result["loss"], golden["psanet_loss_1_0.4"], "psanet_loss_1_0.4")
