"""`python -m attnseg.benchmark.eval`: the throughput table (model alone, eval before / --no-pipeline / pipelined,
shares outside the model), the stage table and the verdict, at the smallest options."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from attnseg.benchmark import eval as eval_benchmark
from attnseg.inference import evaluate
from attnseg.metrics import confusion


def run_script(*options: str, cwd) -> str:
    done = subprocess.run([sys.executable, "-m", "attnseg.benchmark.eval", *options], cwd=cwd, capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def header_after(out: str, first_word: str) -> list[str]:
    return next(line for line in out.splitlines() if line.split()[:1] == [first_word]).split()


def _table(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        for name in ("model alone", "eval, before", "eval, --no-pipeline", "eval, --pipeline", "eval, default",
                     "default, no dumps"):
            if line.startswith(name + " "):
                rows[name] = line[len(name):].split()
    return rows


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_eval_throughput_table(tmp_path, backend):
    if backend == "openvino":  # CI's second step installs it and runs the tests named openvino
        pytest.importorskip("openvino")
    table = tmp_path / "table.txt"
    out = run_script("--images", "2", "--height", "64", "--width", "128", "--model",
                     "mscale_ocr_hrnet_w18_small_v1", "--threads", "1", "--workers", "1", "--backend", backend,
                     "--rounds", "2", "--out", str(table), cwd=tmp_path)
    assert header_after(out, "run") == ["run", "s/image", "images/s", "forward", "s/image", "outside", "the", "model",
                                        "CPU", "s/image", "outside,", "CPU", "forward", "faults/1k"]
    rows = _table(out)
    assert list(rows) == ["model alone", "eval, before", "eval, --no-pipeline", "eval, --pipeline", "eval, default",
                          "default, no dumps"]
    model_seconds, model_cpu = float(rows["model alone"][0]), float(rows["model alone"][4])
    alone_run, alone_forward = float(rows["model alone"][0]), float(rows["model alone"][2])
    # Alone, the run is all forward (timed twice); on a loaded machine a preemption between two forwards adds a few
    # milliseconds to the run only (3 ms seen beside two busy processes).
    assert abs(alone_run - alone_forward) <= 0.02 + 0.05 * alone_forward

    half = 0.0005  # the table rounds seconds to 3 decimals and shares to 0.1 %

    def assert_printed_ratio(printed: float, a: float, b: float) -> None:
        # Interval bounds, not a first-order tolerance: at 64x128 the model's CPU time rounds to a few milliseconds,
        # where the first-order bound is too tight (7.826 printed, 7.0 +- 0.814 allowed, in a fresh CI run).
        low = (a - half) / (b + half)
        high = (a + half) / (b - half) if b > half else float("inf")
        assert low - half - 1e-9 <= printed <= high + half + 1e-9, (printed, a, b)

    assert all(float(row[-1]) >= 0 for row in rows.values())
    for name, (seconds, per_second, forward, share, cpu, cpu_share, _) in ((n, r) for n, r in rows.items()
                                                                             if n != "model alone"):
        seconds, forward, cpu = float(seconds), float(forward), float(cpu)
        assert 0 < forward < seconds
        assert_printed_ratio(1 + float(share.rstrip("%")) / 100, seconds, model_seconds)
        assert_printed_ratio(1 + float(cpu_share.rstrip("%")) / 100, cpu, model_cpu)
        assert_printed_ratio(float(per_second), 1.0, seconds)
    lines = out.splitlines()
    first = next(index for index, line in enumerate(lines) if line.startswith("stage ")) + 1
    stages = [line.rsplit(None, 1)[0].strip() for line in lines[first : lines.index("", first)]]
    assert stages == ["decode image", "decode label", "normalise", "labels, before (max over NCHW)",
                      "counts, before (long tensors)", "labels (first_max_labels)", "counts (numpy bins)", "dump"]
    assert bool(re.search(r"OpenVINO (fp32|bf16) \(scales", out)) == (backend == "openvino") and "\nmachine: " in out

    assert "target: data + labels + counts + dumps <= 10% of the model time: default" in out
    assert "eval, default: what `attnseg eval` does here (pipeline auto -> " in out
    assert "rounds: 2 (means)" in out
    assert table.read_text() == out


def test_eval_throughput_precision_follows_the_cpu():
    from attnseg.benchmark.eval import openvino_precision
    from attnseg.hardware import resolve_openvino_precision

    assert openvino_precision("fp32") == "fp32"
    assert openvino_precision("auto") == resolve_openvino_precision("auto").precision


def test_code_before_pipelining_is_restored_and_counts_the_same():
    import numpy as np
    import torch

    scores = torch.randn(1, 19, 8, 16)
    target = torch.randint(0, 20, (1, 8, 16))
    fast = confusion.ConfusionMatrix(19)
    fast.update(evaluate.scores_to_labels(scores), target)
    with eval_benchmark.code_before_pipelining():
        assert evaluate.first_max_labels(scores) is None
        slow = confusion.ConfusionMatrix(19)
        slow.update(evaluate.scores_to_labels(scores), target)
    assert evaluate.first_max_labels(scores) is not None
    assert np.array_equal(fast.confusion, slow.confusion)
