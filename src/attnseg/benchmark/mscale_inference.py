"""Inference time and peak memory of MscaleOCR, single-scale vs hierarchical multi-scale.

Each case runs in a fresh spawned child process so that its peak RSS (``VmHWM``) belongs to that case alone;
the table reports the median wall time over `--runs` forwards and the peak RSS growth over the process after the
model was built (activations + outputs), measured in one invocation so the ratios compare like with like.

    python -m attnseg.benchmark.mscale_inference                      # W48, 1024x2048, 1.0 and (0.5, 1.0, 2.0)
    python -m attnseg.benchmark.mscale_inference --height 128 --width 256 --runs 2   # quick check

At full size on 2 CPU cores expect minutes (PERF_NOTES: ~11 s single-scale, ~220 s three-scale fp32).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from attnseg.benchmark.children import run_in_child
from attnseg.benchmark.memory import current_rss_bytes, peak_rss_bytes

CASES: dict[str, tuple[float, ...]] = {"single": (1.0,), "ms2": (0.5, 1.0), "ms3": (0.5, 1.0, 2.0)}


def measure_case(case: str, model_name: str, num_classes: int, height: int, width: int, runs: int, warmup: int,
                 threads: int, bf16: bool, keep_scale_outputs: bool) -> dict:
    """Runs in the child: forward times of one case and the process's resident memory before and at its peak."""
    import torch

    from attnseg.models import create_model

    torch.set_num_threads(threads)
    scales = CASES[case]
    model = create_model(model_name, num_classes=num_classes, eval_scales=scales).eval()
    images = torch.randn(1, 3, height, width)
    baseline = current_rss_bytes()
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(warmup):
            model(images, keep_scale_outputs=keep_scale_outputs)
        for _ in range(runs):
            start = time.perf_counter()
            out = model(images, keep_scale_outputs=keep_scale_outputs)
            times.append(time.perf_counter() - start)
            del out
    return {"case": case, "scales": list(scales), "times": times, "peak_rss": peak_rss_bytes(),
            "baseline_rss": baseline}


def run_case(case: str, args: argparse.Namespace) -> dict:
    """`measure_case` in a fresh process, so that its memory high-water mark is this case's alone."""
    result = run_in_child(measure_case, case=case, model_name=args.model, num_classes=args.num_classes,
                          height=args.height, width=args.width, runs=args.runs, warmup=args.warmup,
                          threads=args.threads, bf16=args.bf16, keep_scale_outputs=args.keep_scale_outputs)  # fmt: skip
    if "error" in result:
        raise RuntimeError(f"case {case} failed: {result['error']}")
    return result


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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    print_table([run_case(case, args) for case in cases], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
