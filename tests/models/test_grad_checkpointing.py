"""Activation checkpointing (`set_grad_checkpointing`) of the HRNet-OCR models: the same outputs, gradients and
BatchNorm buffers as the plain run (dropout included), far fewer saved activations, and no effect outside training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from attnseg.models import create_model
from attnseg.models.checkpointing import checkpointed, supports_grad_checkpointing

# Narrow variants on a tiny input; MscaleOCR trains at two scales, so both are checkpointed.
MODELS = ["mscale_ocr_hrnet_w18_small_v1", "ocr_hrnet_w18_small"]
SHAPE = (2, 3, 64, 96)


def _step(model: nn.Module, images: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """Forward (dropout drawn from seed 7; bf16 autocast if asked) and backward of a loss on every output; returns the
    logits."""
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        output = model(images)
    loss = output.logits.square().mean() + 0.4 * output.aux_logits.abs().mean()
    loss = loss + sum(logits.mean() for logits in output.scale_logits.values())
    loss.backward()
    return output.logits.detach()


def _saved_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps from one training forward."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images)
    return sum(storages.values())


@pytest.mark.parametrize("name", MODELS)
def test_checkpointed_training_step_equals_the_plain_one(name):
    torch.manual_seed(0)
    plain = create_model(name, num_classes=3).train()
    assert any(isinstance(m, nn.Dropout2d) and m.p > 0 for m in plain.modules())  # the RNG replay is exercised
    checkpointed_model = copy.deepcopy(plain)
    checkpointed_model.set_grad_checkpointing(True)
    images = torch.randn(*SHAPE)
    torch.testing.assert_close(_step(checkpointed_model, images), _step(plain, images), rtol=0, atol=0)
    for (key, p_plain), p_checkpointed in zip(plain.named_parameters(), checkpointed_model.parameters()):
        torch.testing.assert_close(p_checkpointed.grad, p_plain.grad, rtol=1e-6, atol=1e-7, msg=key)
    plain_state, checkpointed_state = plain.state_dict(), checkpointed_model.state_dict()
    for key, value in plain_state.items():  # running statistics updated once, num_batches_tracked == 1
        torch.testing.assert_close(checkpointed_state[key], value, rtol=0, atol=0, msg=key)
    assert int(plain_state["backbone.bn1.num_batches_tracked"]) == (2 if name.startswith("mscale") else 1)


@pytest.mark.parametrize("name", MODELS)
def test_checkpointing_keeps_a_fraction_of_the_activations(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).train()
    images = torch.randn(*SHAPE)
    plain = _saved_bytes(model, images)
    model.set_grad_checkpointing(True)
    assert _saved_bytes(model, images) < 0.35 * plain  # narrow models: their heads keep more
    model.set_grad_checkpointing(False)
    assert _saved_bytes(model, images) == plain


def test_the_flag_reaches_backbone_and_heads_and_changes_nothing_in_eval():
    model = create_model("mscale_ocr_hrnet_w18_small_v1", num_classes=3, eval_scales=(0.5, 1.0))
    reference = copy.deepcopy(model).eval()
    model.set_grad_checkpointing(True)
    assert model.backbone.grad_checkpointing and model.ocr.grad_checkpointing
    images = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images).logits, reference(images).logits, rtol=0, atol=0)
    assert supports_grad_checkpointing(model) and not supports_grad_checkpointing(create_model("psanet_r18_narrow"))


def test_recomputation_leaves_batchnorm_statistics_alone():
    """Plain non-reentrant checkpoint updates BatchNorm's running statistics in the recomputation too; `checkpointed`
    updates them once, as the plain forward does."""
    torch.manual_seed(0)
    layers = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    images = torch.randn(2, 3, 8, 8, requires_grad=True)
    twice, once, plain = copy.deepcopy(layers), copy.deepcopy(layers), copy.deepcopy(layers)
    checkpoint(twice, images, use_reentrant=False).sum().backward()
    checkpointed(once, images).sum().backward()
    plain(images).sum().backward()
    assert int(twice[1].num_batches_tracked) == 2  # what the guard is for
    assert int(once[1].num_batches_tracked) == 1
    torch.testing.assert_close(once[1].running_mean, plain[1].running_mean, rtol=0, atol=0)
    torch.testing.assert_close(once[1].running_var, plain[1].running_var, rtol=0, atol=0)
    assert once[1].track_running_stats and once[1].running_mean is not None


def test_checkpointing_under_bf16_autocast_recomputes_in_bf16():
    """The trainer's bf16 step: checkpoint replays the autocast state, so the recomputed activations (and with them
    the gradients) are those of the first forward."""
    torch.manual_seed(0)
    plain = create_model("mscale_ocr_hrnet_w18_small_v1", num_classes=3).train()
    checkpointed_model = copy.deepcopy(plain)
    checkpointed_model.set_grad_checkpointing(True)
    images = torch.randn(*SHAPE)
    torch.testing.assert_close(_step(checkpointed_model, images, bf16=True), _step(plain, images, bf16=True),
                               rtol=0, atol=0)
    for (key, p_plain), p_checkpointed in zip(plain.named_parameters(), checkpointed_model.parameters()):
        torch.testing.assert_close(p_checkpointed.grad, p_plain.grad, rtol=1e-5, atol=1e-6, msg=key)
