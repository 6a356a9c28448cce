"""Training losses of the real models against the references: NVIDIA trainA (MscaleOCR HRNet-W48, filled weights,
BatchNorm frozen) loss terms, totals and parameter gradients, and PaddleSeg CityscapesSOTA's eight weighted loss
terms with the converted Paddle checkpoint (as run, with the label mutation, and with fresh labels).
"""

from __future__ import annotations

import numpy as np
import parity
import pytest
import torch
from torch import nn

from attnseg.losses import nvidia_criterion, paddle_cityscapes_sota_criterion
from attnseg.models import create_model
from attnseg.models.mscale import convert_nvidia_state_dict
from attnseg.models.mscale.paddle import convert_paddle_state_dict

NVIDIA_TERMS = ["aux_joint", "main_joint", "lo_0.5x", "hi_1.0x"]
NVIDIA_WEIGHTS = [0.4, 1.0, 0.05, 0.05]
PADDLE_TERMS = [f"{kind}_{part}" for kind in ("dice", "bce") for part in ("joint", "aux", "lo_0.5x", "hi_1.0x")]


def assert_all_close(ours: list[float], golden: np.ndarray, name: str, rel: float) -> None:
    ours_np = np.asarray(ours, dtype=np.float64)
    worst = float(np.max(np.abs(ours_np / golden - 1)))
    print(f"{name}: max relative error {worst:.2e}")
    assert worst <= rel, f"{name}: ours {ours_np} vs golden {golden}"


@pytest.fixture(scope="module")
def nvidia_train_a():
    """One trainA forward; both criteria computed on it, each with its own backward."""
    model = create_model("mscale_ocr_hrnet_w48", num_classes=parity.NUM_CLASSES)
    model.load_state_dict(convert_nvidia_state_dict(parity.nvidia_filled_checkpoint()), strict=True)
    model.train()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.Dropout2d, nn.Dropout)):
            module.eval()
    output = model(parity.nvidia_image())
    labels = parity.nvidia_label()
    results = {}
    for name, criterion in (("rmi", nvidia_criterion(rmi=True)), ("ce", nvidia_criterion(rmi=False))):
        model.zero_grad(set_to_none=True)
        losses = criterion(output, labels)
        losses["loss"].backward(retain_graph=name == "rmi")
        grads = {key: p.grad.detach().clone() for key, p in model.named_parameters() if p.grad is not None}
        results[name] = ({k: v.detach() for k, v in losses.items()}, grads)
    return results


@pytest.fixture(scope="module")
def nvidia_golden():
    return parity.nvidia_golden()


@pytest.mark.parametrize("kind", ["rmi", "ce"])
def test_nvidia_train_a_loss_terms_and_total(nvidia_train_a, nvidia_golden, kind):
    losses, _ = nvidia_train_a[kind]
    assert list(losses) == [*NVIDIA_TERMS, "loss"]
    terms = [float(losses[name]) / weight for name, weight in zip(NVIDIA_TERMS, NVIDIA_WEIGHTS)]
    assert_all_close(terms, nvidia_golden[f"trainA_{kind}_loss_terms"], f"trainA_{kind}_loss_terms", rel=1e-5)
    assert_all_close([float(losses["loss"])], nvidia_golden[f"trainA_{kind}_loss_total"], f"trainA_{kind}_loss_total",
                     rel=1e-5)


@pytest.mark.parametrize("kind", ["rmi", "ce"])
def test_nvidia_train_a_gradient_norms(nvidia_train_a, nvidia_golden, kind):
    _, grads = nvidia_train_a[kind]
    entries = [e for e in parity.nvidia_reference_entries() if e["is_parameter"]]
    golden = nvidia_golden[f"trainA_{kind}_grad_l2"]
    assert len(entries) == len(golden)
    ours = np.array([float(grads[e["key"]].double().norm()) if e["key"] in grads else 0.0 for e in entries])
    significant = golden > 1e-6 * golden.max()  # conv biases followed by BN have ~0 gradient
    relative = np.abs(ours[significant] / golden[significant] - 1)
    print(f"trainA_{kind}_grad_l2: {int(significant.sum())} params, max relative error {relative.max():.2e}")
    assert relative.max() <= 1e-3


@pytest.mark.parametrize(
    ("golden_name", "key"),
    [
        ("trainA_grad_backbone_conv1_weight", "backbone.conv1.weight"),
        ("trainA_grad_scale_attn_conv2_weight", "scale_attn.conv2.weight"),
        ("trainA_grad_ocr_cls_head_weight", "ocr.cls_head.weight"),
        ("trainA_grad_ocr_aux_head_2_weight", "ocr.aux_head.2.weight"),
    ],
)
def test_nvidia_train_a_full_gradients(nvidia_train_a, nvidia_golden, golden_name, key):
    _, grads = nvidia_train_a["rmi"]
    parity.assert_close_to_golden(grads[key], nvidia_golden[golden_name], rel=1e-3, name=golden_name)


@pytest.fixture(scope="module")
def paddle_train_output():
    """CityscapesSOTA two-scale training forward: train mode, dropout off, BatchNorm on batch statistics."""
    model = create_model("mscale_ocr_hrnet_w48", num_classes=parity.NUM_CLASSES)
    model.load_state_dict(convert_paddle_state_dict(parity.paddle_filled_checkpoint("mscale_ocrnet")), strict=True)
    model.train()
    for module in model.modules():
        if isinstance(module, (nn.Dropout, nn.Dropout2d)):
            module.eval()
    with torch.no_grad():
        return model(parity.paddle_image())


@pytest.fixture(scope="module")
def paddle_golden():
    return parity.paddle_golden("mscale_ocrnet")


@pytest.mark.parametrize("as_run", [True, False], ids=["as_run", "fresh_labels"])
def test_paddle_cityscapes_sota_loss_terms(paddle_train_output, paddle_golden, as_run):
    labels = parity.paddle_train_labels()
    np.testing.assert_array_equal(labels.numpy(), paddle_golden["train/labels"])
    criterion = paddle_cityscapes_sota_criterion(min_K=1600, loss_th=0.05, reproduce_label_mutation=as_run)
    losses = criterion(paddle_train_output, labels)
    assert list(losses) == [*PADDLE_TERMS, "loss"]
    suffix = "as_run" if as_run else "fresh_labels"
    assert_all_close([float(losses[n]) for n in PADDLE_TERMS], paddle_golden[f"train/loss_terms_{suffix}"],
                     f"train/loss_terms_{suffix}", rel=1e-5)
    assert_all_close([float(losses["loss"])], paddle_golden[f"train/loss_total_{suffix}"],
                     f"train/loss_total_{suffix}", rel=1e-5)
    assert bool((labels == 255).any()) != as_run  # the as-run option mutates the caller's labels, the default not
