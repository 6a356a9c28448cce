"""The scales seam: MscaleOCR takes its eval scales as a forward argument; `fuses_scales`, `FixedScales`,
`unwrap_model`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnseg.models import FixedScales, create_model, default_scales, fuses_scales, unwrap_model
from attnseg.models.mscale.fusion import hierarchical_fusion

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def mscale():
    torch.manual_seed(0)
    return create_model("mscale_ocr_hrnet_w18_small_v1", num_classes=NUM_CLASSES, eval_scales=(0.5, 1.0)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))


def test_plain_eval_forward_keeps_no_per_scale_logits(mscale, images):
    with torch.no_grad():
        plain = mscale(images)
        kept = mscale(images, scales=(0.5, 1.0, 2.0), keep_scale_outputs=True)
    assert plain.scale_logits == {}
    assert set(plain.scale_attention) == {0.5}  # the constructor's eval_scales: (0.5, 1.0)
    assert {s: tuple(t.shape[-2:]) for s, t in kept.scale_logits.items()} == {2.0: (64, 96), 1.0: (32, 48),
                                                                              0.5: (16, 24)}  # fmt: skip


def test_scales_argument_is_the_fusion_of_those_scales(mscale, images):
    with torch.no_grad():
        for scales in [(1.0,), (0.5, 1.0), (1.0, 1.5, 0.75)]:
            out = mscale(images, scales=scales)
            expected = hierarchical_fusion(mscale.forward_single_scale, images, scales, keep_scale_outputs=False)
            assert torch.equal(out.logits, expected.logits) and torch.equal(out.aux_logits, expected.aux_logits)
        default = mscale(images)
        assert torch.equal(default.logits, mscale(images, scales=(0.5, 1.0)).logits)
    assert mscale.eval_scales == (0.5, 1.0)


def test_eval_scales_is_read_only(mscale):
    with pytest.raises(AttributeError):
        mscale.eval_scales = (1.0,)


def test_training_ignores_scales():
    torch.manual_seed(0)
    model = create_model("mscale_ocr_hrnet_w18_small_v1", num_classes=NUM_CLASSES).train()
    out = model(torch.randn(2, 3, 32, 32), scales=(1.0, 2.0))
    assert set(out.scale_logits) == {0.5, 1.0}  # train_scales (0.5, 1.0), as without the argument


def test_fuses_scales_sees_through_wrappers(mscale):
    psanet = create_model("psanet_r18_narrow", num_classes=NUM_CLASSES)
    assert fuses_scales(mscale) and not fuses_scales(psanet)
    assert unwrap_model(nn.DataParallel(mscale)) is mscale and fuses_scales(nn.DataParallel(mscale))
    compiled = torch.compile(mscale)  # wrapping only: nothing compiles until it is called
    assert unwrap_model(compiled) is mscale and fuses_scales(compiled)
    assert not fuses_scales(FixedScales(mscale, (1.0,)))  # a one-argument module
    assert default_scales(mscale) == (0.5, 1.0) and default_scales(psanet) == (1.0,)


def test_fixed_scales_calls_the_model_with_its_scales(mscale, images):
    fixed = FixedScales(mscale, (1.0, 0.5))
    assert fixed.scales == (1.0, 0.5) and FixedScales(mscale, None).scales == (0.5, 1.0)
    with torch.no_grad():
        assert torch.equal(fixed(images).logits, mscale(images, scales=(1.0, 0.5)).logits)
    psanet = create_model("psanet_r18_narrow", num_classes=NUM_CLASSES).eval()
    assert FixedScales(psanet, (1.0,)).scales == (1.0,) and FixedScales(psanet, None).scales == (1.0,)
    with pytest.raises(ValueError, match="only scales"):
        FixedScales(psanet, (0.5, 1.0))
