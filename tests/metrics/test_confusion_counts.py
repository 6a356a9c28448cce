"""`ConfusionMatrix.update` counts CPU maps with numpy bins: the same counts as the long-tensor definition."""

import numpy as np
import pytest
import torch

from attnseg.metrics.confusion import ConfusionMatrix, _counts_numpy


def _definition(pred, target, k, ignore_index):
    """The counts by their definition: (K, K + 1), targets outside 0..K-1 or ignored not counted, predictions
    outside 0..K-1 in column K."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    counted = (target >= 0) & (target < k) & (target != ignore_index)
    pred, target = pred[counted], target[counted]
    pred = torch.where((pred >= 0) & (pred < k), pred, k)
    return torch.bincount(target * (k + 1) + pred, minlength=k * (k + 1)).view(k, k + 1).numpy()


@pytest.mark.parametrize("pred_dtype", [torch.uint8, torch.int16, torch.int64])
@pytest.mark.parametrize("target_dtype", [torch.uint8, torch.int32, torch.int64])
@pytest.mark.parametrize("ignore_index", [255, 2, -1])
def test_numpy_counts_equal_the_definition(pred_dtype, target_dtype, ignore_index):
    generator = torch.Generator().manual_seed(0)
    k = 7
    low = 0 if torch.uint8 in (pred_dtype, target_dtype) else -3
    pred = torch.randint(low, 12, (2, 30, 40), generator=generator)  # some predictions out of range
    target = torch.randint(low, 12, (2, 30, 40), generator=generator)
    target[0, :5] = 255
    pred, target = pred.to(pred_dtype), target.to(target_dtype)
    expected = _definition(pred, target, k, ignore_index)
    assert np.array_equal(_counts_numpy(pred.numpy(), target.numpy(), k, ignore_index), expected)
    matrix = ConfusionMatrix(k, ignore_index=ignore_index)
    matrix.update(pred, target)
    matrix.update(pred[1], target[1])
    expected = expected + _definition(pred[1], target[1], k, ignore_index)
    assert np.array_equal(matrix.confusion, expected[:, :k]) and np.array_equal(matrix.compute().missed, expected[:, k])
    assert matrix.num_images == 3


def test_counts_of_many_classes_and_non_contiguous_maps():
    generator = torch.Generator().manual_seed(1)
    k = 300  # more than uint8 ids hold; int16 maps
    pred = torch.randint(0, 320, (50, 64), generator=generator, dtype=torch.int16).t()  # transposed view
    target = torch.randint(0, 320, (64, 50), generator=generator, dtype=torch.int16).flip(0)
    expected = _definition(pred, target, k, 255)
    matrix = ConfusionMatrix(k)
    matrix.update(pred, target)
    assert np.array_equal(matrix.confusion, expected[:, :k]) and np.array_equal(matrix.compute().missed, expected[:, k])
