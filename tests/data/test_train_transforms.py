"""Training transforms: crop geometry limiting cases, label integrity, determinism by seed."""

import numpy as np
import pytest
import torch

from attnseg.data.transforms import (
    ColorJitter,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    build_train_transform,
    crop_start_containing,
    floored_size,
    padding_to_crop,
    random_crop_start,
    step_scales,
)


def _sample(height=20, width=30):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    label = (np.arange(height * width).reshape(height, width) % 19).astype(np.uint8)
    return {"image": image, "label": label}


def test_scaled_size_floors_and_never_vanishes():
    assert floored_size(1024, 2048, 0.5) == (512, 1024)
    assert floored_size(67, 131, 0.5) == (33, 65)
    assert floored_size(3, 3, 0.01) == (1, 1)


def test_padding_to_crop_limits():
    assert padding_to_crop(10, 10, 10, 10) == (0, 0)
    assert padding_to_crop(20, 5, 10, 10) == (0, 5)
    assert padding_to_crop(3, 30, 8, 8) == (5, 0)


def test_random_crop_start_range_and_exact_fit():
    rng = np.random.default_rng(0)
    assert random_crop_start(10, 10, rng) == 0
    starts = {random_crop_start(12, 10, rng) for _ in range(200)}
    assert starts == {0, 1, 2}
    with pytest.raises(ValueError):
        random_crop_start(5, 10, rng)


def test_crop_containing_point_always_covers_it_and_stays_inside():
    rng = np.random.default_rng(1)
    for point in [0, 1, 50, 98, 99]:
        for _ in range(50):
            start = crop_start_containing(100, 30, point, rng)
            assert 0 <= start <= 70
            assert start <= point < start + 30
    assert crop_start_containing(30, 30, 17, rng) == 0


def test_step_scales_matches_paddle_quarter_steps():
    assert step_scales(0.5, 2.0, 0.25) == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert step_scales(1.0, 1.0, 0.25) == [1.0]


def test_discrete_scale_draws_only_grid_values():
    scale = RandomScale((0.5, 2.0), step=0.5)
    sizes = {scale(_sample(20, 20), np.random.default_rng(s))["label"].shape for s in range(40)}
    assert sizes <= {(10, 10), (20, 20), (30, 30), (40, 40)}
    assert len(sizes) >= 3


def test_scale_keeps_label_values_nearest_and_moves_centroid():
    sample = _sample()
    sample["centroid"] = (10, 20)
    out = RandomScale((2.0, 2.0))(sample, np.random.default_rng(0))
    assert out["image"].shape == (40, 60, 3)
    assert set(np.unique(out["label"])) <= set(np.unique(sample["label"]))
    assert out["centroid"] == (20, 40)


def test_crop_pads_label_with_ignore_and_image_with_value():
    sample = _sample(5, 6)
    out = RandomCrop((8, 9), pad_value=(7, 8, 9), ignore_index=255)(sample, np.random.default_rng(0))
    assert out["label"].shape == (8, 9)
    assert (out["label"][5:] == 255).all() and (out["label"][:, 6:] == 255).all()
    assert (out["image"][6, 7] == [7, 8, 9]).all()
    np.testing.assert_array_equal(out["label"][:5, :6], sample["label"])


def test_crop_with_centroid_contains_the_centroid_pixel():
    sample = _sample(40, 60)
    sample["label"][:] = 0
    sample["label"][33, 55] = 7
    for seed in range(20):
        s = dict(sample, centroid=(33, 55))
        out = RandomCrop((10, 10))(s, np.random.default_rng(seed))
        assert (out["label"] == 7).sum() == 1


def test_flip_mirrors_image_and_label_together():
    sample = _sample()
    out = RandomHorizontalFlip(prob=1.0)(sample, np.random.default_rng(0))
    np.testing.assert_array_equal(out["label"], sample["label"][:, ::-1])
    np.testing.assert_array_equal(out["image"], sample["image"][:, ::-1])
    assert RandomHorizontalFlip(prob=0.0)(sample, np.random.default_rng(0)) is sample


def test_color_jitter_leaves_label_and_identity_when_zero():
    sample = _sample()
    assert ColorJitter()(sample, np.random.default_rng(0)) is sample
    out = ColorJitter(0.4, 0.4, 0.4, 0.1)(sample, np.random.default_rng(0))
    assert out["image"].dtype == np.uint8 and out["image"].shape == sample["image"].shape
    np.testing.assert_array_equal(out["label"], sample["label"])
    assert not np.array_equal(out["image"], sample["image"])


def test_pipeline_is_deterministic_per_seed_and_outputs_tensors():
    transform = build_train_transform(crop_size=(16, 24), brightness=0.25, contrast=0.25, saturation=0.25,
                                      hue=0.1, gaussian_blur=True)
    a = transform(_sample(), np.random.default_rng(5))
    b = transform(_sample(), np.random.default_rng(5))
    c = transform(_sample(), np.random.default_rng(6))
    assert a["image"].shape == (3, 16, 24) and a["image"].dtype == torch.float32
    assert a["label"].shape == (16, 24) and a["label"].dtype == torch.int64
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])
    valid = a["label"][a["label"] != 255]
    assert valid.max() < 19


def test_padding_with_mean_normalises_to_zero():
    transform = build_train_transform(crop_size=(30, 40), scale_range=(1.0, 1.0), horizontal_flip=False,
                                      mean=(100.0, 100.0, 100.0), std=(10.0, 10.0, 10.0))
    out = transform(_sample(20, 30), np.random.default_rng(0))
    assert torch.all(out["image"][:, 25:, :] == 0)
    assert torch.all(out["label"][25:, :] == 255)
