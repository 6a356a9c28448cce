"""`attnseg.inference.dump` and `attnseg.inference.confidence`: what `attnseg eval --dump` writes per image."""

import cv2
import numpy as np
import torch

from attnseg.data.labels import CITYSCAPES_PALETTE
from attnseg.inference.autolabel import pseudo_label
from attnseg.inference.confidence import confidence_of, log_probabilities, probabilities_of, unit_to_uint8
from attnseg.inference.dump import DEFAULT_DUMP_KINDS, PredictionDumper, compare_strip, scale_map_images
from attnseg.models.outputs import SegmentationOutput


def _read(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{path} missing"
    return image


def test_unit_encoding_is_round_255p_and_shared_with_autolabel():
    values = np.array([0.0, 0.5, 0.999, 1.0, 1.3, -0.2, 0.1], dtype=np.float32)
    assert unit_to_uint8(values).tolist() == [0, 128, 255, 255, 255, 0, 26]
    assert np.array_equal(unit_to_uint8(torch.from_numpy(values)), unit_to_uint8(values))
    probabilities = torch.softmax(torch.randn(5, 7, 9, generator=torch.Generator().manual_seed(0)), 0).numpy()
    _, confidence = pseudo_label(probabilities, 0.5)  # autolabel's _prob.png
    assert np.array_equal(confidence, unit_to_uint8(probabilities.max(0)))


def test_confidence_of_logits_probabilities_and_another_size():
    logits = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(1))
    probabilities = torch.softmax(logits, 1)
    assert torch.allclose(confidence_of(logits, False), probabilities.max(1).values)
    assert torch.equal(confidence_of(probabilities, True), probabilities.max(1).values)
    resized = confidence_of(logits, False, (12, 16))
    assert resized.shape == (2, 12, 16)
    expected = torch.nn.functional.interpolate(probabilities, (12, 16), mode="bilinear").max(1).values
    assert torch.allclose(resized, expected)
    assert torch.allclose(probabilities_of(log_probabilities(probabilities), False), probabilities, atol=1e-6)


def test_confidence_of_tall_batches_matches_the_softmax_block_by_block():
    # 37 rows: two full blocks of 16 and a short one; a batch of 2 and a transposed (non-contiguous) input.
    logits = 4 * torch.randn(2, 19, 53, 37, generator=torch.Generator().manual_seed(2)).transpose(2, 3)
    expected = torch.softmax(logits, 1).max(1).values
    got = confidence_of(logits, False)
    assert got.shape == (2, 37, 53)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(confidence_of(logits[:, :, :1], False), expected[:, :1], atol=1e-6)


def test_dumper_writes_confidence_and_per_scale_maps(tmp_path):
    generator = torch.Generator().manual_seed(2)
    scores = torch.randn(1, 19, 4, 6, generator=generator)  # logits at half the label size
    attention = torch.rand(1, 1, 2, 3, generator=generator)
    output = SegmentationOutput(logits=scores, scale_attention={0.5: attention},
                                scale_logits={0.5: torch.randn(1, 19, 2, 3, generator=generator), 1.0: scores})
    labels = torch.randint(0, 19, (1, 8, 12), generator=generator)
    predictions = torch.nn.functional.interpolate(scores, (8, 12), mode="bilinear").argmax(1).to(torch.uint8)
    batch = {"image": torch.zeros(1, 3, 8, 12), "label": labels, "name": ["city/a"]}
    assert "confidence" in DEFAULT_DUMP_KINDS
    dumper = PredictionDumper(tmp_path, CITYSCAPES_PALETTE, (0, 0, 0), (1, 1, 1), kinds=("confidence", "scales"))
    dumper(["city/a"], predictions.numpy(), {"batch": batch, "scores": scores, "are_probabilities": False,
                                             "output": output})
    confidence = _read(tmp_path / "confidence" / "city_a.png")
    assert confidence.shape == (8, 12) and confidence.dtype == np.uint8
    assert np.array_equal(confidence, unit_to_uint8(confidence_of(scores, False, (8, 12))[0]))
    assert np.array_equal(_read(tmp_path / "scales" / "city_a_attn_0.5x.png"), unit_to_uint8(attention[0, 0]))
    predicted = _read(tmp_path / "scales" / "city_a_pred_0.5x.png")[..., ::-1]
    assert np.array_equal(predicted, CITYSCAPES_PALETTE[output.scale_logits[0.5][0].argmax(0).numpy()])
    assert sorted(p.name for p in (tmp_path / "scales").iterdir()) == [
        "city_a_attn_0.5x.png", "city_a_pred_0.5x.png", "city_a_pred_1x.png"]
    assert not (tmp_path / "color").exists()


def test_scale_map_images_and_compare_strip():
    attention = {0.5: np.array([[0.0, 1.0]], np.float32)}
    names = [name for name, _ in scale_map_images(attention, {2.0: np.zeros((1, 2), np.uint8)}, CITYSCAPES_PALETTE)]
    assert names == ["attn_0.5x", "pred_2x"]
    image = np.full((2, 3, 3), 9, np.uint8)
    label = np.array([[0, 1, 255], [2, 2, 2]])
    strip = compare_strip(image, label, image + 1, CITYSCAPES_PALETTE)
    assert strip.shape == (2, 9, 3)
    truth = np.where((label < 19)[..., None], CITYSCAPES_PALETTE[label % 19], 0)  # ignored pixels are black
    assert np.array_equal(strip[:, 3:6], truth)
    assert compare_strip(image, None, image, CITYSCAPES_PALETTE).shape == (2, 6, 3)


def test_colorize_large_maps_match_the_table_lookup():
    from attnseg.inference.dump import colorize

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, (300, 400)).astype(np.uint8)  # large enough for the LUT path, 255s included
    table = np.zeros((256, 3), np.uint8)
    table[:19] = CITYSCAPES_PALETTE
    assert np.array_equal(colorize(ids, CITYSCAPES_PALETTE), table[ids])
    assert np.array_equal(colorize(ids[:10, :10], CITYSCAPES_PALETTE), table[ids[:10, :10]])


def test_compare_strip_shrinks_wide_panels():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 200, 3)).astype(np.uint8)
    label = np.repeat(np.arange(20), 10)[None].repeat(40, axis=0)  # 10-pixel columns of classes 0..18 and 19
    label[:, -10:] = 255
    strip = compare_strip(image, label, image, CITYSCAPES_PALETTE, max_panel_width=100)
    assert strip.shape == (20, 300, 3)
    truth = strip[:, 100:200]
    # nearest resizing keeps one class per 5-pixel column, ignored columns black; no colour is blended
    for column in range(0, 100, 5):
        klass = label[0, column * 2]
        expected = CITYSCAPES_PALETTE[klass] if klass < 19 else (0, 0, 0)
        assert (truth[:, column:column + 5] == np.asarray(expected, np.uint8)).all()
    full = compare_strip(image, label, image, CITYSCAPES_PALETTE, max_panel_width=None)
    assert full.shape == (40, 600, 3)
