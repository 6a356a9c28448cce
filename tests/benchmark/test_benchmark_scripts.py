"""Every measurement script (``python -m attnseg.benchmark.<name>``) runs with its smallest options and prints its
table: header and columns, so that none of them can rot between the runs that fill docs/benchmarks/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_script(name: str, *options: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", f"attnseg.benchmark.{name}", *options], cwd=cwd,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def header_after(out: str, first_word: str) -> list[str]:
    return next(line for line in out.splitlines() if line.split()[:1] == [first_word]).split()


def test_contention_idle_and_busy_rows(tmp_path):
    # The narrow PSANet demo at a 64x128 crop (window 15x15 for it), one step: the two children's start dominates.
    config = tmp_path / "tiny.yaml"
    config.write_text(f"base: {REPO / 'configs' / 'demo_psanet.yaml'}\nmodel:\n  kwargs:\n    mask_size: [15, 15]\n"
                      "data:\n  crop_size: [64, 128]\ntrain:\n  batch_size: 1\n  precision: fp32\n"
                      "eval:\n  precision: fp32\n")  # fmt: skip
    table = tmp_path / "table.txt"
    out = run_script("contention", "--config", str(config), "--ways", "planned", "--steps", "1", "--passes", "1",
                     "--height", "64", "--width", "128", "--out", str(table), "--together", "--together-steps", "4",
                     "--watch-interval", "0", cwd=tmp_path)
    assert header_after(out, "way") == ["way", "load", "threads", "step", "s", "eval", "s", "what", "it", "saw"]
    rows = [line.split() for line in out.splitlines() if line.startswith("planned ")]
    assert [row[1] for row in rows] == ["idle", "busy"] and all(float(row[3]) > 0 for row in rows)
    assert "planned: beside one busy process the step takes" in out and table.read_text() == out
    together = [line.split() for line in out.splitlines() if line.split()[:1] in (["fixed"], ["watched"])]
    assert [(row[0], row[1]) for row in together] == [("fixed", "0"), ("fixed", "1"),
                                                      ("watched", "0"), ("watched", "1")]  # fmt: skip
    assert all(1 <= int(row[2]) <= 2 and float(row[3]) > 0 for row in together)


def test_mscale_inference_cases(tmp_path):
    out = run_script("mscale_inference", "--model", "mscale_ocr_hrnet_w18_small_v1", "--height", "64", "--width",
                     "128", "--runs", "1", "--cases", "single,ms2", "--threads", "1", cwd=tmp_path)
    assert header_after(out, "case") == ["case", "scales", "median", "s", "min", "s", "x", "single", "peak", "RSS",
                                         "GiB", "+act", "GiB"]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("single ", "ms2 "))}
    assert rows["single"][1] == "1" and rows["ms2"][1] == "0.5,1" and rows["single"][4] == "1.00"
    assert float(rows["ms2"][5]) > 0.05  # the child's peak resident memory in GiB


def test_psamask_op_table(tmp_path):
    out = run_script("psamask", "--repeats", "1", "--skip-model", "--threads", "1", "--grids", "32x64",
                     cwd=tmp_path)
    assert header_after(out, "grid")[:4] == ["grid", "mode", "ours", "ms"]
    rows = [line.split() for line in out.splitlines() if line.startswith("32x64 ")]
    assert [row[3] for row in rows] == ["collect", "distribute"] and "64x128" not in out


def test_score_against_the_official_scorer(tmp_path):
    out = run_script("score", "--images", "1", "--height", "64", "--width", "128", "--runs", "1", "--workers",
                     "1", "--data", str(tmp_path / "data"), cwd=tmp_path)
    assert "max |attnseg - official| over all official scores: 0.000e+00" in out
    header = next(line for line in out.splitlines() if line.startswith("| scorer"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["scorer", "median s", "ms / image",
                                                                        "speed-up"]
    assert sum(line.startswith("| ") for line in out.splitlines()) == 5  # header + 4 rows


def test_train_step_table(tmp_path):
    out = run_script("train_step", "--model", "mscale_ocr_hrnet_w18_small_v1", "--height", "64", "--width", "128",
                     "--repeats", "1", "--warmup", "0", "--precision", "fp32", "--layout", "nchw", "--threads", "1",
                     cwd=tmp_path)
    assert header_after(out, "precision") == ["precision", "layout", "step", "(s)", "img/s", "peak", "RSS", "(GiB)",
                                              "speed-up"]
    row = header_after(out, "fp32")
    assert row[1] == "nchw" and row[-1] == "1.00x" and float(row[4]) > 0.05


def test_train_step_grad_checkpoint_comparison(tmp_path):
    out = run_script("train_step", "--model", "mscale_ocr_hrnet_w18_small_v1", "--height", "64", "--width", "128",
                     "--repeats", "1", "--warmup", "0", "--precision", "fp32", "--layout", "nchw", "--threads", "1",
                     "--grad-checkpoint", "compare", cwd=tmp_path)  # fmt: skip
    assert header_after(out, "grad_checkpoint") == ["grad_checkpoint", "step", "(s)", "CPU", "(s)", "RSS", "before",
                                                    "steps", "(GiB)", "peak", "RSS", "(GiB)"]  # fmt: skip
    off, on = header_after(out, "off"), header_after(out, "on")
    assert all(float(value) > 0 for value in off[1:] + on[1:])
    assert float(on[4]) >= float(on[3]) and float(off[4]) >= float(off[3])  # the peak holds what was there before
    assert "checkpointing: peak memory" in out and "step time" in out
