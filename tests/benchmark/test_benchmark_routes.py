"""Which routes run: without their optional packages, and where this CPU only emulates their precision."""

import sys

from attnseg.cli.main import main


def test_benchmark_routes_without_their_packages(monkeypatch, capsys):
    import importlib.util

    from attnseg.cli.benchmark import installed_routes

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "openvino" else real_find_spec(name, *args))  # fmt: skip
    routes = ["torch-fp32", "onnxruntime", "openvino-bf16"]
    messages = []
    # By default a route that cannot run is left out, with a line naming the extra that would enable it
    assert installed_routes(routes, explicit=False, log=messages.append) == ["torch-fp32", "onnxruntime"]
    assert messages == [messages[0]] and "openvino-bf16" in messages[0] and "attnseg[openvino]" in messages[0]
    # Asked for by name, it is a one-line error from the CLI, not a traceback from the export child process
    monkeypatch.setitem(sys.modules, "openvino", None)
    code = main(["benchmark", "psanet_r18_narrow", "--size", "32", "64", "--routes", "torch-fp32,openvino-bf16"])
    assert code == 2 and "attnseg[openvino]" in capsys.readouterr().err


def test_benchmark_leaves_out_or_marks_emulated_routes(monkeypatch):
    import attnseg.hardware as hardware
    from attnseg.cli.benchmark import native_routes

    routes = ["torch-fp32", "torch-bf16", "openvino-fp32", "openvino-bf16"]
    monkeypatch.setattr(hardware, "native_bf16_here", lambda: (False, "no AVX-512 bf16 or AMX on this CPU"))
    lines: list[str] = []
    kept, marked = native_routes(routes, explicit=False, log=lines.append)
    assert kept == ["torch-fp32", "openvino-fp32"] and marked == {}
    assert lines[0].startswith("skipping route torch-bf16: bf16 autocast is emulated")
    assert "compiles to fp32" in lines[1]
    kept, marked = native_routes(routes, explicit=True, log=lines.append)  # asked for by name: run, marked
    assert kept == routes and set(marked) == {"torch-bf16", "openvino-bf16"}
    monkeypatch.setattr(hardware, "native_bf16_here", lambda: (True, "CPU has AMX bf16"))
    assert native_routes(routes, explicit=False, log=lines.append) == (routes, {})


def test_int8_route_selection_and_its_quantizer_package(monkeypatch):
    import importlib.util

    from attnseg.benchmark import ROUTES
    from attnseg.cli.benchmark import installed_routes, select_routes

    # --precision int8 keeps the INT8 route, and fp32 eager joins as the reference
    assert select_routes(",".join(ROUTES), "int8", None) == ["torch-fp32", "openvino-int8"]
    # Every other package "installed" (CI's first step has no OpenVINO): only the quantizer is missing
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "nncf" else object())
    messages: list[str] = []
    kept = installed_routes(["torch-fp32", "openvino-fp32", "openvino-int8"], explicit=False, log=messages.append)
    assert kept == ["torch-fp32", "openvino-fp32"]
    assert messages == [messages[0]] and "openvino-int8" in messages[0] and "attnseg[int8]" in messages[0]


def test_int8_calibration_size_user_errors_are_one_line(capsys):
    code = main(["benchmark", "psanet_r18_narrow", "--int8-calib-size", "100000", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "--int8-calib-size 100000 64: more than the 16384 px per side" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code = main(["benchmark", "mscale_ocr_hrnet_w18_small_v1", "--size", "64", "128", "--scales", "0.5,1.0,16",
                 "--int8-calib-size", "1024", "2048"])  # fmt: skip
    assert code == 2 and "--scales" in capsys.readouterr().err
