"""The INT8 route of `attnseg benchmark`: the machine's int8 matmul rate (and that OpenVINO really runs it in int8),
the calibration scenes, and the route end to end (export, NNCF quantization, timing, agreement, layer precisions).

Tests that need OpenVINO/NNCF skip without them (CI runs this file in its `-k 'openvino or int8 or quantize'` step).
"""

import json
import re

import numpy as np
import pytest

from attnseg.benchmark import calibration, int8
from attnseg.cli.main import main


def test_int8_calibration_scenes_are_other_seeds_unless_asked_for_the_measured_image():
    assert int8.calibration_seeds(seed=3, count=2) == [4, 5]
    assert int8.calibration_seeds(seed=3, count=0) == [3]
    mean, std = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
    scenes = int8.calibration_inputs(32, 64, batch=2, seed=0, count=2, mean=mean, std=std)
    assert scenes.shape == (2, 2, 3, 32, 64) and scenes.dtype == np.float32
    measured = calibration.benchmark_image(32, 64, 0).astype(np.float32)
    expected = ((measured - np.float32(mean)) / np.float32(std)).transpose(2, 0, 1)
    itself = int8.calibration_inputs(32, 64, batch=1, seed=0, count=0, mean=mean, std=std)
    np.testing.assert_allclose(itself[0, 0], expected, rtol=1e-6)
    assert not np.allclose(scenes[0, 0], expected)  # a different scene than the one measured


def test_int8_share_counts_u8_and_i8_layers():
    assert int8.int8_share({"u8": 5, "i8": 1, "f32": 4}) == (6, 10)
    assert int8.int8_share({}) == (0, 0)


def test_int_mm_rate_int8():
    rate = int8.int_mm_rate(size=32, seconds=0.01, threads=1)
    assert rate is None or rate > 0  # None only where this torch has no CPU kernel


@pytest.mark.parametrize("kind", ["matmul", "conv1x1"])
def test_openvino_int8_product_runs_in_int8(kind):
    ov = pytest.importorskip("openvino")
    from attnseg.benchmark.rates import openvino_matmul_rate

    config = {"INFERENCE_PRECISION_HINT": "f32"}
    model, values = int8.product_model(64, kind, quantized=True)
    compiled = ov.Core().compile_model(model, "CPU", config)
    counts = int8.runtime_precisions(compiled)
    assert sum(counts.values()) == 1 and int8.int8_share(counts) == (1, 1)
    assert compiled(values)[compiled.outputs[0]].size == 64 * 64
    assert openvino_matmul_rate("int8", size=64, seconds=0.01, threads=1, kind=kind) > 0
    # The float product is counted as float: the check tells the two apart
    float_counts = int8.runtime_precisions(ov.Core().compile_model(int8.product_model(64, kind)[0], "CPU", config))
    assert float_counts == {"f32": 1}


def test_benchmark_openvino_int8_route_end_to_end(tmp_path, capsys):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    work = tmp_path / "work"
    code = main(["benchmark", "mscale_ocr_hrnet_w18_small_v1", "--size", "64", "128", "--scales", "0.5,1.0",
                 "--routes", "openvino-fp32,openvino-int8", "--runs", "1", "--warmup", "0", "--threads", "1",
                 "--no-memory-check", "--work-dir", str(work)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split()[:1] in (["torch-fp32"], ["openvino-fp32"], ["openvino-int8"])}  # fmt: skip
    assert set(rows) == {"torch-fp32", "openvino-fp32", "openvino-int8"}  # fp32 eager joins as the reference
    # Label agreement with fp32 eager, in %: exact for fp32; random weights are near-ties everywhere, so INT8's is
    # only measured here (about half at this size), not judged
    assert float(rows["openvino-fp32"][11]) > 99.0 and 0.0 <= float(rows["openvino-int8"][11]) <= 100.0
    assert float(rows["openvino-int8"][9]) > 0.05  # peak resident memory in GB
    layers = next(line for line in out.splitlines() if line.startswith("openvino-int8: compute layers"))
    int8_layers, total = (int(n) for n in layers.split("(")[1].split(" in int8")[0].split(" of "))
    assert total > 10 and int8_layers > total // 2  # the quantized convolutions really run in u8/i8
    assert "int8 target (>= 1.6x the fastest float route" in out and "of the int8 matmul rate" in out
    # the int8 rate names its best engine first (torch._int_mm beats OpenVINO's MatMul on AMX), OpenVINO's always
    rate = re.search(r"int8 [0-9.]+ TOP/s \((OpenVINO|torch\._int_mm)[^)]*\)", out)
    assert "INT8 quantization" in out and rate is not None and "OpenVINO" in rate.group(0)
    # The INT8 graph was made at the benchmark's shape with the scales fused, by the project's quantizer
    sidecar = json.loads((work / "model_int8.xml.json").read_text())
    assert sidecar["input_shape"] == [1, 3, 64, 128] and sidecar["scales"] == [0.5, 1.0]
    assert sidecar["extra"]["quantization"]["calibration_images"] == 1
