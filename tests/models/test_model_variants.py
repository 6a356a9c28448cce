"""Model builders are tables of variant arguments plus one create function per model class (as timm's)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from attnseg.models import MODEL_BUILDERS, create_model
from attnseg.models.mscale import HRNET_OCR_VARIANTS, MSCALE_MODEL_BUILDERS, create_mscale_ocr, create_ocrnet
from attnseg.models.psanet import PSANET_BUILDERS, PSANET_VARIANTS, create_psanet


def test_every_variant_is_registered_as_its_create_function_bound_to_the_name():
    assert set(MSCALE_MODEL_BUILDERS) == set(HRNET_OCR_VARIANTS) and set(PSANET_BUILDERS) == set(PSANET_VARIANTS)
    for name, builder in {**MSCALE_MODEL_BUILDERS, **PSANET_BUILDERS}.items():
        assert MODEL_BUILDERS[name] is builder
        assert isinstance(builder, functools.partial) and builder.args == (name,)
        assert builder.__doc__ == {**HRNET_OCR_VARIANTS, **PSANET_VARIANTS}[name].description
    assert MSCALE_MODEL_BUILDERS["ocr_hrnet_w48"].func is create_ocrnet
    assert MSCALE_MODEL_BUILDERS["mscale_ocr_hrnet_w48"].func is create_mscale_ocr
    assert PSANET_BUILDERS["psanet_r50_vd"].func is create_psanet


def test_variant_defaults_reach_the_model():
    with torch.device("meta"):
        small = create_model("mscale_ocr_hrnet_w18_small_v1", num_classes=3)
        wide = create_model("mscale_ocr_hrnet_w18_small_v1", num_classes=3, attention_channels=16)
        narrow = create_model("psanet_r18_narrow", num_classes=3, mask_size=(5, 5))
    assert small.scale_attn.conv0.out_channels == 64 and wide.scale_attn.conv0.out_channels == 16
    assert small.ocr.cls_head.out_channels == 3
    assert narrow.psa.mask_size == (5, 5) and isinstance(narrow.head.dropout, nn.Dropout2d)
    assert narrow.align_corners is False


@pytest.mark.parametrize("name, keyword", [("ocr_hrnet_w48", "eval_scales"), ("psanet_r18_narrow", "compact"),
                                           ("psanet_r50_vd", "compact"), ("mscale_ocr_hrnet_w18", "hrnet")])
def test_a_keyword_the_builder_never_took_is_still_refused(name, keyword):
    with pytest.raises(TypeError, match=f"{name}.*{keyword}"):
        create_model(name, **{keyword: True})
