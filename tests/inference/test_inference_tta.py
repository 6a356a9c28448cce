import torch
import torch.nn.functional as F

from attnseg.inference.tta import tta_inference, tta_inference_with_output, tta_passes
from attnseg.models.outputs import SegmentationOutput


def _symmetric_model(x: torch.Tensor) -> torch.Tensor:
    # horizontally flip-equivariant: pointwise map plus a left-right symmetric blur
    kernel = torch.tensor([[1.0, 2.0, 1.0]]) / 4.0
    blurred = F.conv2d(x, kernel.expand(3, 1, 1, 3).contiguous(), padding=(0, 1), groups=3)
    weight = torch.linspace(-1, 1, 12).reshape(4, 3)
    return torch.einsum("kc,nchw->nkhw", weight, blurred)


def test_flip_of_flip_equivariant_model_equals_no_tta():
    image = torch.randn(2, 3, 9, 14)
    plain = tta_inference(_symmetric_model, image, fusion="logits")
    flipped = tta_inference(_symmetric_model, image, flip=True, fusion="logits")
    torch.testing.assert_close(flipped, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(tta_inference(_symmetric_model, image, flip=True), torch.softmax(plain, 1))


def test_flip_of_asymmetric_model_differs_and_is_mean():
    def shift_model(x):
        return torch.roll(x[:, :2], shifts=1, dims=3)

    image = torch.randn(1, 3, 4, 6)
    fused = tta_inference(shift_model, image, flip=True, fusion="logits")
    expected = (shift_model(image) + torch.flip(shift_model(torch.flip(image, dims=(3,))), dims=(3,))) / 2
    torch.testing.assert_close(fused, expected)
    assert not torch.allclose(fused, shift_model(image))


def test_scales_resize_and_average_softmax():
    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return SegmentationOutput(logits=x[:, :3] * 2.0)

    image = torch.randn(1, 3, 10, 20)
    result = tta_inference_with_output(model, image, scales=(0.5, 1.0, 1.5), flip=True)
    assert seen == [(5, 10), (5, 10), (10, 20), (10, 20), (15, 30), (15, 30)]
    assert result.num_passes == 6
    assert result.scores.shape == (1, 3, 10, 20)
    torch.testing.assert_close(result.scores.sum(1), torch.ones(1, 10, 20))
    assert isinstance(result.reference_output, SegmentationOutput)
    torch.testing.assert_close(result.reference_output.logits, image[:, :3] * 2.0)
    # each scale's pass upsampled with bilinear, align_corners=False
    half = F.interpolate(image, size=(5, 10), mode="bilinear", align_corners=False)[:, :3] * 2.0
    expected = torch.softmax(F.interpolate(half, size=(10, 20), mode="bilinear", align_corners=False), 1)
    expected = expected + torch.softmax(image[:, :3] * 2.0, 1)
    onehalf = F.interpolate(image, size=(15, 30), mode="bilinear", align_corners=False)[:, :3] * 2.0
    expected = expected + torch.softmax(F.interpolate(onehalf, size=(10, 20), mode="bilinear", align_corners=False), 1)
    torch.testing.assert_close(result.scores, expected / 3, rtol=1e-5, atol=1e-6)


def test_passes_order():
    assert tta_passes((0.5, 1.0), True) == [(0.5, False), (0.5, True), (1.0, False), (1.0, True)]
    assert tta_passes((1.0,), False) == [(1.0, False)]


def test_model_outputs_are_not_modified_in_place():
    outputs = []

    def model(x):
        outputs.append(x[:, :2].clone())
        return outputs[-1]

    image = torch.randn(1, 3, 5, 7)
    result = tta_inference_with_output(model, image, flip=True, fusion="logits")
    torch.testing.assert_close(outputs[0], image[:, :2])
    assert result.reference_output is outputs[0]
