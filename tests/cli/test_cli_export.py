"""CLI: attnseg export, predict/eval --backend onnxruntime equal to PyTorch."""

import json

import cv2
import numpy as np
import pytest
import torch

from attnseg.benchmark import benchmark_image, calibrate_batchnorm
from attnseg.cli.main import main
from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from attnseg.models import create_model
from attnseg.weights import save_checkpoint

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_cli")
    torch.manual_seed(0)
    model = create_model("psanet_r18_narrow")
    calibrate_batchnorm(model, benchmark_image(64, 96, seed=1))
    save_checkpoint(folder / "run" / "checkpoints" / "best", model, "psanet_r18_narrow", {}, CITYSCAPES_CLASSES,
                    CITYSCAPES_PALETTE, MEAN, STD)
    cv2.imwrite(str(folder / "scene.png"), benchmark_image(64, 96, seed=5)[..., ::-1])
    return folder


def test_export_then_predict_with_onnxruntime_equals_pytorch(work, capsys):
    code = main(["export", str(work / "run"), "--out", str(work / "psanet.onnx"), "--input-shape", "1", "3", "64",
                 "96", "--output", "logits", "--verify"])
    out = capsys.readouterr().out
    assert code == 0 and "relative error" in out and (work / "psanet.onnx.json").is_file()
    sidecar = json.loads((work / "psanet.onnx.json").read_text())
    assert sidecar["model"] == "psanet_r18_narrow" and sidecar["input_shape"] == [1, 3, 64, 96]
    assert main(["predict", str(work / "run"), str(work / "scene.png"), "--out", str(work / "torch"),
                 "--no-progress"]) == 0
    assert main(["predict", str(work / "psanet.onnx"), str(work / "scene.png"), "--out", str(work / "ort"),
                 "--backend", "onnxruntime", "--no-progress"]) == 0
    expected = cv2.imread(str(work / "torch" / "scene_labels.png"), cv2.IMREAD_UNCHANGED)
    actual = cv2.imread(str(work / "ort" / "scene_labels.png"), cv2.IMREAD_UNCHANGED)
    assert len(np.unique(expected)) > 2
    np.testing.assert_array_equal(actual, expected)


def test_predict_backend_refuses_other_scales(work, capsys):
    from attnseg.errors import AttnsegError
    from attnseg.export.runtime import predictor_from_export

    if not (work / "psanet.onnx").is_file():
        assert main(["export", str(work / "run"), "--out", str(work / "psanet.onnx"), "--input-shape", "1", "3", "64",
                     "96", "--output", "logits"]) == 0
    with pytest.raises(AttnsegError, match="fixed at export"):
        predictor_from_export(work / "psanet.onnx", "onnxruntime", scales=(0.5, 1.0))


def test_export_argmax_openvino_cli(work, capsys):
    pytest.importorskip("openvino")
    code = main(["export", str(work / "run"), "--format", "openvino", "--out", str(work / "ov" / "psanet.xml"),
                 "--input-shape", "1", "3", "64", "96"])
    assert code == 0 and (work / "ov" / "psanet.bin").is_file()
    sidecar = json.loads((work / "ov" / "psanet.xml.json").read_text())
    assert sidecar["output"] == "argmax" and sidecar["output_dtype"] == "uint8" and sidecar["precision"] == "fp32"
    assert main(["predict", str(work / "ov" / "psanet.xml"), str(work / "scene.png"), "--out", str(work / "ovp"),
                 "--backend", "openvino", "--no-progress"]) == 0
    expected = cv2.imread(str(work / "torch" / "scene_labels.png"), cv2.IMREAD_UNCHANGED)
    actual = cv2.imread(str(work / "ovp" / "scene_labels.png"), cv2.IMREAD_UNCHANGED)
    if expected is not None:
        assert (actual == expected).mean() == 1.0


def test_eval_with_onnxruntime_backend_equals_pytorch(work, tmp_path, capsys):
    from attnseg.data.synthetic import make_synthetic_dataset
    from attnseg.export.onnx import export_onnx
    from attnseg.weights import load_model

    root = make_synthetic_dataset(tmp_path / "cs", num_train=0, num_val=2, height=64, width=128)
    model, sidecar = load_model(work / "run" / "checkpoints" / "best")
    export_onnx(model, tmp_path / "m.onnx", (1, 3, 64, 128), output="logits", sidecar=sidecar)
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  name: psanet_r18_narrow\ndata:\n  root: {root}\n  num_workers: 0\n"
                      "eval:\n  num_workers: 0\n")
    results = {}
    for backend, weights in (("torch", work / "run"), ("onnxruntime", tmp_path / "m.onnx")):
        target = tmp_path / f"{backend}.json"
        assert main(["eval", str(config), "--weights", str(weights), "--backend", backend, "--json", str(target),
                     "--no-progress"]) == 0
        results[backend] = json.loads(target.read_text())
    assert results["onnxruntime"]["confusionMatrix"] == results["torch"]["confusionMatrix"]
    assert "onnxruntime" in results["onnxruntime"]["recipe"]["weights"]


def test_export_rejects_unknown_weights(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.onnx")]) != 0
    assert "neither a checkpoint" in capsys.readouterr().err


def test_confidence_through_exports_softmax_gives_it_argmax_refuses(work, tmp_path, capsys):
    from attnseg.data.synthetic import make_synthetic_dataset
    from attnseg.export.onnx import export_onnx
    from attnseg.weights import load_model

    model, sidecar = load_model(work / "run" / "checkpoints" / "best")
    image = str(work / "scene.png")
    for output in ("softmax", "argmax"):
        export_onnx(model, tmp_path / f"{output}.onnx", (1, 3, 64, 96), output=output, sidecar=sidecar)
    assert main(["predict", str(work / "run"), image, "--out", str(tmp_path / "t"), "--confidence",
                 "--no-progress"]) == 0
    assert main(["predict", str(tmp_path / "softmax.onnx"), image, "--out", str(tmp_path / "s"), "--confidence",
                 "--backend", "onnxruntime", "--no-progress"]) == 0
    expected = cv2.imread(str(tmp_path / "t" / "scene_confidence.png"), cv2.IMREAD_UNCHANGED).astype(int)
    actual = cv2.imread(str(tmp_path / "s" / "scene_confidence.png"), cv2.IMREAD_UNCHANGED).astype(int)
    assert np.abs(actual - expected).max() <= 1 and expected.std() > 1  # not softmaxed twice (that flattens it)
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "argmax.onnx"), image, "--out", str(tmp_path / "a"), "--confidence",
                 "--backend", "onnxruntime", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--confidence" in err[0] and "--output softmax" in err[0]
    assert not (tmp_path / "a").exists()
    # eval: an argmax export's dumps leave confidence out by default and refuse it by name
    root = make_synthetic_dataset(tmp_path / "cs", num_train=0, num_val=1, height=64, width=128)
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  name: psanet_r18_narrow\ndata:\n  root: {root}\n  num_workers: 0\n"
                      "eval:\n  num_workers: 0\n")
    export_onnx(model, tmp_path / "argmax128.onnx", (1, 3, 64, 128), output="argmax", sidecar=sidecar)
    command = ["eval", str(config), "--weights", str(tmp_path / "argmax128.onnx"), "--backend", "onnxruntime",
               "--no-progress", "--dump"]
    assert main([*command, str(tmp_path / "d1")]) == 0
    assert sorted(p.name for p in (tmp_path / "d1").iterdir()) == ["color", "compare", "labelIds", "overlay"]
    assert main([*command, str(tmp_path / "d2"), "--dump-kinds", "color,confidence"]) == 2
    assert "--dump-kinds confidence" in capsys.readouterr().err and not (tmp_path / "d2").exists()
    # a softmax export's eval confidence is the checkpoint's (its probabilities are fused as their log)
    export_onnx(model, tmp_path / "softmax128.onnx", (1, 3, 64, 128), output="softmax", sidecar=sidecar)
    maps = {}
    for backend, weights in (("torch", work / "run"), ("onnxruntime", tmp_path / "softmax128.onnx")):
        assert main(["eval", str(config), "--weights", str(weights), "--backend", backend, "--flip", "--no-progress",
                     "--dump", str(tmp_path / backend), "--dump-kinds", "confidence"]) == 0
        (path,) = (tmp_path / backend / "confidence").glob("*.png")
        maps[backend] = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(int)
    assert np.abs(maps["onnxruntime"] - maps["torch"]).max() <= 1 and maps["torch"].std() > 1
