import pytest

from attnseg.errors import ConfigError
from attnseg.inference.scales import (
    equal_difference_scales,
    equal_ratio_scales,
    fit_longer_side,
    parse_scales,
    rounded_length,
    rounded_size,
)


def test_equal_ratio_series():
    assert equal_ratio_scales(0.5, 2.0, 3) == (0.5, 1.0, 2.0)
    assert equal_ratio_scales(0.25, 2.0, 4) == (0.25, 0.5, 1.0, 2.0)
    assert equal_ratio_scales(1.0, 1.0, 1) == (1.0,)
    # limiting case: low == high with several entries repeats the scale
    assert equal_ratio_scales(1.0, 1.0, 2) == (1.0, 1.0)


def test_equal_difference_series():
    assert equal_difference_scales(0.5, 2.5, 0.5) == (0.5, 1.0, 1.5, 2.0, 2.5)
    assert equal_difference_scales(0.75, 1.25, 0.25) == (0.75, 1.0, 1.25)
    assert equal_difference_scales(1.0, 1.0, 0.5) == (1.0,)
    # floating-point steps that do not accumulate noise
    assert equal_difference_scales(0.1, 0.3, 0.1) == (0.1, 0.2, 0.3)


@pytest.mark.parametrize(
    "call",
    [
        lambda: equal_ratio_scales(0.0, 2.0, 3),
        lambda: equal_ratio_scales(2.0, 1.0, 3),
        lambda: equal_ratio_scales(0.5, 2.0, 0),
        lambda: equal_ratio_scales(0.5, 2.0, 1),
        lambda: equal_difference_scales(0.5, 2.0, 0.0),
        lambda: equal_difference_scales(0.5, 2.0, 0.4),
    ],
)
def test_bad_series_raise(call):
    with pytest.raises(ConfigError):
        call()


def test_parse_scales_forms():
    assert parse_scales("0.5,1.0,2.0") == (0.5, 1.0, 2.0)
    assert parse_scales("1") == (1.0,)
    assert parse_scales(" ratio:0.5:2.0:3 ") == (0.5, 1.0, 2.0)
    assert parse_scales("diff:0.5:2.5:0.5") == (0.5, 1.0, 1.5, 2.0, 2.5)


@pytest.mark.parametrize("text", ["", "a,b", "0.5,-1", "ratio:0.5:2", "geom:1:2:3", "diff:0.5:2.5:x", "0,1"])
def test_parse_scales_rejects(text):
    with pytest.raises(ConfigError):
        parse_scales(text)


def test_scaled_size_rounding():
    # 67 * 0.5 = 33.5: PaddleSeg rounds half up, Python's round (NVIDIA) to even
    assert rounded_length(67, 0.5) == 34
    assert rounded_length(67, 0.5, "half_even") == 34  # 33.5 -> 34 (even)
    assert rounded_length(65, 0.5, "half_even") == 32  # 32.5 -> 32 (even)
    assert rounded_length(65, 0.5) == 33
    assert rounded_size(1024, 2048, 0.5) == (512, 1024)
    assert rounded_size(1024, 2048, 1.0) == (1024, 2048)
    assert rounded_size(1, 1, 0.01) == (1, 1)  # never zero


def test_fit_longer_side():
    assert fit_longer_side(1024, 2048, 1024) == (512, 1024)
    assert fit_longer_side(2048, 1024, 1024) == (1024, 512)
    assert fit_longer_side(100, 100, 50) == (50, 50)
