"""Deep-stem ResNet backbones: output-stride plan, stated channels/strides vs real shapes, reference key maps."""

from __future__ import annotations

import pytest
import torch
from parity import paddle_reference_keys
from psanet_reference_layouts import fill_layout, semseg_resnet_layout
from torch import nn

from attnseg.models.backbones.resnet import (
    BasicBlock,
    ResNet,
    convert_paddle_resnet_backbone,
    convert_semseg_resnet_backbone,
    paddle_resnet_key,
    resnet_v1c,
    resnet_vd,
    stage_strides_and_dilations,
)


def test_stage_plan_per_output_stride():
    assert stage_strides_and_dilations(32) == ((1, 1), (2, 1), (2, 1), (2, 1))
    assert stage_strides_and_dilations(16) == ((1, 1), (2, 1), (2, 1), (1, 2))
    assert stage_strides_and_dilations(8) == ((1, 1), (2, 1), (1, 2), (1, 4))
    for bad in (4, 12, 64):
        with pytest.raises(ValueError, match="output_stride"):
            stage_strides_and_dilations(bad)


def _narrow(output_stride: int, avg_down: bool = True) -> ResNet:
    return ResNet(BasicBlock, (1, 1, 1, 1), (8, 8, 16, 16), (8, 8, 8), output_stride=output_stride, avg_down=avg_down)


@pytest.mark.parametrize("avg_down", [True, False], ids=["vd", "v1c"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_stated_channels_and_strides_match_real_shapes(avg_down, output_stride):
    model = _narrow(output_stride, avg_down).eval()
    height, width = 64, 96
    with torch.no_grad():
        features = model(torch.randn(1, 3, height, width))
    assert model.out_channels == (8, 8, 16, 16)
    assert model.strides == tuple(min(s, output_stride) for s in (4, 8, 16, 32))
    assert [f.shape[1] for f in features] == list(model.out_channels)
    assert [(f.shape[2], f.shape[3]) for f in features] == [(height // s, width // s) for s in model.strides]


@pytest.mark.parametrize("build", [resnet_vd, resnet_v1c])
@pytest.mark.parametrize("depth,channels", [(18, (64, 128, 256, 512)), (50, (256, 512, 1024, 2048))])
def test_full_size_variants_state_their_outputs(build, depth, channels):
    for output_stride in (8, 16, 32):
        model = build(depth, output_stride=output_stride)
        assert model.out_channels == channels
        assert model.strides == tuple(min(s, output_stride) for s in (4, 8, 16, 32))


def test_resnet50_v1c_real_shapes_at_os16():
    # (ResNet50_vd at OS8 is checked against the Paddle feature shapes in the parity test.)
    model = resnet_v1c(50, output_stride=16).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 3, 32, 48))
    assert [tuple(f.shape[1:]) for f in features] == [(256, 8, 12), (512, 4, 6), (1024, 2, 3), (2048, 2, 3)]


def test_odd_input_sizes_round_up_like_the_references():
    # Stride-2 3x3/pad-1 convs and pools compute ceil(size / 2); ceil-mode avg-pool shortcuts agree with them.
    with torch.no_grad():
        features = _narrow(8).eval()(torch.randn(1, 3, 57, 75))
    assert [tuple(f.shape[-2:]) for f in features] == [(15, 19), (8, 10), (8, 10), (8, 10)]


def test_os8_dilations_shortcuts_and_multi_grid():
    model = resnet_vd(50, output_stride=8, multi_grid=(1, 2, 4))
    assert model.layer2[0].conv2.stride == (2, 2)
    assert all(block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2) for block in model.layer3)
    assert [block.conv2.dilation[0] for block in model.layer4] == [4, 8, 16]
    # ResNet-D: only the block that downsamples pools before its stride-1 shortcut conv.
    assert isinstance(model.layer2[0].downsample.pool, nn.AvgPool2d)
    assert not hasattr(model.layer1[0].downsample, "pool") and not hasattr(model.layer3[0].downsample, "pool")
    assert model.layer2[0].downsample.conv.stride == (1, 1)
    assert model.stem.conv1.out_channels == 32 and model.stem.conv3.out_channels == 64
    semseg = resnet_v1c(50, output_stride=8)
    assert semseg.layer2[0].downsample.conv.stride == (2, 2)
    assert semseg.stem.conv3.out_channels == 128 and semseg.layer1[0].conv1.in_channels == 128
    with pytest.raises(ValueError, match="multi_grid"):
        resnet_vd(50, multi_grid=(1, 2))


def test_norm_layer_is_an_argument():
    model = resnet_vd(18, norm_layer=lambda c: nn.GroupNorm(4, c))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert isinstance(model.layer4[1].bn2, nn.GroupNorm)


def test_paddle_key_map_examples():
    assert paddle_resnet_key("conv1_2._batch_norm._mean") == "stem.bn2.running_mean"
    assert paddle_resnet_key("bb_2_0.conv1._conv.weight") == "layer3.0.conv2.weight"
    assert paddle_resnet_key("bb_1_0.short._batch_norm._variance") == "layer2.0.downsample.bn.running_var"
    with pytest.raises(KeyError):
        paddle_resnet_key("bb_0_0.conv0._conv.bias")


def test_paddle_resnet50_vd_imagenet_layout_loads_strictly():
    # The backbone part of the released PSANet .pdparams is exactly PaddleSeg's ResNet50_vd layout.
    layout = {k: s for k, s in paddle_reference_keys("psanet") if k.startswith("backbone.")}
    paddle = {k.removeprefix("backbone."): torch.randn(s) for k, s in layout.items()}
    paddle["fc.weight"], paddle["fc.bias"] = torch.randn(2048, 1000), torch.randn(1000)  # ImageNet classifier
    state = convert_paddle_resnet_backbone(paddle)
    model = resnet_vd(50)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.layer4[2].bn3.running_var, paddle["bb_3_2.conv2._batch_norm._variance"])
    assert torch.equal(model.layer2[0].downsample.conv.weight, paddle["bb_1_0.short._conv.weight"])
    with pytest.raises(KeyError):
        convert_paddle_resnet_backbone({"head.conv.weight": torch.zeros(1)})


def test_semseg_imagenet_layout_loads_strictly():
    source = fill_layout(semseg_resnet_layout())
    model = resnet_v1c(50)
    model.load_state_dict(convert_semseg_resnet_backbone(source), strict=True)
    assert torch.equal(model.stem.conv2.weight, source["conv2.weight"])
    assert torch.equal(model.stem.bn3.running_mean, source["bn3.running_mean"])
    assert torch.equal(model.layer1[0].downsample.bn.running_var, source["layer1.0.downsample.1.running_var"])
    assert torch.equal(model.layer3[5].conv2.weight, source["layer3.5.conv2.weight"])
