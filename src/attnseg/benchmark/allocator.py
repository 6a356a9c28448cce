"""Eager fp32 inference under different memory allocators: time, minor page faults and peak memory per setting.

PyTorch's CPU tensors come from ``malloc``. glibc serves blocks above its mmap threshold (128 KiB, raised
dynamically up to 32 MiB) with a fresh ``mmap`` and returns them with ``munmap`` on free, so every large activation of
every forward is faulted in again page by page (minor page faults, zeroed by the kernel). An allocator that keeps
its pages avoids that. Each setting runs in a fresh child process whose environment is set before it starts (glibc
reads its ``MALLOC_*_`` variables and the loader ``LD_PRELOAD`` only at start-up):

- ``glibc``: the default.
- ``glibc-keep``: ``MALLOC_MMAP_THRESHOLD_`` at glibc's maximum (32 MiB), ``MALLOC_TRIM_THRESHOLD_`` and
  ``MALLOC_TOP_PAD_`` large: blocks up to 32 MiB come from the heap and stay mapped after free (larger ones are
  still mmapped: glibc ignores a threshold above 32 MiB).
- ``glibc-nommap``: ``MALLOC_MMAP_MAX_=0`` with the same trim/pad settings: every block comes from the heap, which is
  never trimmed, so freed pages of any size are reused.
- ``jemalloc``, ``tcmalloc``: preloaded (``LD_PRELOAD``) when the library is installed (Debian: ``apt-get install
  libjemalloc2 libtcmalloc-minimal4``); a missing one is skipped with one line. The child checks that the library
  really is mapped into it.

    python -m attnseg.benchmark.allocator                        # W48, 512x1024, scales 0.5,1.0,2.0, random weights
    python -m attnseg.benchmark.allocator --model mscale_ocr_hrnet_w18_small_v1 --height 128 --width 256 --runs 1

Columns: median wall seconds per call, median CPU seconds (user + system, all threads) and system seconds per call,
minor page faults per call (``getrusage`` ``ru_minflt`` deltas), the process's peak resident memory (``VmHWM``, model
included), and wall / CPU time and faults relative to the glibc default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

KEEP_PAGES = {"MALLOC_TRIM_THRESHOLD_": str(64 * 2**30), "MALLOC_TOP_PAD_": str(256 * 2**20)}
MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc: DEFAULT_MMAP_THRESHOLD_MAX on 64-bit; a larger value is ignored
SETTINGS: dict[str, dict[str, Any]] = {
    "glibc": {"env": {}},
    "glibc-keep": {"env": {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_MAX), **KEEP_PAGES}},
    "glibc-nommap": {"env": {"MALLOC_MMAP_MAX_": "0", **KEEP_PAGES}},
    "jemalloc": {"env": {}, "preload": ("libjemalloc.so.2", "libjemalloc.so"), "package": "libjemalloc2"},
    "tcmalloc": {"env": {}, "preload": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so"),
                 "package": "libtcmalloc-minimal4"},
}  # fmt: skip
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
                "/lib/x86_64-linux-gnu", "/lib64")  # fmt: skip


def find_library(names: tuple[str, ...], dirs: tuple[str, ...] | None = None) -> str | None:
    """Full path of the first of `names` found in `dirs` (default `LIBRARY_DIRS`; None when none is installed)."""
    for name in names:
        for folder in LIBRARY_DIRS if dirs is None else dirs:
            path = Path(folder) / name
            if path.is_file():
                return str(path)
    return None


def child_environment(setting: str, base: dict[str, str] | None = None) -> tuple[dict[str, str] | None, str]:
    """(environment of the child for `setting`, or None when its library is missing; the reason when missing)."""
    options = SETTINGS[setting]
    env = dict(os.environ if base is None else base)
    for key in list(env):  # a setting is measured alone: no allocator variables inherited from the caller
        if key.startswith("MALLOC_") and key.endswith("_") or key == "LD_PRELOAD":
            del env[key]
    env.update(options["env"])
    if "preload" in options:
        library = find_library(options["preload"])
        if library is None:
            return None, (f"skipping {setting}: {options['preload'][0]} not found "
                          f"(Debian: apt-get install {options['package']})")  # fmt: skip
        env["LD_PRELOAD"] = library
    return env, ""


def _mapped_libraries() -> str:
    try:
        return Path("/proc/self/maps").read_text()
    except OSError:
        return ""


def measure(model_name: str, height: int, width: int, scales: tuple[float, ...], runs: int, warmup: int,
            threads: int, seed: int = 0) -> dict[str, Any]:
    """In the child: eager fp32 forwards of `model_name` (random weights) at `scales`; per-call wall, CPU and system
    seconds, minor faults, and the peak resident memory."""
    import resource

    import torch

    from attnseg.benchmark.memory import peak_rss_bytes
    from attnseg.models import FixedScales, create_model, fuses_scales

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = create_model(model_name, num_classes=19).eval()
    forward = FixedScales(model, scales if fuses_scales(model) else None)
    images = torch.randn(1, 3, height, width)
    calls: list[dict[str, float]] = []
    with torch.inference_mode():
        for index in range(warmup + runs):
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            forward(images)
            after, seconds = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
            if index >= warmup:
                calls.append({"seconds": seconds, "minflt": after.ru_minflt - before.ru_minflt,
                              "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                              "sys": after.ru_stime - before.ru_stime})  # fmt: skip
    preload = os.environ.get("LD_PRELOAD", "")
    return {"calls": calls, "peak_bytes": peak_rss_bytes(),
            "preloaded": bool(preload) and Path(preload).name in _mapped_libraries()}  # fmt: skip


def run_setting(setting: str, args: argparse.Namespace) -> dict[str, Any] | str:
    """`measure` in a fresh child process with `setting`'s environment; its result, or a one-line reason."""
    env, reason = child_environment(setting)
    if env is None:
        return reason
    with tempfile.TemporaryDirectory(prefix="attnseg-alloc-") as folder:
        result_path = Path(folder) / "result.json"
        command = [sys.executable, "-m", "attnseg.benchmark.allocator", "--child", str(result_path),
                   "--model", args.model, "--height", str(args.height), "--width", str(args.width),
                   "--scales", ",".join(map(str, args.scales)), "--runs", str(args.runs), "--warmup",
                   str(args.warmup), "--threads", str(args.threads)]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not result_path.is_file():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return f"{setting} failed (exit {done.returncode}): {tail}"
        result = json.loads(result_path.read_text())
    if "LD_PRELOAD" in env and not result["preloaded"]:
        return f"{setting}: {env['LD_PRELOAD']} was not loaded into the child; not measured"
    return result


def _median(result: dict[str, Any], key: str) -> float:
    return statistics.median(call[key] for call in result["calls"])


def format_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The table, one row per measured setting, ratios against ``glibc`` (or the first setting measured)."""
    from attnseg.benchmark.memory import GB

    lines = [f"{'setting':<14}{'median s':>10}{'cpu s':>9}{'sys s':>8}{'minflt/call':>13}{'peak GB':>9}"
             f"{'x wall':>8}{'x cpu':>7}{'x faults':>10}"]  # fmt: skip
    reference = results.get("glibc") or next(iter(results.values()))
    for name, result in results.items():
        wall, cpu, faults = (_median(result, key) for key in ("seconds", "cpu", "minflt"))
        ratios = [value / max(_median(reference, key), 1e-12)
                  for value, key in ((wall, "seconds"), (cpu, "cpu"), (faults, "minflt"))]  # fmt: skip
        lines.append(f"{name:<14}{wall:>10.3f}{cpu:>9.3f}{_median(result, 'sys'):>8.3f}{faults:>13.0f}"
                     f"{result['peak_bytes'] / GB:>9.2f}{ratios[0]:>8.2f}{ratios[1]:>7.2f}{ratios[2]:>10.3f}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from attnseg.cli.arguments import scale_series

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mscale_ocr_hrnet_w48")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--scales", type=scale_series, default=(0.5, 1.0, 2.0))
    parser.add_argument("--runs", type=int, default=3, help="timed forwards per setting (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards first (allocator caches fill)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this text file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: the measuring child's result
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from attnseg.benchmark.rates import cpu_description, load_average

    args = parse_args(argv)
    if args.child is not None:
        result = measure(args.model, args.height, args.width, tuple(args.scales), args.runs, args.warmup,
                         args.threads)  # fmt: skip
        Path(args.child).write_text(json.dumps(result))
        return 0
    settings = [name.strip() for name in args.settings.split(",") if name.strip()]
    unknown = [name for name in settings if name not in SETTINGS]
    if unknown:
        print(f"--settings: unknown {unknown}; choose from {', '.join(SETTINGS)}", file=sys.stderr)
        return 2
    load_start = load_average()
    results: dict[str, dict[str, Any]] = {}
    for name in settings:
        print(f"measuring {name}", file=sys.stderr, flush=True)
        outcome = run_setting(name, args)
        if isinstance(outcome, str):
            print(outcome, file=sys.stderr)
        else:
            results[name] = outcome
    lines = [f"allocators: {args.model}, eager fp32, input 1x3x{args.height}x{args.width}, scales "
             f"{list(args.scales)}, {args.threads} threads, median of {args.runs} call(s) after {args.warmup} warm-up",
             f"machine: {cpu_description()}, {os.cpu_count()} CPUs, 1-min load average {load_start:.1f} at start, "
             f"{load_average():.1f} at end"]  # fmt: skip
    lines += format_table(results, args) if results else ["no setting could be measured"]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        from attnseg.fileio import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
