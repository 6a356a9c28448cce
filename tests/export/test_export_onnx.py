"""ONNX export: multi-scale MscaleOCR as one graph, PSANet, output ops, standard operators, sidecar round trip."""

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from attnseg.errors import WeightsError
from attnseg.export.onnx import (
    ExportError,
    ExportSidecar,
    example_input,
    export_onnx,
    non_standard_ops,
    read_export_sidecar,
    relative_error,
    write_export_sidecar,
)
from attnseg.models import create_model


def run_onnx(path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {"images": images.numpy()})
    return result


@pytest.fixture(scope="module")
def mscale_export(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("mscale_ocr_hrnet_w18_small").eval()
    path = tmp_path_factory.mktemp("mscale") / "mscale.onnx"
    sidecar = export_onnx(model, path, (1, 3, 64, 128), dynamic=True, scales=(0.5, 1.0), trace_size=(32, 64),
                          output="logits", verify=False)
    return model, path, sidecar


@pytest.fixture(scope="module")
def psanet_export(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("psanet_r18_narrow").eval()
    folder = tmp_path_factory.mktemp("psanet")
    logits = export_onnx(model, folder / "logits.onnx", (1, 3, 48, 64), output="logits")
    labels = export_onnx(model, folder / "labels.onnx", (1, 3, 48, 64), output="argmax")
    return model, folder, logits, labels


def test_mscale_two_scales_in_one_graph_match_pytorch_at_other_sizes(mscale_export):
    model, path, sidecar = mscale_export
    assert sidecar.scales == [0.5, 1.0] and sidecar.input_shape == ["batch", 3, "height", "width"]
    assert model.eval_scales == (0.5, 1.0, 2.0), "export must restore the model's own scales"
    graph = onnx.load(str(path))
    assert non_standard_ops(graph) == []
    # Both scales are inside: the 0.5x input resize and the fusion's resizes are Resize nodes of one graph.
    assert sum(node.op_type == "Resize" for node in graph.graph.node) > 2
    for shape in [(1, 3, 32, 64), (2, 3, 48, 80)]:  # traced size, then another batch and size
        images = example_input(shape, seed=3)
        with torch.inference_mode():
            expected = model.eval()(images, scales=(0.5, 1.0)).logits.numpy()
        assert relative_error(run_onnx(path, images), expected) <= 1e-4


def test_psanet_fixed_shape_logits_and_uint8_labels(psanet_export):
    model, folder, logits_sidecar, labels_sidecar = psanet_export
    images = example_input((1, 3, 48, 64), seed=5)
    with torch.inference_mode():
        expected = model(images).logits
    assert relative_error(run_onnx(folder / "logits.onnx", images), expected.numpy()) <= 1e-4
    labels = run_onnx(folder / "labels.onnx", images)
    assert labels.dtype == np.uint8 and labels.shape == (1, 48, 64)
    assert labels_sidecar.output_dtype == "uint8" and labels_sidecar.output_name == "labels"
    assert (labels == expected.argmax(1).numpy()).mean() == 1.0
    for name in ("logits.onnx", "labels.onnx"):
        assert non_standard_ops(onnx.load(str(folder / name))) == []
    assert logits_sidecar.extra == {}  # a static export is not verified unless asked


def test_softmax_output_sums_to_one(tmp_path):
    model = create_model("psanet_r18_narrow").eval()
    sidecar = export_onnx(model, tmp_path / "p.onnx", (1, 3, 32, 32), output="softmax", verify=True)
    probabilities = run_onnx(tmp_path / "p.onnx", example_input((1, 3, 32, 32)))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert sidecar.output_name == "probabilities" and sidecar.extra["parity"][0]["relative_error"] <= 1e-4


def test_sidecar_round_trip_and_contents(psanet_export, tmp_path):
    _, folder, sidecar, _ = psanet_export
    again = read_export_sidecar(folder / "logits.onnx")
    assert again == sidecar
    data = json.loads((folder / "logits.onnx.json").read_text())
    assert data["format"] == "attnseg.export" and data["model_format"] == "onnx"
    assert data["preprocessing"] == {"mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                                     "channel_order": "RGB", "value_range": [0, 255], "layout": "NCHW",
                                     "dtype": "float32"}
    assert data["input_shape"] == [1, 3, 48, 64] and data["dynamic_axes"] == {}
    assert len(data["class_names"]) == 19 == len(data["palette"]) and data["class_names"][0] == "road"
    custom = ExportSidecar(model="m", model_kwargs={}, num_classes=2, class_names=["a", "b"], palette=[[0, 0, 0]] * 2,
                           mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0], input_shape=["batch", 3, "height", "width"])
    write_export_sidecar(tmp_path / "x.onnx", custom)
    assert read_export_sidecar(tmp_path / "x.onnx.json") == custom
    assert custom.dynamic_axes == {0: "batch", 2: "height", 3: "width"}


def test_sidecar_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        read_export_sidecar(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx.json").write_text('{"format": "something.else"}')
    with pytest.raises(WeightsError, match="not an attnseg export sidecar"):
        read_export_sidecar(tmp_path / "bad.onnx")
    (tmp_path / "broken.onnx.json").write_text('{"format": "attnseg.export", "format_version": 1}')
    with pytest.raises(WeightsError, match="malformed"):
        read_export_sidecar(tmp_path / "broken.onnx")


def test_non_standard_ops_are_found():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("PSAMask", ["y"], ["z"], domain="mmcv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    assert non_standard_ops(helper.make_model(graph)) == ["mmcv::PSAMask"]


def test_single_scale_model_refuses_scales(tmp_path):
    model = create_model("psanet_r18_narrow")
    with pytest.raises(ValueError, match="only scales"):
        export_onnx(model, tmp_path / "x.onnx", (1, 3, 32, 32), scales=(0.5, 1.0))


def test_dynamic_psanet_is_caught_by_verification(tmp_path):
    # PSANet's attention window arithmetic is frozen at the traced size: a dynamic export must say so.
    model = create_model("psanet_r18_narrow").eval()
    with pytest.raises(ExportError, match="fixed input shape"):
        export_onnx(model, tmp_path / "d.onnx", (1, 3, 64, 64), dynamic=True, trace_size=(64, 64))
