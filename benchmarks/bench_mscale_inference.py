"""Inference time and peak memory of MscaleOCR, single-scale vs hierarchical multi-scale.

Each case runs in a fresh child process so that its peak RSS (`resource.getrusage`) belongs to that case alone;
the table reports the median wall time over `--runs` forwards and the peak RSS growth over the process after the
model was built (activations + outputs), measured in one invocation so the ratios compare like with like.

    python benchmarks/bench_mscale_inference.py                      # W48, 1024x2048, 1.0 and (0.5, 1.0, 2.0)
    python benchmarks/bench_mscale_inference.py --height 128 --width 256 --runs 2   # quick check

At full size on 2 CPU cores expect minutes (PERF_NOTES: ~11 s single-scale, ~220 s three-scale fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CASES: dict[str, tuple[float, ...]] = {"single": (1.0,), "ms2": (0.5, 1.0), "ms3": (0.5, 1.0, 2.0)}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_child(args: argparse.Namespace) -> dict:
    import torch

    from attnseg.models import create_model

    torch.set_num_threads(args.threads)
    scales = CASES[args.child]
    model = create_model(args.model, num_classes=args.num_classes, eval_scales=scales).eval()
    model.keep_scale_outputs = args.keep_scale_outputs
    images = torch.randn(1, 3, args.height, args.width)
    baseline = _rss_bytes()
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        for _ in range(args.warmup):
            model(images)
        for _ in range(args.runs):
            start = time.perf_counter()
            out = model(images)
            times.append(time.perf_counter() - start)
            del out
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {"case": args.child, "scales": list(scales), "times": times, "peak_rss": peak, "baseline_rss": baseline}


def run_case(case: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", case, "--model", args.model, "--height", str(args.height),
               "--width", str(args.width), "--runs", str(args.runs), "--warmup", str(args.warmup),
               "--threads", str(args.threads), "--num-classes", str(args.num_classes)]  # fmt: skip
    command += ["--bf16"] if args.bf16 else []
    command += ["--keep-scale-outputs"] if args.keep_scale_outputs else []
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    gib = 1024**3
    print(f"{args.model}, input 1x3x{args.height}x{args.width}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"{args.threads} threads, median of {args.runs} run(s) after {args.warmup} warm-up")  # fmt: skip
    columns = ("median s", 9), ("min s", 8), ("x single", 9), ("peak RSS GiB", 13), ("+act GiB", 9)
    header = f"{'case':<8} {'scales':<16} " + " ".join(f"{name:>{width}}" for name, width in columns)
    print(header)
    print("-" * len(header))
    reference = next((statistics.median(r["times"]) for r in results if r["case"] == "single"), None)
    for r in results:
        median = statistics.median(r["times"])
        ratio = f"{median / reference:.2f}" if reference else "-"
        print(f"{r['case']:<8} {','.join(f'{s:g}' for s in r['scales']):<16} {median:>9.3f} {min(r['times']):>8.3f} "
              f"{ratio:>9} {r['peak_rss'] / gib:>13.2f} {(r['peak_rss'] - r['baseline_rss']) / gib:>9.2f}")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mscale_ocr_hrnet_w48")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3, help="timed forwards per case (median reported)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed forwards before timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--cases", default="single,ms3", help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (default fp32)")
    parser.add_argument("--keep-scale-outputs", action="store_true", help="also keep per-scale logits (more memory)")
    parser.add_argument("--child", choices=sorted(CASES), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return 0
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    print_table([run_case(case, args) for case in cases], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
