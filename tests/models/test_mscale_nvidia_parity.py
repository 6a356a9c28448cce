"""MscaleOCR (HRNet-W48) against NVIDIA/semantic-segmentation @7726b14: checkpoint layout and golden outputs.

A reference-layout checkpoint (keys with `module.`) is filled by the key-seeded rule, converted, loaded with
strict=True, and every model-output golden of sections A and C of `tests/reference/nvidia/` that needs no loss is
compared with max|ours - golden| <= 1e-4 * max|golden|. One W48 model serves the whole module.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import parity
import pytest
import torch
from torch import nn

from attnseg.models import create_model
from attnseg.models.backbones.hrnet import concat_branches
from attnseg.models.mscale import MscaleOCR, convert_nvidia_state_dict, resize_by_scale

META = json.loads((parity.NVIDIA_DIR / "golden_meta.json").read_text())


def check(ours: torch.Tensor, golden: dict[str, np.ndarray], name: str) -> None:
    reference = golden[name]
    ours_np = ours.detach().double().numpy()
    if ours_np.shape == reference.shape:
        worst = float(np.abs(ours_np - reference).max() / np.abs(reference).max())
        print(f"{name}: max|diff| / max|golden| = {worst:.2e}")
    parity.assert_close_to_golden(ours, reference, rel=1e-4, name=name)


def fill_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over (key, float32 little-endian bytes) of every float entry in sorted key order (the reference's
    check that a fill is right before any activation is compared)."""
    digest = hashlib.sha256()
    for key, tensor in sorted((k.removeprefix("module."), t) for k, t in state_dict.items() if t.is_floating_point()):
        digest.update(key.encode("utf-8"))
        digest.update(tensor.detach().float().contiguous().numpy().astype("<f4").tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return parity.nvidia_golden()


@pytest.fixture(scope="module")
def model() -> MscaleOCR:
    model = create_model("mscale_ocr_hrnet_w48", num_classes=parity.NUM_CLASSES)
    checkpoint = {"state_dict": parity.nvidia_filled_checkpoint(), "epoch": 0, "arch": "network.ocrnet.HRNet_Mscale"}
    model.load_state_dict(convert_nvidia_state_dict(checkpoint), strict=True)
    return model.eval()


@pytest.fixture
def eval_model(model):
    model.eval()
    yield model
    model.eval()


# ----------------------------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------------------------
def test_state_dict_layout_equals_the_release(model):
    entries = parity.nvidia_reference_entries()
    state = model.state_dict()
    assert list(state) == [e["key"] for e in entries]
    assert [list(t.shape) for t in state.values()] == [e["shape"] for e in entries]
    parameters = [name for name, _ in model.named_parameters()]
    assert parameters == [e["key"] for e in entries if e["is_parameter"]]


def test_fill_matches_the_reference_fill(model):
    assert fill_sha256(model.state_dict()) == META["state_dict_sha256"]


def test_converter_accepts_a_bare_state_dict_with_or_without_prefix(model):
    filled = parity.nvidia_filled_checkpoint()
    stripped = {key.removeprefix("module."): value for key, value in filled.items()}
    assert convert_nvidia_state_dict(filled).keys() == convert_nvidia_state_dict(stripped).keys() == stripped.keys()
    with pytest.raises(ValueError):
        convert_nvidia_state_dict({"epoch": 3})


def test_bn_settings_match_the_reference(model):
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(m.eps == 1e-5 and m.momentum == 0.1 for m in norms)


# ----------------------------------------------------------------------------------------------------------------
# A. Eval mode
# ----------------------------------------------------------------------------------------------------------------
def test_single_scale_outputs(eval_model, golden):
    with torch.no_grad():
        logits, aux_logits, attention = eval_model.forward_single_scale(parity.nvidia_image())
    check(logits, golden, "ss_cls_out")
    check(aux_logits[..., ::2, ::2], golden, "ss_aux_out_sub2")
    check(attention, golden, "ss_attn")


def test_intermediate_outputs(eval_model, golden):
    with torch.no_grad():
        features = concat_branches(eval_model.backbone(parity.nvidia_image()))
        logits, aux_logits, ocr_features = eval_model.ocr(features)
        attention = eval_model.scale_attn(ocr_features)
    check(features[..., ::4, ::4], golden, "dbg_backbone_feats_sub4")
    check(features.mean(dim=(0, 2, 3)), golden, "dbg_backbone_feats_chanmean")
    check(logits, golden, "dbg_cls_lowres")
    check(aux_logits, golden, "dbg_aux_lowres")
    check(ocr_features[..., ::4, ::4], golden, "dbg_ocr_mid_feats_sub4")
    check(attention, golden, "dbg_attn_lowres")


def test_three_scale_inference(eval_model, golden):
    with torch.no_grad():
        out = eval_model(parity.nvidia_image(), scales=(0.5, 1.0, 2.0), keep_scale_outputs=True)
    check(out.logits, golden, "ms3_pred")
    check(out.scale_logits[0.5], golden, "ms3_pred_0.5x")
    check(out.scale_logits[2.0][..., ::4, ::4], golden, "ms3_pred_2.0x_sub4")
    check(out.scale_attention[0.5], golden, "ms3_attn_0.5x")
    check(out.scale_logits[1.0], golden, "ss_cls_out")  # the reference's pred_1.0x is bit-identical to it
    check(out.scale_attention[1.0], golden, "ss_attn")
    assert list(out.scale_logits[2.0].shape) == META["ms3_pred_2.0x_shape"]
    assert out.aux_logits.shape == out.logits.shape


def test_two_scale_inference(eval_model, golden):
    with torch.no_grad():
        out = eval_model(parity.nvidia_image(), scales=(0.5, 1.0))
    check(out.logits[..., ::2, ::2], golden, "ms2_pred_sub2")


def test_odd_input_sizes_follow_the_reference(eval_model):
    with torch.no_grad():
        out = eval_model(parity.nvidia_odd_image(), scales=(0.5, 1.0, 2.0), keep_scale_outputs=True)
    shapes = META["odd_shapes"]
    assert list(out.logits.shape) == shapes["pred"]
    for scale in (0.5, 1.0, 2.0):
        assert list(out.scale_logits[scale].shape) == shapes[f"pred_{scale}x"]
    for scale in (0.5, 1.0):
        assert list(out.scale_attention[scale].shape) == shapes[f"attn_{scale}x"]
    assert 2.0 not in out.scale_attention  # the largest scale's attention takes no part in the fusion


# ----------------------------------------------------------------------------------------------------------------
# C. Training mode
# ----------------------------------------------------------------------------------------------------------------
def test_training_forward_with_frozen_batchnorm(model, golden):
    # trainA: model.train() with every BatchNorm (and the OCR Dropout2d) in eval mode.
    model.train()
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm2d, nn.Dropout2d)):
            module.eval()
    try:
        with torch.no_grad():
            out = model(parity.nvidia_image())
    finally:
        model.eval()
    check(out.logits[..., ::2, ::2], golden, "trainA_joint_pred_sub2")
    check(out.aux_logits[..., ::2, ::2], golden, "trainA_joint_aux_sub2")
    assert set(out.scale_logits) == {0.5, 1.0} and set(out.scale_attention) == {0.5}
    assert out.scale_logits[0.5].shape[-2:] == (32, 64)  # at its own scale; the criterion upsamples it
    check(out.scale_logits[1.0], golden, "ss_cls_out")
    check(out.scale_logits[0.5], golden, "ms3_pred_0.5x")


def test_training_forward_updates_batchnorm_twice(model):
    # trainB: plain train mode; the low-scale and the 1.0 pass each update the running statistics once.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images, _ = parity.nvidia_train_b_inputs()
    model.train()
    model.ocr.ocr_distri_head.conv_bn_dropout[2].eval()
    try:
        with torch.no_grad():
            out = model(images)
        bn1 = model.backbone.bn1
        assert int(bn1.num_batches_tracked) == META["trainB_after_num_batches_tracked"]
        # Low scale first, then 1.0: running = 0.9 * (0.9 * initial + 0.1 * mean_low) + 0.1 * mean_high.
        conv1 = model.backbone.conv1
        mean_low = conv1(resize_by_scale(images, 0.5)).mean(dim=(0, 2, 3))
        mean_high = conv1(images).mean(dim=(0, 2, 3))
        expected = 0.9 * (0.9 * state["backbone.bn1.running_mean"] + 0.1 * mean_low) + 0.1 * mean_high
        torch.testing.assert_close(bn1.running_mean, expected, rtol=0, atol=1e-5)
        assert out.logits.shape == (2, parity.NUM_CLASSES, 128, 256)
        assert torch.isfinite(out.logits).all()
    finally:
        model.load_state_dict(state)
        model.eval()
