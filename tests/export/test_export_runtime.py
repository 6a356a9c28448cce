"""Runtime backends: torch fp32/bf16 fast path, ONNX Runtime, OpenVINO (when installed), one interface."""

import numpy as np
import pytest
import torch

from attnseg.benchmark import benchmark_image, calibrate_batchnorm
from attnseg.errors import AttnsegError
from attnseg.export.onnx import example_input, export_onnx, label_agreement, relative_error
from attnseg.export.runtime import (
    OnnxRuntimeBackend,
    TorchBackend,
    detect_backend,
    labels_to_one_hot,
    load_backend,
)
from attnseg.inference.fast_path import prepare_fast_model
from attnseg.models import create_model


@pytest.fixture(scope="module")
def calibrated_psanet():
    # Random weights with BatchNorm statistics from a synthetic street scene: varied labels, not one class.
    torch.manual_seed(0)
    model = create_model("psanet_r18_narrow")
    calibrate_batchnorm(model, benchmark_image(64, 128, seed=1))
    return model


@pytest.fixture(scope="module")
def psanet_onnx(calibrated_psanet, tmp_path_factory):
    path = tmp_path_factory.mktemp("rt") / "psanet.onnx"
    export_onnx(calibrated_psanet, path, (1, 3, 64, 128), output="logits")
    return path


def _reference(model, images):
    with torch.inference_mode():
        return model(torch.from_numpy(images)).logits.numpy()


def test_labels_to_one_hot_round_trip():
    labels = np.array([[[0, 2], [1, 2]]], dtype=np.uint8)
    scores = labels_to_one_hot(labels, 3)
    assert scores.shape == (1, 3, 2, 2) and scores.dtype == np.float32
    assert (scores.argmax(1) == labels).all() and (scores.sum(1) == 1).all()


def test_torch_backend_fp32_equals_model_and_bf16_agrees(calibrated_psanet):
    images = example_input((1, 3, 64, 128), seed=2).numpy()
    expected = _reference(calibrated_psanet, images)
    assert len(np.unique(expected.argmax(1))) > 3, "calibrated model should predict several classes"
    fp32 = TorchBackend(calibrated_psanet, "fp32")
    np.testing.assert_array_equal(fp32(images), expected)
    image = benchmark_image(64, 128, seed=7)
    from attnseg.inference.preprocess import normalize_image

    scene = normalize_image(image, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])[None].numpy()
    bf16 = TorchBackend(create_model("psanet_r18_narrow"), "bf16")
    bf16.model.load_state_dict(calibrated_psanet.state_dict())
    conv_weight = next(p for p in bf16.model.parameters() if p.ndim == 4)
    assert bf16.channels_last and conv_weight.is_contiguous(memory_format=torch.channels_last)
    reference, fast = fp32(scene), bf16(scene)
    assert relative_error(fast, reference) < 0.2
    # This random-weight model is unsure everywhere (median top-2 logit margin ~0.17), so bf16 rounding flips
    # ~10% of pixels (measured 89%); a flip is only possible where the fp32 margin is within twice the bf16 error.
    agreement = label_agreement(bf16.labels(scene), fp32.labels(scene))
    assert agreement >= 0.8
    ordered = np.sort(reference, axis=1)
    margin = ordered[:, -1] - ordered[:, -2]
    flipped = reference.argmax(1) != fast.argmax(1)
    assert (margin[flipped] <= 2 * np.abs(fast - reference).max()).all()


def test_onnxruntime_backend_interface(calibrated_psanet, psanet_onnx):
    images = example_input((1, 3, 64, 128), seed=4).numpy()
    backend = load_backend(psanet_onnx)
    assert isinstance(backend, OnnxRuntimeBackend) and backend.output == "logits" and backend.num_classes == 19
    assert relative_error(backend(images), _reference(calibrated_psanet, images)) <= 1e-4
    assert backend.scores(images).shape == (1, 19, 64, 128)
    assert backend.labels(images).dtype == np.uint8
    assert backend.sidecar.mean == [123.675, 116.28, 103.53]


def test_detect_and_bad_backend_options(psanet_onnx, tmp_path):
    assert detect_backend("m.onnx") == "onnxruntime" and detect_backend("m.xml") == "openvino"
    assert detect_backend(tmp_path) == "torch"
    with pytest.raises(AttnsegError, match="fp32 only"):
        load_backend(psanet_onnx, "onnxruntime", precision="bf16")
    with pytest.raises(AttnsegError, match="torch backend only"):
        load_backend(psanet_onnx, compile=True)
    with pytest.raises(AttnsegError, match="unknown backend"):
        load_backend(psanet_onnx, "tensorrt")


def test_prepare_fast_model_keeps_the_module():
    model = create_model("psanet_r18_narrow")
    assert prepare_fast_model(model, channels_last=True) is model and not model.training


def test_openvino_ir_fp32_parity_and_bf16_agreement(calibrated_psanet, psanet_onnx, tmp_path):
    openvino = pytest.importorskip("openvino")
    from attnseg.export.openvino import export_openvino
    from attnseg.export.runtime import OpenVinoBackend

    sidecar = export_openvino(psanet_onnx, tmp_path / "psanet.xml")
    assert sidecar.model_format == "openvino" and (tmp_path / "psanet.bin").is_file()
    images = example_input((1, 3, 64, 128), seed=6).numpy()
    expected = _reference(calibrated_psanet, images)
    fp32 = load_backend(tmp_path / "psanet.xml", precision="fp32")
    assert isinstance(fp32, OpenVinoBackend)
    assert relative_error(fp32(images), expected) <= 1e-4
    bf16 = OpenVinoBackend(tmp_path / "psanet.xml", "bf16")
    if "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert relative_error(bf16(images), expected) > 1e-4, "the bf16 hint must really change the arithmetic"
    else:  # an AVX2-only CPU: OpenVINO compiles the bf16 hint to fp32 (the machine kind's CPU varies)
        assert relative_error(bf16(images), expected) <= 1e-4
    assert label_agreement(bf16.labels(images), expected.argmax(1)) >= 0.8


def test_openvino_from_module_argmax(calibrated_psanet, tmp_path):
    pytest.importorskip("openvino")
    from attnseg.export.openvino import export_openvino
    from attnseg.export.runtime import OpenVinoBackend

    export_openvino(calibrated_psanet, tmp_path / "m", (1, 3, 48, 64), output="argmax", precision="bf16")
    backend = OpenVinoBackend(tmp_path / "m.xml", "fp32")
    assert backend.sidecar.precision == "bf16" and backend.precision == "fp32"  # the caller's hint wins
    images = example_input((1, 3, 48, 64), seed=8)
    labels = backend(images.numpy())
    expected = _reference(calibrated_psanet, images.numpy()).argmax(1)
    assert labels.dtype == np.uint8 and label_agreement(labels, expected) == 1.0
