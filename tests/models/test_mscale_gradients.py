"""Every model of the HRNet + OCR family: output contract in both modes and a gradient on every parameter."""

from __future__ import annotations

import pytest
import torch

from attnseg.models import MODEL_BUILDERS, SegmentationOutput, create_model
from attnseg.models.mscale import MSCALE_MODEL_BUILDERS, MscaleOCR, OCRNet

FAMILY = sorted(MSCALE_MODEL_BUILDERS)
NUM_CLASSES = 5


def all_tensors(out: SegmentationOutput) -> list[torch.Tensor]:
    tensors = [out.logits] + ([out.aux_logits] if out.aux_logits is not None else [])
    return tensors + list(out.scale_logits.values()) + list(out.scale_attention.values())


def test_family_is_registered():
    assert set(FAMILY) <= set(MODEL_BUILDERS)
    assert set(FAMILY) == {"mscale_ocr_hrnet_w48", "mscale_ocr_hrnet_w32", "mscale_ocr_hrnet_w18",
                           "mscale_ocr_hrnet_w18_small", "mscale_ocr_hrnet_w18_small_v1", "ocr_hrnet_w48",
                           "ocr_hrnet_w18_small"}  # fmt: skip


@pytest.mark.parametrize("name", FAMILY)
def test_train_step_reaches_every_parameter(name):
    model = create_model(name, num_classes=NUM_CLASSES).train()
    # Batch 2: at the 0.5 scale of a 32x32 crop the stride-32 branch is 1x1, and BatchNorm needs >1 value.
    images = torch.randn(2, 3, 32, 32)
    out = model(images)
    assert isinstance(out, SegmentationOutput)
    assert out.logits.shape == (2, NUM_CLASSES, 32, 32)
    assert out.aux_logits.shape == (2, NUM_CLASSES, 32, 32)
    if isinstance(model, MscaleOCR):
        assert out.scale_logits[0.5].shape == (2, NUM_CLASSES, 16, 16)
        assert out.scale_logits[1.0].shape == (2, NUM_CLASSES, 32, 32)
        assert out.scale_attention[0.5].shape == (2, 1, 16, 16)
    sum(t.sum() for t in all_tensors(out)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: no (finite) gradient for {missing[:5]}"
    # Conv biases directly followed by BatchNorm get ~0 gradient by construction; every weight must get a real one.
    dead = [n for n, p in model.named_parameters() if n.endswith("weight") and not p.grad.abs().sum() > 0]
    assert not dead, f"{name}: zero gradient for {dead[:5]}"


@pytest.mark.parametrize("name", ["mscale_ocr_hrnet_w18_small", "ocr_hrnet_w18_small"])
def test_eval_outputs_and_named_fields(name):
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    images = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        out = model(images) if isinstance(model, OCRNet) else model(images, keep_scale_outputs=True)
    assert out.logits.shape == out.aux_logits.shape == (1, NUM_CLASSES, 40, 72)
    if isinstance(model, OCRNet):
        assert out.scale_logits == {} and out.scale_attention == {}
        return
    assert model.eval_scales == (0.5, 1.0, 2.0)
    assert {s: tuple(t.shape[-2:]) for s, t in out.scale_logits.items()} == {2.0: (80, 144), 1.0: (40, 72),
                                                                             0.5: (20, 36)}  # fmt: skip
    assert set(out.scale_attention) == {1.0, 0.5}
    assert all(((a > 0) & (a < 1)).all() for a in out.scale_attention.values())
    with torch.no_grad():
        single = model(images, scales=(1.0,))
        plain = model.forward_single_scale(images)
    assert torch.equal(single.logits, plain.logits)


def test_builders_are_keyword_only_and_take_scales():
    with pytest.raises(TypeError):
        MSCALE_MODEL_BUILDERS["mscale_ocr_hrnet_w18_small"](19)
    model = create_model("mscale_ocr_hrnet_w18_small", eval_scales=(0.25, 0.5, 1.0), train_scales=(0.75, 1.0))
    assert model.eval_scales == (0.25, 0.5, 1.0) and model.train_scales == (0.75, 1.0)
    with pytest.raises(ValueError):
        create_model("mscale_ocr_hrnet_w18_small", train_scales=(0.5, 2.0))


def test_single_scale_training_keeps_attention_in_the_graph():
    model = create_model("mscale_ocr_hrnet_w18_small", num_classes=NUM_CLASSES, train_scales=(1.0,)).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert set(out.scale_logits) == {1.0}
    out.logits.sum().backward()
    assert model.scale_attn.conv2.weight.grad is not None
