"""`Predictor.predict`: fused probabilities, confidence and MscaleOCR attention on every route, refused where
undefined."""

import numpy as np
import pytest
import torch
from torch import nn

from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from attnseg.errors import ConfigError
from attnseg.inference.predictor import Predictor, Prediction
from attnseg.inference.sliding import slide_inference
from attnseg.inference.tta import tta_inference
from attnseg.models import create_model
from attnseg.models.outputs import SegmentationOutput

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
IMAGE = np.random.default_rng(0).integers(0, 256, (26, 38, 3), dtype=np.uint8)


class PlainConv(nn.Module):
    """No scale fusion: one 3x3 conv, so windows and full image differ at window borders."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x):
        return SegmentationOutput(logits=self.conv(x))


def _normalised(image=IMAGE) -> torch.Tensor:
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    return ((x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1))[None]


def _predictor(model, **kwargs) -> Predictor:
    return Predictor(model, mean=MEAN, std=STD, class_names=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE,
                     model=model, max_memory_bytes=None, **kwargs)


@pytest.fixture(scope="module")
def mscale():
    torch.manual_seed(0)
    return create_model("mscale_ocr_hrnet_w18_small", num_classes=19, eval_scales=(0.5, 1.0)).eval()


def _check(prediction: Prediction, expected: torch.Tensor) -> None:
    """Probabilities equal `expected` (K, H, W), sum to one, give the labels; confidence is their maximum."""
    np.testing.assert_allclose(prediction.probabilities, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(prediction.probabilities.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(prediction.labels, prediction.probabilities.argmax(0))
    np.testing.assert_allclose(prediction.confidence, prediction.probabilities.max(0), atol=1e-7)
    assert prediction.confidence.shape == IMAGE.shape[:2] and prediction.confidence.dtype == np.float32


def test_probabilities_of_the_fused_prediction_on_every_torch_route(mscale):
    x = _normalised()
    conv = PlainConv()
    with torch.inference_mode():
        logits = conv(x).logits
        flipped = torch.flip(conv(torch.flip(x, dims=(3,))).logits, dims=(3,))
        windows = slide_inference(conv, x, (16, 16), (10, 10), 19)
        hierarchical = mscale(x, scales=(0.5, 1.0)).logits
    routes = [
        (_predictor(conv), torch.softmax(logits, 1)),
        (_predictor(conv, flip=True), (torch.softmax(logits, 1) + torch.softmax(flipped, 1)) / 2),
        (_predictor(conv, flip=True, fusion="logits"), torch.softmax((logits + flipped) / 2, 1)),
        (_predictor(conv, slide=True, crop_size=(16, 16), stride=(10, 10)), torch.softmax(windows, 1)),
        (_predictor(mscale, scales=(0.5, 1.0)), torch.softmax(hierarchical, 1)),
    ]
    for predictor, expected in routes:
        _check(predictor.predict(IMAGE, probabilities=True, confidence=True), expected[0])
    # the windows' probabilities are not the whole image's: the route really ran windows
    assert not torch.allclose(torch.softmax(windows, 1), torch.softmax(logits, 1), atol=1e-3)
    averaged = _predictor(conv, scales=(0.5, 1.0), multi_scale="average").predict(IMAGE, confidence=True)
    with torch.inference_mode():
        expected = tta_inference(conv, x, scales=(0.5, 1.0), fusion="softmax")[0].max(0).values
    assert averaged.probabilities is None  # only what was asked for
    np.testing.assert_allclose(averaged.confidence, expected.numpy(), atol=1e-6)
    assert not np.allclose(averaged.confidence, torch.softmax(logits, 1)[0].max(0).values.numpy(), atol=1e-3)
    labels, probabilities = _predictor(conv)(IMAGE, return_probabilities=True)  # the old call still answers
    assert np.array_equal(labels, probabilities.argmax(0))


@pytest.mark.parametrize("output", ["logits", "softmax"])
def test_backend_probabilities_are_the_models_whatever_the_export_outputs(output):
    conv = PlainConv()

    def backend(array):
        with torch.inference_mode():
            logits = conv(torch.from_numpy(array)).logits
        return (torch.softmax(logits, 1) if output == "softmax" else logits).numpy()

    sidecar = _sidecar(output)
    with torch.inference_mode():
        expected = torch.softmax(conv(_normalised()).logits, 1)[0]
    for kwargs in ({}, {"slide": True, "crop_size": (16, 16), "stride": (16, 16)}):
        prediction = Predictor.from_numpy_backend(backend, sidecar, **kwargs).predict(IMAGE, probabilities=True,
                                                                                      confidence=True)
        if not kwargs:  # a softmax export's probabilities come back unchanged, not softmaxed a second time
            _check(prediction, expected)
        np.testing.assert_allclose(prediction.probabilities.sum(0), 1.0, atol=1e-5)
    flipped = Predictor.from_numpy_backend(backend, sidecar, flip=True).predict(IMAGE, confidence=True)
    assert flipped.confidence.max() <= 1.0 + 1e-6 and flipped.confidence.min() >= 1.0 / 19 - 1e-6


def test_an_argmax_export_has_labels_but_no_probabilities():
    conv = PlainConv()

    def backend(array):
        with torch.inference_mode():
            labels = conv(torch.from_numpy(array)).logits.argmax(1)
        return torch.nn.functional.one_hot(labels, 19).permute(0, 3, 1, 2).float().numpy()

    predictor = Predictor.from_numpy_backend(backend, _sidecar("argmax"))
    with torch.inference_mode():
        assert np.array_equal(predictor(IMAGE), conv(_normalised()).logits.argmax(1)[0].numpy())
    for kwargs in ({"probabilities": True}, {"confidence": True}):
        with pytest.raises(ConfigError, match="--output softmax"):
            predictor.predict(IMAGE, **kwargs)


def test_attention_maps_of_mscale_are_those_of_its_fusion(mscale):
    predictor = _predictor(mscale, scales=(0.5, 1.0))
    prediction = predictor.predict(IMAGE, attention=True)
    with torch.inference_mode():
        output = mscale(_normalised(), scales=(0.5, 1.0), keep_scale_outputs=True)
    assert list(prediction.attention) == [0.5]
    expected = output.scale_attention[0.5][0, 0].numpy()
    assert prediction.attention[0.5].shape == expected.shape == (13, 19)
    np.testing.assert_allclose(prediction.attention[0.5], expected, atol=1e-6)
    assert 0.0 < prediction.attention[0.5].min() and prediction.attention[0.5].max() < 1.0
    assert sorted(prediction.scale_labels) == [0.5, 1.0]
    assert np.array_equal(prediction.scale_labels[1.0], output.scale_logits[1.0][0].argmax(0).numpy())
    assert np.array_equal(prediction.labels, predictor(IMAGE))  # keeping per-scale outputs changes nothing
    assert predictor.predict(IMAGE).attention == {}  # only on request


def test_attention_is_refused_where_it_does_not_exist(mscale):
    with pytest.raises(ConfigError, match="PlainConv does not fuse scales"):
        _predictor(PlainConv()).predict(IMAGE, attention=True)
    with pytest.raises(ConfigError, match="single scale"):
        _predictor(mscale, scales=(1.0,)).predict(IMAGE, attention=True)
    with pytest.raises(ConfigError, match="not assembled over sliding windows"):
        _predictor(mscale, scales=(0.5, 1.0), slide=True, crop_size=(16, 16)).predict(IMAGE, attention=True)
    backend = Predictor.from_numpy_backend(lambda a: np.zeros((1, 19, *a.shape[2:]), np.float32), _sidecar("logits"))
    with pytest.raises(ConfigError, match="exported model"):
        backend.predict(IMAGE, attention=True)


def _sidecar(output: str):
    from types import SimpleNamespace

    return SimpleNamespace(mean=MEAN, std=STD, class_names=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE,
                           output=output)
