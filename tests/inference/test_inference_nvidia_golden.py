"""`evaluate_model` with NVIDIA-layout MscaleOCR weights against the NVIDIA golden 3-scale prediction.

The README of the NVIDIA golden set describes `evalcs_*` / `evalmap_*` arrays (the reference `eval_minibatch`
output), but the stored npz does not contain them; `golden_meta.json` keeps their mIoU and Acc, which the recipe
tests below reproduce from the configs' own eval sections. What it does contain is `ms3_pred`, the full-resolution
logits of `nscale_forward([0.5, 1.0, 2.0])`, and `input_label`; `eval_minibatch` without flip predicts
argmax(softmax(ms3_pred)) and histograms it with `fast_hist` (rows ground truth). That is recomputed here from the
golden logits with numpy and compared with what `evaluate_model` predicts and counts.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import parity
from attnseg.config import load_config
from attnseg.inference.evaluate import evaluate_model
from attnseg.models import create_model
from attnseg.models.mscale.nvidia import convert_nvidia_state_dict


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


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def golden_model():
    model = create_model("mscale_ocr_hrnet_w48", num_classes=parity.NUM_CLASSES)
    model.load_state_dict(convert_nvidia_state_dict(parity.nvidia_filled_checkpoint()), strict=True)
    return model


@pytest.mark.parametrize("recipe, prefix", [("nvidia_cityscapes_fine.yaml", "evalcs"),
                                            ("nvidia_mapillary_eval.yaml", "evalmap")])
def test_recipe_defaults_reproduce_nvidia_eval_metrics(golden_model, recipe, prefix):
    """The NVIDIA recipes' own eval sections (scales, flip, fusion) give the reference `eval_minibatch` metrics:
    evalcs = 0.5/1/2 without flip (Cityscapes), evalmap = 0.25/0.5/1/2 + flip fused as logits (Mapillary)."""
    eval_cfg = load_config(CONFIGS / recipe).eval
    meta = json.loads((parity.NVIDIA_DIR / "golden_meta.json").read_text())
    expected_scales = [0.5, 1.0, 2.0] if prefix == "evalcs" else [0.25, 0.5, 1.0, 2.0]
    assert list(eval_cfg.scales) == expected_scales and eval_cfg.flip == (prefix == "evalmap")
    assert eval_cfg.fusion == "logits"  # eval_minibatch averages flipped passes as logits
    batch = {"image": parity.nvidia_image(), "label": parity.nvidia_label(), "name": ["golden"]}
    metrics = evaluate_model(golden_model, [batch], parity.NUM_CLASSES, scales=eval_cfg.scales,
                             multi_scale=eval_cfg.multi_scale, flip=eval_cfg.flip, fusion=eval_cfg.fusion,
                             mode=eval_cfg.mode, precision=eval_cfg.precision, progress=False)
    assert metrics.miou == pytest.approx(meta[f"{prefix}_mean_iu_nanmean"], rel=1e-6)
    assert metrics.acc == pytest.approx(meta[f"{prefix}_acc"], rel=1e-6)

