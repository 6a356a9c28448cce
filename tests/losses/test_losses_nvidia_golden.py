"""NVIDIA/semantic-segmentation @7726b14 loss goldens (section D of `tests/reference/nvidia/README`) and the
combination training-loss golden (section B) built through the hierarchical-attention fusion.

Tolerance: the references' ``loss_*`` rule, relative 1e-5 on scalars; gradients max|diff| / max|golden| <= 1e-3.
"""

from __future__ import annotations

import hashlib

import numpy as np
import parity
import pytest
import torch

from attnseg.losses import (
    CrossEntropyLoss,
    ImageWeightedCrossEntropyLoss,
    ImageWeightedSoftNLLLoss,
    RMILoss,
    nvidia_criterion,
)
from attnseg.models.mscale.fusion import two_scale_fusion
from attnseg.models.outputs import SegmentationOutput

META_LOGITS_SHA256 = "eeebd72c3a4d0c6d19a9bcba20c22c60c3a6cc49c0d59ab39fcfab0a8a49942a"
TERM_ORDER = ["aux_joint", "main_joint", "lo_0.5x", "hi_1.0x"]
TERM_WEIGHTS = [0.4, 1.0, 0.05, 0.05]


def assert_scalar_close(ours: torch.Tensor, golden: np.ndarray, name: str, rel: float = 1e-5) -> None:
    value, reference = float(ours), float(golden)
    print(f"{name}: ours {value:.9g} golden {reference:.9g} rel {abs(value / reference - 1):.2e}")
    assert abs(value - reference) <= rel * abs(reference), f"{name}: {value} vs golden {reference}"


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return parity.nvidia_golden()


@pytest.fixture(scope="module")
def inputs(golden) -> tuple[torch.Tensor, torch.Tensor]:
    logits, labels = parity.nvidia_loss_inputs()
    assert hashlib.sha256(logits.numpy().astype("<f4").tobytes()).hexdigest() == META_LOGITS_SHA256
    np.testing.assert_array_equal(labels.numpy(), golden["loss_labels"])
    return logits, labels


def test_cross_entropy(inputs, golden):
    assert_scalar_close(CrossEntropyLoss()(*inputs), golden["loss_ce"], "loss_ce")


def test_image_weighted_cross_entropy_with_batch_histogram(inputs, golden):
    assert_scalar_close(ImageWeightedCrossEntropyLoss(19)(*inputs), golden["loss_imgwt_ce"], "loss_imgwt_ce")


def test_boundary_relaxation_soft_nll_on_one_hot_target(inputs, golden):
    loss = ImageWeightedSoftNLLLoss(19)(*inputs)
    assert_scalar_close(loss, golden["loss_imgwt_softnll_onehot"], "loss_imgwt_softnll_onehot")


def test_rmi_total_bce_only_and_gradient(inputs, golden):
    logits, labels = inputs
    logits = logits.clone().requires_grad_(True)
    total = RMILoss(19)(logits, labels)
    total.backward()
    assert_scalar_close(total.detach(), golden["loss_rmi_total"], "loss_rmi_total")
    assert_scalar_close(RMILoss(19, do_rmi=False)(*inputs), golden["loss_rmi_bce_only"], "loss_rmi_bce_only")
    assert_scalar_close(RMILoss(19)(*inputs, do_rmi=False), golden["loss_rmi_bce_only"], "do_rmi override")

    grad = logits.grad
    parity.assert_close_to_golden(
        grad[..., ::2, ::2], golden["loss_rmi_grad_sub2"], rel=1e-3, name="loss_rmi_grad_sub2"
    )
    parity.assert_close_to_golden(
        grad.double().sum(dim=(2, 3)), golden["loss_rmi_grad_chansum"], rel=1e-5, name="loss_rmi_grad_chansum"
    )


def test_rmi_float32_algebra_stays_close(inputs, golden):
    # For devices without float64: the covariance algebra in float32 costs precision but stays near the golden.
    loss = RMILoss(19, rmi_dtype=torch.float32)(*inputs)
    assert abs(float(loss) / float(golden["loss_rmi_total"]) - 1) < 1e-3


def test_combination_training_loss_through_the_fusion(golden):
    fused = two_scale_fusion(parity.nvidia_fake_scale_forward, parity.nvidia_comb_image())
    parity.assert_close_to_golden(fused.logits, golden["comb_train_joint_pred"], rel=1e-5, name="comb_train_joint_pred")
    output = SegmentationOutput(fused.logits, fused.aux_logits, fused.scale_logits, fused.scale_attention)
    assert output.scale_logits[0.5].shape[-2:] == (17, 25)  # the criterion upsamples it to the 35x51 labels

    labels = parity.nvidia_comb_label()
    np.testing.assert_array_equal(labels.numpy(), golden["comb_label"])
    result = nvidia_criterion(rmi=True)(output, labels)
    assert list(result) == [*TERM_ORDER, "loss"]
    terms = [float(result[name]) / weight for name, weight in zip(TERM_ORDER, TERM_WEIGHTS)]
    for name, ours, reference in zip(TERM_ORDER, terms, golden["comb_train_rmi_loss_terms"]):
        assert_scalar_close(torch.tensor(ours), reference, f"comb_train_rmi_loss_terms[{name}]")
    assert_scalar_close(result["loss"], golden["comb_train_rmi_loss_total"], "comb_train_rmi_loss_total")
