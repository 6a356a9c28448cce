"""attnseg quantize: an INT8 OpenVINO model from a run folder, and a report that an independent computation confirms.

The independent side exports the fp32 graph with `attnseg export`, runs it and the INT8 graph with OpenVINO directly,
and computes agreement and mIoU with plain NumPy; `attnseg eval --backend openvino` on the INT8 file must give the
report's INT8 mIoU.
"""

import json

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from attnseg.benchmark import benchmark_image, calibrate_batchnorm  # noqa: E402
from attnseg.cli.main import main  # noqa: E402
from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, label_ids_to_train_ids  # noqa: E402
from attnseg.models import create_model  # noqa: E402
from attnseg.weights import save_checkpoint  # noqa: E402

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
KWARGS = {"ocr_mid_channels": 32, "ocr_key_channels": 16, "attention_channels": 16}
SCALES = (0.5, 1.0)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    from attnseg.data.synthetic import make_synthetic_dataset

    folder = tmp_path_factory.mktemp("int8")
    root = make_synthetic_dataset(folder / "cs", num_train=0, num_val=4, height=64, width=128)
    torch.manual_seed(0)
    model = create_model("mscale_ocr_hrnet_w18_small_v1", num_classes=19, **KWARGS)
    calibrate_batchnorm(model, benchmark_image(64, 128, seed=1))
    run = folder / "run"
    save_checkpoint(run / "checkpoints" / "best", model, "mscale_ocr_hrnet_w18_small_v1", KWARGS, CITYSCAPES_CLASSES,
                    CITYSCAPES_PALETTE, MEAN, STD)
    kwargs = "".join(f"    {key}: {value}\n" for key, value in KWARGS.items())
    (run / "config.yaml").write_text(
        f"model:\n  name: mscale_ocr_hrnet_w18_small_v1\n  kwargs:\n{kwargs}data:\n  root: {root}\n  num_workers: 0\n"
        f"eval:\n  split: val\n  scales: [{', '.join(map(str, SCALES))}]\n  num_workers: 0\n")
    return folder


def _labels(compiled, inputs):
    return compiled(inputs)[compiled.outputs[0]][0].argmax(0)


def _miou(predictions, labels, num_classes=19):
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for prediction, label in zip(predictions, labels):
        valid = label < num_classes
        confusion += np.bincount(label[valid].astype(int) * num_classes + prediction[valid],
                                 minlength=num_classes**2).reshape(num_classes, num_classes)  # fmt: skip
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    return float(np.mean(np.diag(confusion)[union > 0] / union[union > 0]))


def test_quantize_report_matches_an_independent_computation(run_folder, capsys):
    import openvino as ov

    out = run_folder / "q" / "model_int8.xml"
    assert main(["quantize", str(run_folder / "run"), "--calib", "split:val", "--calib-count", "3",
                 "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "label agreement" in printed and "mIoU fp32" in printed
    for suffix in (".bin", ".report.json"):
        assert out.with_suffix(suffix).is_file()
    sidecar = json.loads((run_folder / "q" / "model_int8.xml.json").read_text())
    assert sidecar["scales"] == list(SCALES) and sidecar["extra"]["quantization"]["calibration_images"] == 3
    assert not [p for p in (run_folder / "q").iterdir() if p.name.startswith(".")]  # nothing staged left behind
    report = json.loads(out.with_suffix(".report.json").read_text())

    assert main(["export", str(run_folder / "run"), "--format", "openvino", "--out", str(run_folder / "fp32.xml"),
                 "--input-shape", "1", "3", "64", "128", "--scales", "0.5,1.0", "--output", "logits",
                 "--precision", "fp32"]) == 0  # fmt: skip
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    fp32, int8 = (core.compile_model(str(path), "CPU", config) for path in (run_folder / "fp32.xml", out))
    images = sorted((run_folder / "cs" / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    assert len(images) == 4
    reference, quantized, labels = [], [], []
    for path in images:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32)
        inputs = ((rgb - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)[None].copy()
        reference.append(_labels(fp32, inputs))
        quantized.append(_labels(int8, inputs))
        label_path = str(path).replace("leftImg8bit", "gtFine", 1).replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        labels.append(label_ids_to_train_ids(cv2.imread(label_path, cv2.IMREAD_UNCHANGED)))
    agreement = np.mean([(a == b).mean() for a, b in zip(reference, quantized)])
    assert report["images"] == 4
    assert report["agreement"] == pytest.approx(agreement, abs=1e-9)
    assert report["fp32_miou"] == pytest.approx(_miou(reference, labels), abs=1e-9)
    assert report["int8_miou"] == pytest.approx(_miou(quantized, labels), abs=1e-9)
    assert report["miou_drop_points"] == pytest.approx(100 * (report["fp32_miou"] - report["int8_miou"]))

    # The INT8 file runs unchanged through `attnseg eval --backend openvino`.
    target = run_folder / "int8_eval.json"
    assert main(["eval", str(run_folder / "run" / "config.yaml"), "--weights", str(out), "--backend", "openvino",
                 "--precision", "fp32", "--json", str(target), "--no-progress"]) == 0  # fmt: skip
    assert json.loads(target.read_text())["mIoU"] == pytest.approx(report["int8_miou"], abs=1e-9)


def test_quantize_refuses_a_drop_beyond_max_drop_and_writes_nothing(run_folder, monkeypatch, capsys):
    from attnseg.export import quantize

    real_compare = quantize.compare_int8

    def worse(*args, **kwargs):
        report = real_compare(*args, **kwargs)
        report.int8_miou = report.fp32_miou - 0.02  # a 2-point drop
        return report

    monkeypatch.setattr(quantize, "compare_int8", worse)
    out = run_folder / "refused" / "model_int8.xml"
    code = main(["quantize", str(run_folder / "run"), "--calib", "split:val", "--calib-count", "2", "--out", str(out),
                 "--max-drop", "1.0"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--max-drop 1.0: INT8 loses 2.00 mIoU points" in err and "nothing written" in err
    assert not out.exists() and list((run_folder / "refused").iterdir()) == []


def _convolution_biases(model):
    """{name of the Add after each convolution: its bias constant}: what NNCF's bias correction rewrites."""
    biases = {}
    for op in model.get_ops():
        if op.get_type_name() == "Add" and op.input_value(0).get_node().get_type_name() == "Convolution":
            constant = op.input_value(1).get_node()
            if constant.get_type_name() == "Constant":
                biases[op.get_friendly_name()] = constant.get_data().copy()
    return biases


def test_bias_correction_none_is_the_default_and_keeps_the_fp32_biases_and_fast_does_not(run_folder):
    import openvino as ov

    fp32 = run_folder / "bias" / "fp32.xml"
    assert main(["export", str(run_folder / "run"), "--format", "openvino", "--out", str(fp32), "--input-shape", "1",
                 "3", "64", "128", "--scales", "0.5,1.0", "--output", "logits", "--precision", "fp32"]) == 0  # fmt: skip
    core = ov.Core()
    reference = _convolution_biases(core.read_model(str(fp32)))
    assert len(reference) > 20
    changed = {}
    for mode in ("none", "fast"):
        out = run_folder / "bias" / f"int8_{mode}.xml"
        choice = [] if mode == "none" else ["--bias-correction", mode]  # none without the flag: the default
        assert main(["quantize", str(fp32), "--calib", "split:val", "--config", str(run_folder / "run" / "config.yaml"),
                     "--calib-count", "2", "--out", str(out), *choice]) == 0  # fmt: skip
        sidecar = json.loads(out.with_suffix(".xml.json").read_text())
        assert sidecar["extra"]["quantization"]["settings"]["bias_correction"] == mode
        biases = _convolution_biases(core.read_model(str(out)))
        assert biases.keys() == reference.keys()
        changed[mode] = sum(not np.array_equal(biases[name], reference[name]) for name in reference)
    assert changed["none"] == 0 and changed["fast"] > 0


def _largest_int8_weight_per_convolution(model) -> list[int]:
    """Per convolution, the largest |integer| of its int8 weight constant (behind the dequantizing Convert/Multiply)."""
    largest = []
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Convolution":
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() != "Constant":
            node = node.input_value(0).get_node()
        data = node.get_data()
        assert data.dtype == np.int8, op.get_friendly_name()
        largest.append(int(np.abs(data.astype(np.int16)).max()))
    return largest


def test_overflow_fix_gives_the_image_reading_layers_seven_bits_unless_none(run_folder):
    import openvino as ov

    largest = {}
    for mode in ("first-layer", "none"):
        out = run_folder / "overflow" / f"int8_{mode}.xml"
        assert main(["quantize", str(run_folder / "run"), "--calib", "split:val", "--calib-count", "2",
                     "--out", str(out), "--overflow-fix", mode]) == 0  # fmt: skip
        assert json.loads(out.with_suffix(".xml.json").read_text())["extra"]["quantization"]["settings"][
            "overflow_fix"] == mode  # fmt: skip
        largest[mode] = _largest_int8_weight_per_convolution(ov.Core().read_model(str(out)))
    assert len(largest["first-layer"]) == len(largest["none"]) > 20
    # One stem convolution per scale reads the (resized) image; every other layer keeps the full 8-bit range.
    assert sum(value <= 64 for value in largest["first-layer"]) == len(SCALES)
    assert all(value == 127 for value in largest["none"])
    assert [a == b for a, b in zip(largest["first-layer"], largest["none"])].count(False) == len(SCALES)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--out", "m.onnx"], "--out m.onnx: an OpenVINO model file ends in .xml"),
        (["--out", "m.xml", "--keep-float", "everything"], "--keep-float everything: unknown group"),
        (["--out", "m.xml", "--bias-correction", "some"], "argument --bias-correction: invalid choice: 'some'"),
        (["--out", "m.xml", "--overflow-fix", "some"], "argument --overflow-fix: invalid choice: 'some'"),
        (["--out", "m.xml", "--max-drop", "-1"], "--max-drop -1.0: must be a number of points >= 0"),
        (["--out", "m.xml", "--input-shape", "2", "3", "64", "128"], "--input-shape 2 3 64 128: quantize one"),
        (["--out", "m.xml", "--finetune-steps", "-1"], "fine-tuning steps must be >= 0"),
        (["--out", "m.xml", "--finetune-steps", "2", "--float-scales", "0.5"],
         "--float-scales: not available with fine-tuning"),
        (["--out", "m.xml", "--finetune-steps", "2", "--bias-correction", "full"],
         "--bias-correction full: NNCF's PyTorch backend, which fine-tuning uses, has only the fast"),
        (["--out", "m.xml", "--finetune-steps", "2", "--accuracy-control", "--max-drop", "1"],
         "--finetune-steps and --accuracy-control: choose one"),
    ],
)
def test_quantize_user_errors_are_one_line(run_folder, tmp_path, monkeypatch, capsys, arguments, message):
    monkeypatch.chdir(tmp_path)
    code = main(["quantize", str(run_folder / "run"), "--calib", "split:val", *arguments])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_finetuning_needs_the_pytorch_model_not_an_openvino_graph(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["quantize", "fp32.xml", "--calib", "images", "--out", "m.xml", "--finetune-steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "--finetune-steps: fp32.xml is an OpenVINO graph; fine-tuning trains the PyTorch model" in err
    assert list(tmp_path.iterdir()) == []


def test_finetuned_int8_is_an_openvino_model_that_eval_runs_as_its_report_says(run_folder, capsys):
    import openvino as ov

    out = run_folder / "tuned" / "model_int8.xml"
    assert main(["quantize", str(run_folder / "run"), "--calib", "split:val", "--calib-count", "3", "--out", str(out),
                 "--finetune-steps", "4", "--finetune-lr", "1e-4", "--overflow-fix", "none"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "fine-tuning 4 steps by distillation from fp32 (KL; Adam lr 0.0001, batch 2, all parameters)" in err
    assert "step 4/4: KL" in err
    assert "warning: fine-tuning on the images the report measures (split val)" in err
    sidecar = json.loads(out.with_suffix(".xml.json").read_text())
    record = sidecar["extra"]["quantization"]
    assert "PyTorch backend" in record["tool"] and record["settings"]["overflow_fix"] == "none"
    assert record["finetune"]["steps"] == 4 and record["finetune"]["learning_rate"] == 1e-4
    assert record["finetune"]["first_loss"] > 0 and record["quantized_operations"] > 20
    graph = ov.Core().read_model(str(out))
    assert graph.inputs[0].get_any_name() == sidecar["input_name"]
    assert list(graph.inputs[0].get_shape()) == [1, 3, 64, 128]
    assert graph.outputs[0].get_any_name() == sidecar["output_name"] and sidecar["scales"] == list(SCALES)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["quantization"]["finetune"]["steps"] == 4
    target = run_folder / "tuned_eval.json"
    assert main(["eval", str(run_folder / "run" / "config.yaml"), "--weights", str(out), "--backend", "openvino",
                 "--precision", "fp32", "--json", str(target), "--no-progress"]) == 0  # fmt: skip
    assert json.loads(target.read_text())["mIoU"] == pytest.approx(report["int8_miou"], abs=1e-9)


@pytest.fixture(scope="module")
def self_labelled_run(run_folder):
    """A narrow PSANet (34 convolutions: NNCF's ranking of every quantized operation stays short) with a spread-out
    random classifier, and a folder dataset of the fixture's images whose labels are its own fp32 OpenVINO
    predictions: fp32 scores mIoU 1.0 there, so every label INT8 flips is a measurable drop."""
    import openvino as ov

    torch.manual_seed(0)
    model = create_model("psanet_r18_narrow", num_classes=19)
    calibrate_batchnorm(model, benchmark_image(64, 128, seed=1))
    with torch.no_grad():
        model.head.classifier.weight.copy_(torch.randn(model.head.classifier.weight.shape))
    run = run_folder / "self" / "run"
    save_checkpoint(run / "checkpoints" / "best", model, "psanet_r18_narrow", {}, CITYSCAPES_CLASSES,
                    CITYSCAPES_PALETTE, MEAN, STD)
    fp32 = run_folder / "self" / "fp32.xml"
    assert main(["export", str(run), "--format", "openvino", "--out", str(fp32), "--input-shape", "1", "3", "64", "128",
                 "--output", "logits", "--precision", "fp32"]) == 0  # fmt: skip
    compiled = ov.Core().compile_model(str(fp32), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    root = run_folder / "self" / "data"
    for folder in ("images", "labels"):
        (root / "val" / folder).mkdir(parents=True)
    for path in sorted((run_folder / "cs" / "leftImg8bit" / "val").rglob("*_leftImg8bit.png")):
        bgr = cv2.imread(str(path))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
        inputs = ((rgb - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)[None].copy()
        cv2.imwrite(str(root / "val" / "images" / path.name), bgr)
        cv2.imwrite(str(root / "val" / "labels" / path.name), _labels(compiled, inputs).astype(np.uint8))
    (run / "config.yaml").write_text(
        f"model:\n  name: psanet_r18_narrow\ndata:\n  dataset: folder\n  root: {root}\n  num_workers: 0\n"
        "eval:\n  split: val\n  scales: [1.0]\n  num_workers: 0\n")
    return run


def test_accuracy_control_keeps_the_drop_within_the_bound(self_labelled_run, capsys):
    """NNCF's accuracy-aware mode against the plain quantization on the same images: it may only return operations to
    float (fewer quantize points), and the independent report then finds the drop within --max-drop."""
    folder = self_labelled_run.parent
    plain, controlled = folder / "plain" / "m.xml", folder / "controlled" / "m.xml"
    common = ["--calib", "split:val", "--calib-count", "4"]
    assert main(["quantize", str(self_labelled_run), *common, "--out", str(plain)]) == 0
    plain_report = json.loads(plain.with_suffix(".report.json").read_text())
    assert plain_report["fp32_miou"] == pytest.approx(1.0) and plain_report["miou_drop_points"] > 0
    bound = round(0.9 * plain_report["miou_drop_points"], 3)  # a few operations back to float: a short search
    assert main(["quantize", str(self_labelled_run), *common, "--out", str(controlled), "--accuracy-control",
                 "--max-drop", str(bound), "--ranking-count", "4"]) == 0  # fmt: skip
    assert f"accuracy control: at most {bound} mIoU points lost on split val" in capsys.readouterr().err
    report = json.loads(controlled.with_suffix(".report.json").read_text())
    assert report["miou_drop_points"] <= bound + 1e-6
    record = report["quantization"]
    assert record["accuracy_control"] == {"max_drop_points": bound, "validation_images": 4, "ranking_images": 4}
    assert 0 <= record["quantized_operations"] < plain_report["quantization"]["quantized_operations"]


def test_accuracy_control_needs_a_bound(run_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for bounds in ([], ["--max-drop", "1", "--min-agreement", "99"]):
        code = main(["quantize", str(run_folder / "run"), "--calib", "split:val", "--out", "m.xml",
                     "--accuracy-control", *bounds])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and "--accuracy-control needs one bound: --max-drop P" in err
        assert list(tmp_path.iterdir()) == []
    code = main(["quantize", str(run_folder / "run"), "--calib", "split:val", "--out", "m.xml", "--min-agreement", "0"])
    assert code == 2 and "--min-agreement 0.0: must be a percentage in (0, 100]" in capsys.readouterr().err


def test_accuracy_control_on_agreement_with_fp32(self_labelled_run, capsys):
    """The agreement bound needs no labels: against the plain quantization of the same images, the accuracy-aware
    mode returns operations to float until INT8 keeps --min-agreement percent of fp32's labels; a plain run asked
    for that agreement refuses and writes nothing."""
    folder = self_labelled_run.parent
    plain, controlled = folder / "plain_agree" / "m.xml", folder / "agree" / "m.xml"
    common = ["--calib", "split:val", "--calib-count", "4"]
    assert main(["quantize", str(self_labelled_run), *common, "--out", str(plain)]) == 0
    plain_report = json.loads(plain.with_suffix(".report.json").read_text())
    assert plain_report["agreement"] < 1.0
    bound = round(100 * plain_report["agreement"] + 0.5 * (100 - 100 * plain_report["agreement"]), 3)
    refused = folder / "refused_agree" / "m.xml"
    code = main(["quantize", str(self_labelled_run), *common, "--out", str(refused), "--min-agreement", str(bound)])
    err = capsys.readouterr().err
    assert code == 2 and f"--min-agreement {bound}: INT8 gives fp32's label on" in err and not refused.exists()
    assert main(["quantize", str(self_labelled_run), *common, "--out", str(controlled), "--accuracy-control",
                 "--min-agreement", str(bound), "--ranking-count", "4"]) == 0  # fmt: skip
    assert f"accuracy control: at least {bound}% of the labels as fp32's on split val" in capsys.readouterr().err
    report = json.loads(controlled.with_suffix(".report.json").read_text())
    assert 100 * report["agreement"] >= bound - 1e-6
    record = report["quantization"]
    assert record["accuracy_control"] == {"min_agreement": bound, "validation_images": 4, "ranking_images": 4}
    assert 0 <= record["quantized_operations"] < plain_report["quantization"]["quantized_operations"]


def _export_three_scales(run_folder, target):
    assert main(["export", str(run_folder / "run"), "--format", "openvino", "--out", str(target), "--input-shape",
                 "1", "3", "64", "128", "--scales", "0.5,1.0,2.0", "--output", "logits", "--precision",
                 "fp32"]) == 0  # fmt: skip


def test_float_scales_leave_the_named_branches_unquantized(run_folder, capsys):
    import openvino as ov

    from attnseg.export.scale_branches import scale_branches

    out = run_folder / "float_scales" / "model_int8.xml"
    assert main(["quantize", str(run_folder / "run"), "--calib", "split:val", "--calib-count", "2", "--scales",
                 "0.5,1.0,2.0", "--float-scales", "0.5,1", "--out", str(out)]) == 0  # fmt: skip
    assert "scale 0.5, scale 1; overflow fix first-layer)" in capsys.readouterr().err
    # The branches are read on the fp32 graph (in the INT8 one a quantizer sits between the input and its resizes).
    _export_three_scales(run_folder, run_folder / "float_scales" / "fp32.xml")
    branches = scale_branches(ov.Core().read_model(str(run_folder / "float_scales" / "fp32.xml")), (1, 3, 64, 128))
    model = ov.Core().read_model(str(out))
    producers = {op.get_friendly_name(): op.input_value(0).get_node().get_type_name() for op in model.get_ops()
                 if op.get_type_name() == "Convolution"}  # fmt: skip

    def quantized_share(scale):
        convolutions = [name for name in branches[scale] if name in producers]
        return sum(producers[name] == "FakeQuantize" for name in convolutions) / len(convolutions)

    assert quantized_share(0.5) == 0 and quantized_share(1.0) == 0 and quantized_share(2.0) > 0.9
    record = json.loads(out.with_suffix(".xml.json").read_text())["extra"]["quantization"]
    assert record["settings"]["float_scales"] == [0.5, 1.0]
    assert record["float_scale_operations"] == len(branches[0.5]) + len(branches[1.0])


@pytest.mark.parametrize("scales, message", [
    ("0.75", "--float-scales 0.75: the graph runs scales 0.5, 1"),
    ("0.5,1.0", "--float-scales names every scale of the graph: nothing would be quantized"),
])  # fmt: skip
def test_float_scales_the_graph_does_not_run_are_refused(run_folder, tmp_path, capsys, scales, message):
    out = tmp_path / "q" / "model_int8.xml"
    code = main(["quantize", str(run_folder / "run"), "--calib", "split:val", "--float-scales", scales,
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and message in err.strip().splitlines()[-1]
    assert not out.exists() and list(out.parent.iterdir()) == []
