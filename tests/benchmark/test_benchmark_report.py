"""The benchmark table and its target lines, from measurements made up here (no process is run)."""

from attnseg.benchmark import GB, BenchmarkReport, BenchmarkSpec, RouteResult, format_report, speedup, target_lines


def _report(fast_agreement: float, int8_agreement: float = 0.995) -> BenchmarkReport:
    spec = BenchmarkSpec("m", input_size=(8, 16), scales=(0.5, 1.0), runs=2, warmup=1, threads=1)
    reference = RouteResult("torch-fp32", times=[6.0, 6.0], cpu_times=[6.0, 6.0], peak_bytes=2 * GB,
                            added_bytes=GB, agreement=1.0)
    fast = RouteResult("openvino-bf16", times=[1.0, 1.0], cpu_times=[1.0, 1.0], peak_bytes=GB, added_bytes=GB // 2,
                       agreement=fast_agreement, layer_precisions={"bf16": 10}, float_precision="bf16")
    float32 = RouteResult("openvino-fp32", times=[2.0, 2.0], cpu_times=[2.0, 2.0], peak_bytes=GB, added_bytes=GB // 2,
                          agreement=1.0, layer_precisions={"f32": 10}, float_precision="fp32")
    int8 = RouteResult("openvino-int8", times=[0.5, 0.5], cpu_times=[0.5, 0.5], peak_bytes=GB // 2,
                       added_bytes=GB // 4, agreement=int8_agreement, layer_precisions={"u8": 8, "f32": 2},
                       float_precision="fp32")
    failed = RouteResult("onnxruntime", error="RuntimeError: no memory")
    memory = {"route": "torch-fp32", "scale": 1.0, "multi_added": GB, "single_added": GB, "multi_peak": 2 * GB,
              "single_peak": 2 * GB, "single_seconds": 3.0}
    return BenchmarkReport(spec, "m", flops=1.0e12, fp32_rate=1.0e12, bf16_rate=2.0e12,
                           results=[reference, float32, fast, int8, failed], memory_check=memory, cpu="test CPU",
                           emulated={"openvino-bf16": "emulated here"}, bf16_native=False,
                           int8_rates={"OpenVINO": 4.0e12, "torch._int_mm": 1.0e9}, quantize_seconds=12.0)


def test_table_columns_rows_and_targets():
    text = format_report(_report(fast_agreement=0.999))
    lines = text.splitlines()
    assert lines[0].startswith("attnseg benchmark: m, input 1x3x8x16, scales [0.5, 1.0], 1 threads, 2 runs")
    # Every precision's rate, the engine that reached it, bf16 marked when this CPU only emulates it
    assert "fp32 1.00 TFLOP/s" in lines[1] and "bf16 2.00 TFLOP/s (torch.mm, not native on this CPU)" in lines[1]
    assert "int8 4.00 TOP/s (OpenVINO; torch._int_mm 0.001)" in lines[1]
    assert "INT8 quantization 12.0 s on 1 other synthetic scene(s)" in lines[1]
    header = next(line for line in lines if line.startswith("route"))
    assert header.split() == ["route", "median", "s", "min", "s", "max", "s", "img/s", "speed-up", "TF/s", "%bf16",
                              "%prec", "peak", "GB", "+act", "GB", "agree", "%", "first", "s", "cpu", "s"]
    row = next(line for line in lines if line.startswith("openvino-bf16*")).split()  # emulated: marked
    assert row[1] == "1.000" and row[5] == "6.00x" and row[6] == "1.00" and row[7] == "50%" and row[8] == "50%"
    fp32_row = next(line for line in lines if line.startswith("openvino-fp32")).split()
    assert fp32_row[7] == "25%" and fp32_row[8] == "50%"  # 0.5 TFLOP/s: a quarter of bf16, half of fp32
    int8_row = next(line for line in lines if line.startswith("openvino-int8")).split()
    assert int8_row[6] == "2.00" and int8_row[8] == "50%"  # share of the int8 rate
    assert "openvino-int8: compute layers by runtime precision f32 2, u8 8 (8 of 10 in int8); float layers with " \
           "the fp32 hint" in lines
    assert any(line.startswith("onnxruntime") and "failed: RuntimeError" in line for line in lines)
    assert "* emulated here" in lines
    assert "fastest openvino-int8 12.00x at 99.50% -> MET (by CPU time: 12.00x)" in text
    assert "memory target" in text and "= 1.00x" in text


def test_speed_target_needs_the_agreement_too():
    lines = target_lines(_report(fast_agreement=0.9, int8_agreement=0.9))
    # no fast route keeps the bound: the verdict is the fastest that does (fp32, too slow)
    assert lines[0].startswith("speed target") and "fastest openvino-fp32 3.00x at 100.00% -> NOT MET" in lines[0]
    assert speedup(0.0, 1.0) != speedup(0.0, 1.0)  # nan without a reference time
    # an INT8 route below the bound leaves the verdict to the fastest float route that keeps it
    lines = target_lines(_report(fast_agreement=0.999, int8_agreement=0.9))
    assert "fastest openvino-bf16 6.00x at 99.90% -> MET" in lines[0]


def test_int8_target_is_against_the_fastest_native_float_route():
    lines = target_lines(_report(fast_agreement=0.999))
    # openvino-bf16 is emulated here, so the float route to beat is openvino-fp32 (2.0 s); 0.5 s is 4x
    int8 = next(line for line in lines if line.startswith("int8 target"))
    assert "openvino-int8 4.00x over openvino-fp32 (2.00 s -> 0.50 s) at 99.50% -> MET" in int8
    assert int8.endswith("50% of the int8 matmul rate")
    share = next(line for line in lines if line.startswith("float compute target"))
    assert "of the fp32 matmul rate): openvino-fp32 50% -> NOT MET" in share
    low = next(line for line in target_lines(_report(0.999, int8_agreement=0.98)) if line.startswith("int8 target"))
    assert "at 98.00% -> NOT MET" in low


def test_int8_target_without_an_int8_route_or_its_rate():
    report = _report(fast_agreement=0.999)
    report.results = [r for r in report.results if r.route != "openvino-int8"]
    report.int8_rates = {}
    assert not any(line.startswith("int8 target") for line in target_lines(report))
    assert ", int8" not in format_report(report).splitlines()[1]


def test_header_names_a_smaller_calibration_size():
    import dataclasses

    report = _report(fast_agreement=0.999)
    report.spec = dataclasses.replace(report.spec, int8_calibration=2, int8_calibration_size=(4, 8))
    assert "INT8 quantization 12.0 s on 2 other synthetic scene(s) at 4x8" in format_report(report).splitlines()[1]
    report.spec = dataclasses.replace(report.spec, int8_calibration=0, int8_calibration_size=(8, 16))  # = input size
    assert format_report(report).splitlines()[1].endswith("INT8 quantization 12.0 s on the measured scene")
