"""HRNetV2 backbone: stated channels/strides against real output shapes, for every width."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from attnseg.models.backbones.hrnet import HRNET_CONFIGS, concat_branches, hrnet

EXPECTED_CHANNELS = {
    "w18_small_v1": [16, 32, 64, 128],
    "w18_small": [18, 36, 72, 144],
    "w18": [18, 36, 72, 144],
    "w32": [32, 64, 128, 256],
    "w48": [48, 96, 192, 384],
}


@pytest.mark.parametrize("variant", sorted(HRNET_CONFIGS))
def test_stated_channels_and_strides_match_outputs(variant):
    model = hrnet(variant).eval()
    height, width = 67, 45  # odd sides: every stride-2 conv rounds up
    with torch.no_grad():
        features = model(torch.randn(1, 3, height, width))
    assert model.out_channels == EXPECTED_CHANNELS[variant]
    assert model.strides == [4, 8, 16, 32]
    assert [f.shape[1] for f in features] == model.out_channels
    for feature, stride in zip(features, model.strides):
        assert tuple(feature.shape[-2:]) == (math.ceil(height / stride), math.ceil(width / stride))
    concat = concat_branches(features)
    assert concat.shape == (1, model.concat_channels, 17, 12)
    assert model.concat_channels == sum(EXPECTED_CHANNELS[variant])


def test_w48_representation_has_720_channels():
    assert hrnet("w48").concat_channels == 720


def test_w18_small_is_the_published_v2_depth():
    config = HRNET_CONFIGS["w18_small"]
    assert config.stage1.num_blocks == (2,)
    assert [s.num_modules for s in (config.stage2, config.stage3, config.stage4)] == [1, 3, 2]
    assert all(set(s.num_blocks) == {2} for s in (config.stage2, config.stage3, config.stage4))
    model = hrnet("w18_small")
    assert len(model.stage3) == 3 and len(model.stage4) == 2 and len(model.stage4[0].branches[3]) == 2


def test_w18_small_v1_is_the_published_depth():
    config = HRNET_CONFIGS["w18_small_v1"]
    assert config.stage1.num_blocks == (1,) and config.stage1.num_channels == (32,)
    assert [s.num_modules for s in (config.stage2, config.stage3, config.stage4)] == [1, 1, 1]
    model = hrnet("w18_small_v1")
    assert model.layer1[0].conv3.out_channels == 128  # bottleneck expansion 4 of width 32
    assert len(model.stage4) == 1 and len(model.stage4[0].branches[3]) == 2


def test_names_follow_the_reference_layout():
    names = set(dict(hrnet("w18_small").named_parameters()))
    for name in ["conv1.weight", "bn2.bias", "layer1.0.conv3.weight", "layer1.0.downsample.1.weight",
                 "transition1.0.0.weight", "transition1.1.0.0.weight", "transition2.2.0.0.weight",
                 "stage2.0.branches.0.0.conv1.weight", "stage2.0.fuse_layers.0.1.0.weight",
                 "stage4.1.fuse_layers.3.0.2.0.weight", "stage4.1.fuse_layers.3.0.1.1.weight"]:  # fmt: skip
        assert name in names, name


def test_norm_layer_is_passable():
    model = hrnet("w18_small", norm_layer=lambda c: nn.GroupNorm(2, c))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) > 50
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))[0].shape == (1, 18, 8, 8)


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="w48"):
        hrnet("w64")
