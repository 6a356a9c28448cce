"""`attnseg benchmark` end to end: two routes in their own child processes, one table."""

from attnseg.cli.main import main


def test_benchmark_end_to_end_two_routes(tmp_path, capsys):
    table = tmp_path / "table.txt"
    code = main(["benchmark", "psanet_r18_narrow", "--size", "32", "64", "--routes", "torch-fp32,onnxruntime",
                 "--runs", "2", "--warmup", "0", "--out", str(table)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.startswith(("torch-fp32", "onnxruntime"))}
    assert set(rows) == {"torch-fp32", "onnxruntime"}
    assert rows["torch-fp32"][5] == "1.00x" and float(rows["torch-fp32"][11]) == 100.0
    assert float(rows["onnxruntime"][11]) == 100.0  # fp32 ONNX Runtime labels equal fp32 eager
    assert float(rows["onnxruntime"][9]) > 0.05  # peak resident memory in GB was measured
    assert "GFLOP per call" in out and "speed target" in out and table.read_text().strip() == out.strip()
    assert "machine: " in out and "TFLOP/s (" in out  # CPU named; each matmul rate names the engine that reached it
