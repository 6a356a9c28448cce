"""Hierarchical multi-scale fusion: size arithmetic, limiting cases, and the reference's combination goldens."""

from __future__ import annotations

import json

import numpy as np
import parity
import pytest
import torch
import torch.nn.functional as F

from attnseg.models.mscale.fusion import (
    ScaleOutputs,
    hierarchical_fusion,
    interpolate_size,
    resize_by_scale,
    two_scale_fusion,
)


def fake_forward(image: torch.Tensor) -> ScaleOutputs:
    out = parity.nvidia_fake_scale_forward(image)
    return ScaleOutputs(out["cls_out"], out["aux_out"], out["logit_attn"])


def constant_attention_forward(value: float):
    """Fake forward whose attention is `value` everywhere (logits still depend on the pixels)."""

    def forward(image: torch.Tensor) -> ScaleOutputs:
        logits, aux, attention = fake_forward(image)
        return ScaleOutputs(logits, aux, torch.full_like(attention, value))

    return forward


def assert_comb_close(ours: torch.Tensor, golden: np.ndarray, name: str) -> None:
    # compare.py's rule for comb_* arrays.
    np.testing.assert_allclose(ours.numpy(), golden, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return parity.nvidia_golden()


# ----------------------------------------------------------------------------------------------------------------
# Size arithmetic
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [((64, 128), 0.5, (32, 64)), ((67, 131), 0.5, (33, 65)), ((67, 131), 2.0, (134, 262)), ((35, 51), 1.5, (52, 76)),
     ((35, 51), 0.25, (8, 12)), ((35, 51), 1.0, (35, 51)), ((1, 1), 0.5, (0, 0))],
)  # fmt: skip
def test_scaled_size_floors(size, scale, expected):
    assert interpolate_size(size, scale) == expected


@pytest.mark.parametrize("scale", [0.25, 0.5, 1.5, 2.0])
def test_resize_by_scale_matches_scaled_size(scale):
    image = parity.nvidia_comb_image()
    assert tuple(resize_by_scale(image, scale).shape[-2:]) == interpolate_size(image.shape[-2:], scale)


def test_resize_by_one_is_identity():
    image = parity.nvidia_comb_image()
    assert resize_by_scale(image, 1.0) is image


def bilinear_rows_then_columns(image: torch.Tensor, size: tuple[int, int], step: tuple[float, float]) -> torch.Tensor:
    """Separable bilinear resize (align_corners=False) sampling output pixel i at input ``(i + 0.5) * step - 0.5``,
    clamped at the borders: an independent statement of what each resize mode means."""

    def along(x: np.ndarray, axis: int, out: int, stride: float) -> np.ndarray:
        length = x.shape[axis]
        source = np.maximum((np.arange(out) + 0.5) * stride - 0.5, 0.0)
        low = np.minimum(np.floor(source).astype(int), length - 1)
        high = np.minimum(low + 1, length - 1)
        weight = (source - low).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight

    x = image.double().numpy()
    x = along(x, 2, size[0], step[0])
    return torch.from_numpy(along(x, 3, size[1], step[1]))


@pytest.mark.parametrize(("size", "scale"), [((67, 131), 0.5), ((35, 51), 1.5), ((35, 51), 0.25)])
def test_resize_modes_differ_on_odd_sizes(size, scale):
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    out_size = interpolate_size(size, scale)
    nvidia = resize_by_scale(image, scale)
    paddle = resize_by_scale(image, scale, recompute_scale_factor=False)
    assert nvidia.shape[-2:] == paddle.shape[-2:] == out_size
    # True: a resize to the floored size (samples input/output apart); False: torch's plain scale_factor resize
    # (samples 1/scale apart), which is what PaddleSeg's interpolate(scale_factor=s) computes.
    torch.testing.assert_close(nvidia, F.interpolate(image, size=out_size, mode="bilinear", align_corners=False))
    torch.testing.assert_close(paddle, F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False))
    steps_true = (size[0] / out_size[0], size[1] / out_size[1])
    # float32 weights in torch: agreement to 1e-5, far below the 1e-3 gap between the modes
    reference_true = bilinear_rows_then_columns(image, out_size, steps_true)
    reference_false = bilinear_rows_then_columns(image, out_size, (1 / scale, 1 / scale))
    torch.testing.assert_close(nvidia.double(), reference_true, rtol=0, atol=1e-5)
    torch.testing.assert_close(paddle.double(), reference_false, rtol=0, atol=1e-5)
    assert (nvidia - paddle).abs().max() > 1e-3


@pytest.mark.parametrize(("size", "scale"), [((64, 128), 0.5), ((67, 131), 2.0), ((36, 52), 0.25), ((36, 52), 1.5)])
def test_resize_modes_agree_when_side_times_scale_is_an_integer(size, scale):
    image = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    paddle = resize_by_scale(image, scale, recompute_scale_factor=False)
    torch.testing.assert_close(resize_by_scale(image, scale), paddle, rtol=0, atol=1e-6)
    assert resize_by_scale(image, 1.0, recompute_scale_factor=False) is image


def recording(inputs: list[torch.Tensor]):
    def forward(image: torch.Tensor) -> ScaleOutputs:
        inputs.append(image)
        return fake_forward(image)

    return forward


@pytest.mark.parametrize("recompute", [True, False])
def test_fusions_resize_with_the_chosen_mode(recompute):
    image = torch.rand(1, 3, 67, 131, generator=torch.Generator().manual_seed(2))
    expected_low = resize_by_scale(image, 0.5, recompute)
    seen: list[torch.Tensor] = []
    hierarchical_fusion(recording(seen), image, [0.5, 1.0, 2.0], recompute_scale_factor=recompute)
    assert [tuple(x.shape[-2:]) for x in seen] == [(134, 262), (67, 131), (33, 65)]
    torch.testing.assert_close(seen[2], expected_low, rtol=0, atol=0)
    seen.clear()
    two_scale_fusion(recording(seen), image, low_scale=0.5, recompute_scale_factor=recompute)
    torch.testing.assert_close(seen[0], expected_low, rtol=0, atol=0)


def test_mscale_ocr_passes_its_resize_mode_to_both_fusions():
    from attnseg.models import create_model

    assert create_model("mscale_ocr_hrnet_w18_small", num_classes=3).resize_recompute_scale_factor is True
    model = create_model("mscale_ocr_hrnet_w18_small", num_classes=3, resize_recompute_scale_factor=False)
    assert model.resize_recompute_scale_factor is False
    image = torch.rand(1, 3, 67, 131, generator=torch.Generator().manual_seed(3))
    seen: list[torch.Tensor] = []
    model.forward_single_scale = recording(seen)  # the fusion arithmetic only, no network
    for training in (True, False):
        seen.clear()
        model.train(training)
        model(image)
        low = seen[0] if training else seen[-1]
        torch.testing.assert_close(low, resize_by_scale(image, 0.5, recompute_scale_factor=False), rtol=0, atol=0)
        assert (low - resize_by_scale(image, 0.5)).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Limiting cases
# ----------------------------------------------------------------------------------------------------------------
def test_single_scale_is_the_plain_forward():
    image = parity.nvidia_comb_image()
    fused = hierarchical_fusion(fake_forward, image, [1.0])
    plain = fake_forward(image)
    assert torch.equal(fused.logits, plain.logits)
    assert torch.equal(fused.aux_logits, plain.aux_logits)
    assert fused.scale_attention == {}


def test_attention_all_ones_keeps_only_the_smallest_scale():
    image = parity.nvidia_comb_image()
    fused = hierarchical_fusion(constant_attention_forward(1.0), image, [0.5, 1.0, 2.0])
    smallest = fake_forward(resize_by_scale(image, 0.5))
    expected = torch.nn.functional.interpolate(smallest.logits, size=image.shape[-2:], mode="bilinear")
    torch.testing.assert_close(fused.logits, expected, rtol=0, atol=1e-6)


def test_attention_all_zeros_keeps_only_the_largest_scale():
    image = parity.nvidia_comb_image()
    fused = hierarchical_fusion(constant_attention_forward(0.0), image, [0.5, 1.0, 2.0])
    largest = fake_forward(resize_by_scale(image, 2.0))
    expected = torch.nn.functional.interpolate(largest.logits, size=image.shape[-2:], mode="bilinear")
    torch.testing.assert_close(fused.logits, expected, rtol=0, atol=1e-6)
    expected_aux = torch.nn.functional.interpolate(largest.aux_logits, size=image.shape[-2:], mode="bilinear")
    torch.testing.assert_close(fused.aux_logits, expected_aux, rtol=0, atol=1e-6)


def test_attention_one_half_at_two_scales_is_the_mean():
    image = parity.nvidia_comb_image()
    fused = hierarchical_fusion(constant_attention_forward(0.5), image, [1.0, 2.0])
    high = torch.nn.functional.interpolate(fake_forward(resize_by_scale(image, 2.0)).logits, size=(35, 51),
                                           mode="bilinear")  # fmt: skip
    torch.testing.assert_close(fused.logits, 0.5 * (fake_forward(image).logits + high), rtol=0, atol=1e-5)


def test_scales_run_one_after_another_from_largest_to_smallest():
    image = parity.nvidia_comb_image()
    seen = []

    def recording_forward(x):
        seen.append(tuple(x.shape[-2:]))
        return fake_forward(x)

    fused = hierarchical_fusion(recording_forward, image, [0.5, 2.0, 1.0, 0.25, 1.5])
    assert seen == [(70, 102), (52, 76), (35, 51), (17, 25), (8, 12)]
    assert list(fused.scale_logits) == [2.0, 1.5, 1.0, 0.5, 0.25]
    # The largest scale only starts the fusion; its attention is not part of it.
    assert list(fused.scale_attention) == [1.5, 1.0, 0.5, 0.25]


def test_scale_order_in_the_list_does_not_matter():
    image = parity.nvidia_comb_image()
    a = hierarchical_fusion(fake_forward, image, [0.5, 1.0, 2.0]).logits
    b = hierarchical_fusion(fake_forward, image, (2.0, 0.5, 1.0)).logits
    assert torch.equal(a, b)


def test_keep_scale_outputs_false_returns_no_per_scale_logits():
    image = parity.nvidia_comb_image()
    fused = hierarchical_fusion(fake_forward, image, [0.5, 1.0, 2.0], keep_scale_outputs=False)
    kept = hierarchical_fusion(fake_forward, image, [0.5, 1.0, 2.0])
    assert fused.scale_logits == {}
    assert torch.equal(fused.logits, kept.logits)


def test_reference_dict_and_tuple_outputs_are_accepted():
    image = parity.nvidia_comb_image()
    from_dict = hierarchical_fusion(parity.nvidia_fake_scale_forward, image, [0.5, 1.0])
    from_tuple = hierarchical_fusion(lambda x: tuple(fake_forward(x)), image, [0.5, 1.0])
    assert torch.equal(from_dict.logits, from_tuple.logits)


def test_forward_without_aux_output():
    image = parity.nvidia_comb_image()
    fused = hierarchical_fusion(lambda x: fake_forward(x)._replace(aux_logits=None), image, [0.5, 1.0, 2.0])
    assert fused.aux_logits is None
    assert torch.equal(fused.logits, hierarchical_fusion(fake_forward, image, [0.5, 1.0, 2.0]).logits)


@pytest.mark.parametrize("scales", [[0.5, 2.0], [1.0, 1.0], [0.0, 1.0]])
def test_bad_scale_lists_are_rejected(scales):
    with pytest.raises(ValueError):
        hierarchical_fusion(fake_forward, parity.nvidia_comb_image(), scales)


def test_two_scale_runs_low_scale_first():
    image = parity.nvidia_comb_image()
    seen = []

    def recording_forward(x):
        seen.append(tuple(x.shape[-2:]))
        return fake_forward(x)

    fused = two_scale_fusion(recording_forward, image, low_scale=0.5)
    assert seen == [(17, 25), (35, 51)]
    assert list(fused.scale_logits) == [0.5, 1.0] and list(fused.scale_attention) == [0.5]
    assert fused.scale_logits[0.5].shape[-2:] == (17, 25)


def test_two_scale_equals_hierarchical_over_low_and_one():
    image = parity.nvidia_comb_image()
    two = two_scale_fusion(fake_forward, image)
    hierarchical = hierarchical_fusion(fake_forward, image, [0.5, 1.0])
    torch.testing.assert_close(two.logits, hierarchical.logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(two.aux_logits, hierarchical.aux_logits, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Goldens: the reference's own nscale_forward / two_scale_forward run on the synthetic per-scale forward
# ----------------------------------------------------------------------------------------------------------------
def test_comb_ms3_pred(golden):
    fused = hierarchical_fusion(fake_forward, parity.nvidia_comb_image(), [0.5, 1.0, 2.0])
    assert_comb_close(fused.logits, golden["comb_ms3_pred"], "comb_ms3_pred")


def test_comb_ms5_pred_and_per_scale_shapes(golden):
    fused = hierarchical_fusion(fake_forward, parity.nvidia_comb_image(), [0.25, 0.5, 1.0, 1.5, 2.0])
    assert_comb_close(fused.logits, golden["comb_ms5_pred"], "comb_ms5_pred")
    shapes = json.loads((parity.NVIDIA_DIR / "golden_meta.json").read_text())["comb_ms5_shapes"]
    for name, shape in shapes.items():
        kind, _, scale = name.partition("_")
        if kind == "pred" and scale:
            assert list(fused.scale_logits[float(scale.removesuffix("x"))].shape) == shape, name
        elif kind == "attn":
            assert list(fused.scale_attention[float(scale.removesuffix("x"))].shape) == shape, name
    assert list(fused.logits.shape) == shapes["pred"]


def test_comb_ms2_pred(golden):
    fused = two_scale_fusion(fake_forward, parity.nvidia_comb_image(), low_scale=0.5)
    assert_comb_close(fused.logits, golden["comb_ms2_pred"], "comb_ms2_pred")


def test_comb_train_joint_pred_and_aux(golden):
    fused = two_scale_fusion(fake_forward, parity.nvidia_comb_image(), low_scale=0.5)
    assert_comb_close(fused.logits, golden["comb_train_joint_pred"], "comb_train_joint_pred")
    assert_comb_close(fused.aux_logits, golden["comb_train_joint_aux"], "comb_train_joint_aux")
