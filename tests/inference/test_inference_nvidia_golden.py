"""`evaluate_model` with NVIDIA-layout MscaleOCR weights against the NVIDIA golden 3-scale prediction.

The README of the NVIDIA golden set describes `evalcs_*` / `evalmap_*` arrays (the reference `eval_minibatch`
output), but the stored npz does not contain them. What it does contain is `ms3_pred`, the full-resolution
logits of `nscale_forward([0.5, 1.0, 2.0])`, and `input_label`; `eval_minibatch` without flip predicts
argmax(softmax(ms3_pred)) and histograms it with `fast_hist` (rows ground truth). That is recomputed here from the
golden logits with numpy and compared with what `evaluate_model` predicts and counts.
"""

import numpy as np
import pytest
import torch

import parity
from attnseg.inference.evaluate import evaluate_model
from attnseg.models import create_model
from attnseg.models.mscale.model import convert_nvidia_state_dict


def _fast_hist(prediction: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    mask = (label >= 0) & (label < num_classes)
    return np.bincount(num_classes * label[mask].astype(int) + prediction[mask], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def test_evaluate_ms3_matches_nvidia_golden():
    golden = parity.nvidia_golden()
    model = create_model("mscale_ocr_hrnet_w48", num_classes=parity.NUM_CLASSES)
    model.load_state_dict(convert_nvidia_state_dict(parity.nvidia_filled_checkpoint()), strict=True)
    image, label = parity.nvidia_image(), parity.nvidia_label()
    assert np.array_equal(label.numpy(), golden["input_label"])
    seen = {}

    def keep(names, predictions, extras):
        seen["pred"] = predictions
        seen["prob"] = torch.softmax(extras["scores"], 1).max(1).values.numpy()

    metrics = evaluate_model(model, [{"image": image, "label": label, "name": ["golden"]}], parity.NUM_CLASSES,
                             scales=(0.5, 1.0, 2.0), progress=False, on_prediction=keep)
    reference_logits = torch.from_numpy(golden["ms3_pred"])
    reference_pred = reference_logits.argmax(1).numpy()
    parity.assert_argmax_agrees(seen["pred"].astype(np.int64), reference_pred, 0.999, name="evalcs predictions")
    reference_prob = torch.softmax(reference_logits, 1).max(1).values.numpy()
    assert np.abs(seen["prob"] - reference_prob).max() <= 1e-4
    hist = _fast_hist(reference_pred.ravel(), label.numpy().ravel(), parity.NUM_CLASSES)
    moved = np.abs(metrics.confusion - hist).sum() / 2 / hist.sum()
    assert moved <= 0.002, f"confusion differs from the reference histogram in {moved:.4%} of pixels"
    with np.errstate(invalid="ignore", divide="ignore"):
        iu = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    np.testing.assert_allclose(metrics.class_iou, iu, atol=2e-3)  # NaN == NaN for absent classes
    assert metrics.miou == pytest.approx(np.nanmean(iu), abs=2e-3)
