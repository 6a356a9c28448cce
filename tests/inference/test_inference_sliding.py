import pytest
import torch

from attnseg.inference.sliding import slide_inference, window_grid, window_starts
from attnseg.models.outputs import SegmentationOutput


def test_window_starts_reference_example():
    # PaddleSeg slide_ms3 golden: 256 wide, crop 128, stride 96 -> x = 0, 96, 128
    assert window_starts(256, 128, 96) == [(0, 128), (96, 224), (128, 256)]
    assert window_starts(128, 128, 96) == [(0, 128)]


@pytest.mark.parametrize(
    "length, crop, stride, expected",
    [
        (100, 128, 64, [(0, 100)]),  # image smaller than the crop: one window over the whole image
        (256, 128, 128, [(0, 128), (128, 256)]),  # exact tiling, no overlap
        (257, 128, 128, [(0, 128), (128, 256), (129, 257)]),  # one pixel more: last window shifted back
        (10, 4, 1, [(i, i + 4) for i in range(7)]),  # stride 1: every position
    ],
)
def test_window_starts_limits(length, crop, stride, expected):
    windows = window_starts(length, crop, stride)
    assert windows == expected
    covered = set()
    for start, end in windows:
        assert 0 <= start < end <= length and end - start == min(crop, length)
        covered.update(range(start, end))
    assert covered == set(range(length))


def test_window_starts_rejects_gaps():
    with pytest.raises(ValueError, match="stride"):
        window_starts(256, 64, 96)


def test_window_grid_row_major():
    grid = window_grid(128, 256, (128, 128), (96, 96))
    assert grid == [(0, 128, 0, 128), (0, 128, 96, 224), (0, 128, 128, 256)]


def _pointwise(x: torch.Tensor) -> torch.Tensor:
    weight = torch.arange(15, dtype=torch.float32).reshape(5, 3) / 7.0 - 1.0
    return torch.einsum("kc,nchw->nkhw", weight, x) + torch.tanh(x[:, :1])


def test_slide_equals_whole_for_pointwise_model():
    image = torch.randn(2, 3, 37, 53)
    whole = _pointwise(image)
    slid = slide_inference(_pointwise, image, crop_size=(16, 20), stride=(11, 13), num_classes=5)
    torch.testing.assert_close(slid, whole, rtol=1e-6, atol=1e-6)


def test_slide_averages_overlaps_and_accepts_outputs():
    # a model that returns the constant 1 everywhere plus an offset that differs per window: count-normalised
    calls = []

    def window_id_model(x):
        calls.append(x.shape[-2:])
        return SegmentationOutput(logits=torch.full((1, 2, *x.shape[-2:]), float(len(calls))))

    out = slide_inference(window_id_model, torch.zeros(1, 3, 8, 12), crop_size=(8, 8), stride=(8, 4), num_classes=2)
    assert calls == [torch.Size([8, 8])] * 2
    # window 1 covers x 0..7, window 2 covers x 4..11: overlap averages 1 and 2
    assert out[0, 0, 0, :4].tolist() == [1.0] * 4
    assert out[0, 0, 0, 4:8].tolist() == [1.5] * 4
    assert out[0, 0, 0, 8:].tolist() == [2.0] * 4


def test_slide_checks_channels():
    with pytest.raises(ValueError, match="expected"):
        slide_inference(_pointwise, torch.zeros(1, 3, 8, 8), crop_size=(4, 4), stride=(4, 4), num_classes=3)
