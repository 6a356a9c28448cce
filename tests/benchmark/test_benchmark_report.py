"""The benchmark table and its target lines, from measurements made up here (no process is run)."""

from attnseg.benchmark import GB, BenchmarkReport, BenchmarkSpec, RouteResult, format_report, speedup, target_lines


def _report(fast_agreement: float) -> BenchmarkReport:
    spec = BenchmarkSpec("m", input_size=(8, 16), scales=(0.5, 1.0), runs=2, warmup=1, threads=1)
    reference = RouteResult("torch-fp32", times=[6.0, 6.0], cpu_times=[6.0, 6.0], peak_bytes=2 * GB,
                            added_bytes=GB, agreement=1.0)
    fast = RouteResult("openvino-bf16", times=[1.0, 1.0], cpu_times=[1.0, 1.0], peak_bytes=GB, added_bytes=GB // 2,
                       agreement=fast_agreement)
    failed = RouteResult("onnxruntime", error="RuntimeError: no memory")
    memory = {"route": "torch-fp32", "scale": 1.0, "multi_added": GB, "single_added": GB, "multi_peak": 2 * GB,
              "single_peak": 2 * GB, "single_seconds": 3.0}
    return BenchmarkReport(spec, "m", flops=1.0e12, fp32_rate=1.0e12, bf16_rate=2.0e12,
                           results=[reference, fast, failed], memory_check=memory, cpu="test CPU",
                           emulated={"openvino-bf16": "emulated here"})


def test_table_columns_rows_and_targets():
    text = format_report(_report(fast_agreement=0.999))
    lines = text.splitlines()
    assert lines[0].startswith("attnseg benchmark: m, input 1x3x8x16, scales [0.5, 1.0], 1 threads, 2 runs")
    header = next(line for line in lines if line.startswith("route"))
    assert header.split() == ["route", "median", "s", "min", "s", "max", "s", "img/s", "speed-up", "TF/s", "%bf16",
                              "peak", "GB", "+act", "GB", "agree", "%", "first", "s", "cpu", "s"]
    row = next(line for line in lines if line.startswith("openvino-bf16*")).split()  # emulated: marked
    assert row[1] == "1.000" and row[5] == "6.00x" and row[6] == "1.00" and row[7] == "50%"
    assert any(line.startswith("onnxruntime") and "failed: RuntimeError" in line for line in lines)
    assert "* emulated here" in lines
    assert "-> MET (by CPU time: 6.00x)" in text and "memory target" in text and "= 1.00x" in text


def test_speed_target_needs_the_agreement_too():
    lines = target_lines(_report(fast_agreement=0.9))
    assert lines[0].startswith("speed target") and "6.00x at 90.00% -> NOT MET" in lines[0]
    assert speedup(0.0, 1.0) != speedup(0.0, 1.0)  # nan without a reference time
