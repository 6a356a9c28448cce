"""`python -m attnseg.benchmark.allocator`: each allocator setting in a fresh child with its environment, a missing
preload library skipped with one line, and the table."""

from __future__ import annotations

import subprocess
import sys

from attnseg.benchmark import allocator


def test_child_environment_sets_the_glibc_variables_and_drops_inherited_ones():
    base = {"PATH": "/bin", "MALLOC_ARENA_MAX_": "2", "LD_PRELOAD": "/x/libother.so"}
    env, reason = allocator.child_environment("glibc", base)
    assert env == {"PATH": "/bin"} and reason == ""  # the default really is the default
    env, _ = allocator.child_environment("glibc-keep", base)
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2**20) and int(env["MALLOC_TRIM_THRESHOLD_"]) >= 2**32
    env, _ = allocator.child_environment("glibc-nommap", base)
    assert env["MALLOC_MMAP_MAX_"] == "0" and "LD_PRELOAD" not in env


def test_missing_preload_library_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(allocator, "LIBRARY_DIRS", (str(tmp_path),))
    env, reason = allocator.child_environment("jemalloc", {})
    assert env is None and reason == "skipping jemalloc: libjemalloc.so.2 not found (Debian: apt-get install " \
                                     "libjemalloc2)"
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    env, reason = allocator.child_environment("jemalloc", {})
    assert env == {"LD_PRELOAD": str(tmp_path / "libjemalloc.so.2")} and reason == ""


def test_allocator_table(tmp_path):
    table = tmp_path / "table.txt"
    options = ["--model", "mscale_ocr_hrnet_w18_small_v1", "--height", "64", "--width", "128", "--scales", "0.5,1.0",
               "--runs", "1", "--warmup", "1", "--threads", "1", "--settings", "glibc,glibc-nommap,jemalloc",
               "--out", str(table)]  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "attnseg.benchmark.allocator", *options], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("setting"))
    assert header.split() == ["setting", "median", "s", "cpu", "s", "sys", "s", "minflt/call", "peak", "GB", "x",
                              "wall", "x", "cpu", "x", "faults"]
    rows = {line.split()[0]: line.split() for line in lines[lines.index(header) + 1:]}
    assert rows["glibc"][-1] == "1.000" and float(rows["glibc"][4]) > 0  # faults counted, ratio to itself
    assert float(rows["glibc"][5]) > 0.05 and "glibc-nommap" in rows  # peak resident memory in GB
    # jemalloc is either measured (preloaded and checked) or skipped with one line, never a failure
    assert "jemalloc" in rows or "skipping jemalloc" in done.stderr
    assert table.read_text() == done.stdout


def test_allocator_unknown_setting_is_refused(capsys):
    assert allocator.main(["--settings", "glibc,mimalloc"]) == 2
    assert "--settings: unknown ['mimalloc']" in capsys.readouterr().err
