"""The machine's matmul rate (best engine), its CPU description, and the shared timing helpers."""

import attnseg.benchmark.rates as rates


def test_machine_matmul_rate_takes_the_best_engine(monkeypatch):
    monkeypatch.setattr(rates, "matmul_rate", lambda dtype, size=2048, threads=2: 1.0e11)
    monkeypatch.setattr(rates, "openvino_matmul_rate",
                        lambda dtype, threads=2, kind="matmul": 3.0e11 if kind == "matmul" else 2.0e11)  # fmt: skip
    assert rates.machine_matmul_rate("bf16") == (3.0e11, "OpenVINO")
    assert rates.matmul_rates("fp32") == {"torch.mm": 1.0e11, "OpenVINO": 3.0e11, "OpenVINO 1x1 conv": 2.0e11}
    monkeypatch.setattr(rates, "openvino_matmul_rate", lambda dtype, threads=2, kind="matmul": None)  # not installed
    assert rates.machine_matmul_rate("bf16") == (1.0e11, "torch.mm")
    assert rates.cpu_description()  # model name and matrix ISA, e.g. "AMD EPYC (AVX-512 bf16, no AMX)"


def test_matmul_rate_is_measured_for_a_small_matrix():
    assert rates.matmul_rate("fp32", size=64, seconds=0.01, threads=1) > 0


def test_timing_helpers_count_their_calls():
    calls = []
    assert rates.median_seconds(lambda: calls.append(1), repeats=3, warmup=2) >= 0
    assert len(calls) == 5  # warm-up calls run but are not timed
    calls.clear()
    assert rates.best_seconds(lambda: calls.append(1), seconds=0.0) >= 1e-9
    assert len(calls) == 2  # one untimed call, then at least one timed one


def test_emulated_routes_only_for_bf16_routes(monkeypatch):
    import attnseg.hardware as hardware

    monkeypatch.setattr(hardware, "native_bf16_here", lambda: (False, "AVX2 only"))
    assert rates.emulated_routes(["torch-fp32", "onnxruntime"]) == {}
    assert set(rates.emulated_routes(["torch-fp32", "torch-compile", "openvino-bf16"])) == {"torch-compile",
                                                                                             "openvino-bf16"}


def test_int8_rates_name_their_engines(monkeypatch):
    import attnseg.benchmark.int8 as int8

    monkeypatch.setattr(int8, "int_mm_rate", lambda threads=2: 1.0e9)
    by_kind = {"matmul": 2.0e11, "conv1x1": 4.0e11}
    monkeypatch.setattr(rates, "openvino_matmul_rate", lambda dtype, threads=2, kind="matmul": by_kind[kind])
    assert rates.matmul_rates("int8") == {"torch._int_mm": 1.0e9, "OpenVINO": 2.0e11, "OpenVINO 1x1 conv": 4.0e11}
    assert rates.machine_matmul_rate("int8") == (4.0e11, "OpenVINO 1x1 conv")
    monkeypatch.setattr(rates, "openvino_matmul_rate", lambda dtype, threads=2, kind="matmul": None)
    monkeypatch.setattr(int8, "int_mm_rate", lambda threads=2: None)
    rate, engine = rates.machine_matmul_rate("int8")  # no engine: reported as missing, not as zero
    assert rate != rate and engine == "none"


def test_emulated_bf16_rate_uses_a_small_matrix(monkeypatch):
    import attnseg.hardware as hardware

    sizes = []
    monkeypatch.setattr(rates, "matmul_rate", lambda dtype, size=2048, threads=2: sizes.append(size) or 1.0e9)
    monkeypatch.setattr(rates, "openvino_matmul_rate", lambda dtype, threads=2, kind="matmul": None)
    monkeypatch.setattr(hardware, "native_bf16_here", lambda: (False, "AVX2 only"))
    rates.matmul_rates("bf16")
    monkeypatch.setattr(hardware, "native_bf16_here", lambda: (True, "AMX"))
    rates.matmul_rates("bf16")
    rates.matmul_rates("fp32")
    assert sizes == [rates.EMULATED_SIZE, 2048, 2048]  # an emulated 2048 bf16 matmul takes a minute on AVX2
