import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from attnseg.errors import DatasetError, WeightsError
from attnseg.inference.predictor import Predictor, resolve_weights
from attnseg.models import create_model
from attnseg.weights import save_checkpoint

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("mscale_ocr_hrnet_w18_small", num_classes=19, eval_scales=(0.5, 1.0)).eval()
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run / "checkpoints" / "best", model, "mscale_ocr_hrnet_w18_small", {"eval_scales": [0.5, 1.0]},
                    CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, MEAN, STD)
    return run, model


def test_round_trip_matches_direct_model(checkpoint):
    run, model = checkpoint
    predictor = Predictor.from_weights(run, device="cpu")
    assert predictor.recipe.scales == (0.5, 1.0) and predictor.num_classes == 19
    image = np.random.default_rng(0).integers(0, 256, (29, 43, 3), dtype=np.uint8)
    labels, probabilities = predictor(image, return_probabilities=True)
    assert labels.shape == (29, 43) and labels.dtype == np.uint8
    assert probabilities.shape == (19, 29, 43)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    with torch.inference_mode():
        expected = model(x[None]).logits.argmax(1)[0].numpy()
    assert (labels == expected).mean() > 0.999
    # grayscale, RGBA, PIL and file inputs give the same answer as their RGB equivalent (single scale: cheaper)
    predictor = Predictor.from_weights(run, device="cpu", scales=(1.0,))
    labels = predictor(image)
    gray = image[:, :, 0]
    assert np.array_equal(predictor(gray), predictor(np.repeat(gray[:, :, None], 3, axis=2)))
    rgba = np.concatenate([image, np.full((29, 43, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(predictor(rgba), labels)
    assert np.array_equal(predictor(Image.fromarray(image)), labels)
    path = run / "image.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    assert np.array_equal(predictor(path), labels)
    blended = predictor.overlay(image, labels, alpha=1.0)
    assert np.array_equal(blended, CITYSCAPES_PALETTE[labels])


def test_flip_and_backend_seam(checkpoint):
    run, model = checkpoint
    predictor = Predictor.from_weights(run / "checkpoints" / "best.safetensors", scales=(1.0,), flip=True)
    image = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    labels = predictor(image)
    def backend(array):
        with torch.inference_mode():
            return model(torch.from_numpy(array), scales=(1.0,)).logits.numpy()

    from attnseg.weights import read_sidecar

    other = Predictor.from_numpy_backend(backend, read_sidecar(run / "checkpoints" / "best"), flip=True)
    assert (other(image) == labels).mean() > 0.999


def test_errors(tmp_path, checkpoint):
    run, _ = checkpoint
    with pytest.raises(WeightsError):
        resolve_weights(tmp_path)
    predictor = Predictor.from_weights(run)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot be decoded"):
        predictor(bad)


def test_resolve_weights_finds_run_folders(tmp_path):
    for folder in (tmp_path / "a" / "checkpoints", tmp_path / "demo" / "run" / "checkpoints"):
        folder.mkdir(parents=True)
        for suffix in (".safetensors", ".json"):
            (folder / f"last{suffix}").write_text("")
    (tmp_path / "a" / "checkpoints" / "best.safetensors").write_text("")
    (tmp_path / "a" / "checkpoints" / "best.json").write_text("")
    assert resolve_weights(tmp_path / "a") == tmp_path / "a" / "checkpoints" / "best"
    assert resolve_weights(tmp_path / "a" / "checkpoints") == tmp_path / "a" / "checkpoints" / "best"
    assert resolve_weights(tmp_path / "demo") == tmp_path / "demo" / "run" / "checkpoints" / "last"


def test_from_weights_takes_window_settings(checkpoint):
    run, _ = checkpoint
    image = np.random.default_rng(2).integers(0, 256, (40, 72, 3), dtype=np.uint8)
    whole = Predictor.from_weights(run, device="cpu", scales=(1.0,), max_memory_bytes=None)
    windows = Predictor.from_weights(run, device="cpu", scales=(1.0,), slide=True, crop_size=(40, 48), stride=(32, 24))
    labels = windows(image)
    assert windows.last_plan.mode == "slide" and windows.last_plan.crop_size == (40, 48)
    assert whole.plan(40, 72).mode == "whole" and (labels == whole(image)).mean() > 0.9
    with pytest.raises(ValueError, match="crop_size"):
        Predictor.from_weights(run, device="cpu", crop_size=(0, 8))
