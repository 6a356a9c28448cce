"""The benchmark table and its target lines (speed, agreement, share of the bf16 matmul rate, memory), as printed
by `attnseg benchmark`."""

from __future__ import annotations

import os

from attnseg.benchmark.memory import GB
from attnseg.benchmark.routes import REFERENCE_ROUTE
from attnseg.benchmark.spec import BenchmarkReport

# Targets stated in the project brief (reported, never asserted).
TARGET_SPEEDUP = 5.0
TARGET_AGREEMENT = 0.995
TARGET_MEMORY_RATIO = 1.2
TARGET_BF16_SHARE = 0.40


def speedup(reference_seconds: float, seconds: float) -> float:
    """How many times faster than the reference (nan when either is missing)."""
    if not (reference_seconds > 0 and seconds > 0):
        return float("nan")
    return reference_seconds / seconds


def achieved_rate(flops: float, seconds: float) -> float:
    """FLOP/s of `flops` done in `seconds` (nan for a missing time)."""
    return flops / seconds if seconds > 0 else float("nan")


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    if value is None or value != value:  # None or NaN
        return missing
    return format(value, spec)


def format_report(report: BenchmarkReport) -> str:
    """The benchmark table and the target lines, as printed by `attnseg benchmark`."""
    spec = report.spec
    height, width = spec.input_size
    lines = [
        f"attnseg benchmark: {report.model_name}, input {spec.batch}x3x{height}x{width}, scales {list(spec.scales)}, "
        f"{spec.threads} threads, {spec.runs} runs after {spec.warmup} warm-up"
        + (f" ({', '.join(spec.slow_routes)}: {spec.slow_runs} run, no warm-up)" if spec.slow_routes else ""),
        f"model: {report.flops / 1e9:.1f} GFLOP per call (FlopCounterMode); measured matmul rate: "
        f"fp32 {report.fp32_rate / 1e12:.2f} TFLOP/s ({report.matmul_engines[0]}), "
        f"bf16 {report.bf16_rate / 1e12:.2f} TFLOP/s ({report.matmul_engines[1]})"
        + (f"; export {report.export_seconds:.1f} s ({'dynamic H/W' if report.export_dynamic else 'static'})"
           if report.export_seconds is not None else ""),
        f"machine: {report.cpu}, {os.cpu_count()} CPUs, "
        f"1-min load average {report.load_average[0]:.1f} at start, "
        f"{report.load_average[1]:.1f} at end (other processes share the CPU when it exceeds the thread count)",
        "",
        f"{'route':<15}{'median s':>10}{'min s':>9}{'max s':>9}{'img/s':>8}{'speed-up':>10}{'TF/s':>7}{'%bf16':>7}"
        f"{'peak GB':>9}{'+act GB':>9}{'agree %':>9}{'first s':>9}{'cpu s':>9}",
    ]
    reference = next((r for r in report.results if r.route == REFERENCE_ROUTE and r.error is None), None)
    for r in report.results:
        if r.error is not None:
            lines.append(f"{r.route:<15}  failed: {r.error[:150]}")
            continue
        rate = achieved_rate(report.flops, r.median)
        gain = speedup(reference.median, r.median) if reference else None
        agreement = None if r.agreement is None else 100 * r.agreement
        name = f"{r.route}*" if r.route in report.emulated else r.route
        lines.append(
            f"{name:<15}{r.median:>10.3f}{min(r.times):>9.3f}{max(r.times):>9.3f}"
            f"{spec.batch / r.median:>8.2f}{_fmt(gain, '.2f'):>9}x"
            f"{rate / 1e12:>7.2f}{100 * rate / report.bf16_rate:>6.0f}%"
            f"{r.peak_bytes / GB:>9.2f}{r.added_bytes / GB:>9.2f}{_fmt(agreement, '.2f'):>9}"
            f"{r.first_call:>9.1f}{_fmt(r.cpu_median, '.3f'):>9}"
        )  # fmt: skip
    routes_run = {r.route for r in report.results}
    lines += [f"* {reason}" for route, reason in report.emulated.items() if route in routes_run]
    lines.append("")
    lines += target_lines(report)
    return "\n".join(lines)


def target_lines(report: BenchmarkReport) -> list[str]:
    """Whether the speed, agreement, bf16-share and memory targets are met, and by how much."""
    lines = []
    ok = [r for r in report.results if r.error is None]
    reference = next((r for r in ok if r.route == REFERENCE_ROUTE), None)
    if reference is not None:
        candidates = [r for r in ok if r.route != REFERENCE_ROUTE]
        if candidates:
            best = min(candidates, key=lambda r: r.median)
            gain = speedup(reference.median, best.median)
            agreement = best.agreement if best.agreement is not None else float("nan")
            met = gain >= TARGET_SPEEDUP and agreement >= TARGET_AGREEMENT
            lines.append(f"speed target (>= {TARGET_SPEEDUP:.0f}x fp32 eager at >= {100 * TARGET_AGREEMENT:.1f}% "
                         f"agreement): fastest {best.route} {gain:.2f}x at {100 * agreement:.2f}% -> "
                         f"{'MET' if met else 'NOT MET'} (by CPU time: "
                         f"{speedup(reference.cpu_median, best.cpu_median):.2f}x)")  # fmt: skip
    if ok:
        fastest = min(ok, key=lambda r: r.median)
        share = achieved_rate(report.flops, fastest.median) / report.bf16_rate
        cpu_share = achieved_rate(report.flops, fastest.cpu_median / report.spec.threads) / report.bf16_rate
        lines.append(f"compute target (>= {100 * TARGET_BF16_SHARE:.0f}% of the bf16 matmul rate): {fastest.route} "
                     f"{100 * share:.0f}% -> {'MET' if share >= TARGET_BF16_SHARE else 'NOT MET'} "
                     f"(by CPU time per thread: {100 * cpu_share:.0f}%)")  # fmt: skip
    check = report.memory_check
    if check is not None:
        if "error" in check:
            lines.append(f"memory target: scale {check['scale']} alone failed: {check['error']}")
        else:
            ratio = check["multi_added"] / max(check["single_added"], 1)
            verdict = "MET" if ratio <= TARGET_MEMORY_RATIO else "NOT MET"
            peak_ratio = check["multi_peak"] / max(check["single_peak"], 1)
            lines.append(
                f"memory target (multi-scale <= {TARGET_MEMORY_RATIO}x scale {check['scale']} alone, "
                f"{check['route']}): "
                f"+act {check['multi_added'] / GB:.2f} GB vs {check['single_added'] / GB:.2f} GB = {ratio:.2f}x "
                f"(peak RSS {check['multi_peak'] / GB:.2f} vs {check['single_peak'] / GB:.2f} GB = {peak_ratio:.2f}x; "
                f"scale alone took {check['single_seconds']:.1f} s) -> {verdict}"
            )  # fmt: skip
    return lines

