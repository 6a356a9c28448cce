"""Training-step time and peak memory of MscaleOCR (two-scale training) on this CPU: fp32 vs bf16 autocast, NCHW vs
channels-last (`train.channels_last`, the default of `attnseg train`).

One step = forward at scales 0.5 and 1.0, the NVIDIA loss layout (CE version: aux 0.4, joint 1.0, 0.5x and 1.0x
0.05 each), backward, SGD step. Prints medians over --repeats steps (after --warmup) and the bf16/fp32 ratio,
all measured in this one run. Peak memory is the process's peak resident set size (ru_maxrss) after each
precision's runs (``VmHWM``), so run one precision per process (--precision) when the absolute peak matters.

    python -m attnseg.benchmark.train_step                        # full size: w48, 512x1024, batch 1
    python -m attnseg.benchmark.train_step --model mscale_ocr_hrnet_w18_small_v1 --height 128 --width 256 --batch 8
                                                                 # the demo's model and step

``--grad-checkpoint compare`` measures one precision and layout without and with activation checkpointing
(`train.grad_checkpoint`), each in a fresh child process so that each peak RSS is that setting's alone, and prints
both rows with the memory saved and the time added::

    python -m attnseg.benchmark.train_step --grad-checkpoint compare --precision fp32 --layout channels_last
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from attnseg.benchmark.memory import current_rss_bytes, peak_rss_bytes
from attnseg.engine.trainer import autocast_context
from attnseg.losses import CrossEntropyLoss, LossTerm, SegmentationCriterion
from attnseg.models import create_model


def peak_rss_gib() -> float:
    return peak_rss_bytes() / 2**30


def criterion() -> SegmentationCriterion:
    return SegmentationCriterion([
        LossTerm("aux_logits", CrossEntropyLoss(), 0.4, "aux_joint"),
        LossTerm("logits", CrossEntropyLoss(), 1.0, "main_joint"),
        LossTerm("scale_logits[0.5]", CrossEntropyLoss(), 0.05, "lo_0.5x"),
        LossTerm("scale_logits[1.0]", CrossEntropyLoss(), 0.05, "hi_1.0x"),
    ])


def measure(model_name: str, precision: str, channels_last: bool, height: int, width: int, batch: int, warmup: int,
            repeats: int, grad_checkpoint: bool = False):  # fmt: skip
    """(median step seconds, peak RSS GiB, RSS GiB before the first step, median step CPU seconds) of `repeats`
    training steps after `warmup` ones. The RSS before the steps holds the model, the inputs and the libraries; CPU
    seconds (all threads of this process) vary less than wall time when other processes share the cores."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=19).train()
    if grad_checkpoint:
        model.set_grad_checkpointing(True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = criterion()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch, 3, height, width)
    labels = torch.randint(0, 19, (batch, height, width))
    device = torch.device("cpu")
    rss_ready = current_rss_bytes() / 2**30
    times, cpu_times = [], []
    for step in range(warmup + repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        with autocast_context(device, precision):
            output = model(images)
        loss = loss_fn(output, labels)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        if step >= warmup:
            times.append(elapsed)
            cpu_times.append(cpu)
        print(f"  {precision} {layout_name(channels_last)} step {step}: {elapsed:.2f} s (loss {loss.item():.3f})",
              file=sys.stderr, flush=True)
    return statistics.median(times), peak_rss_gib(), rss_ready, statistics.median(cpu_times)


def _child_command(args: argparse.Namespace, setting: str) -> list[str]:
    return [sys.executable, "-m", "attnseg.benchmark.train_step", "--model", args.model, "--height", str(args.height),
            "--width", str(args.width), "--batch", str(args.batch), "--warmup", str(args.warmup), "--repeats",
            str(args.repeats), "--threads", str(args.threads), "--precision", args.precision, "--layout", args.layout,
            "--grad-checkpoint", setting, "--json"]  # fmt: skip


def compare_grad_checkpoint(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Runs the off and on settings one after the other, each in its own process; returns their JSON results."""
    results = {}
    for setting in ("off", "on"):
        completed = subprocess.run(_child_command(args, setting), stdout=subprocess.PIPE, text=True, check=True)
        results[setting] = json.loads(completed.stdout.strip().splitlines()[-1])
    return results


def grad_checkpoint_table(results: dict[str, dict[str, float]]) -> list[str]:
    """Rows of the comparison: per setting step time and peak RSS, then the memory saved and the time added."""
    lines = [f"{'grad_checkpoint':<16} {'step (s)':>9} {'CPU (s)':>8} {'RSS before steps (GiB)':>23} "
             f"{'peak RSS (GiB)':>15}"]
    for setting, result in results.items():
        lines.append(f"{setting:<16} {result['step_s']:>9.3f} {result['cpu_s']:>8.3f} "
                     f"{result['rss_before_gib']:>23.2f} {result['peak_gib']:>15.2f}")
    off, on = results["off"], results["on"]
    saved = 100.0 * (1.0 - on["peak_gib"] / off["peak_gib"])
    added, added_cpu = (100.0 * (on[key] / off[key] - 1.0) for key in ("step_s", "cpu_s"))
    lines.append(f"checkpointing: peak memory {saved:.1f}% less, step time {added:+.1f}% (CPU time {added_cpu:+.1f}%)")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mscale_ocr_hrnet_w48")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--layout", choices=("nchw", "channels_last", "both"), default="both")
    parser.add_argument("--grad-checkpoint", choices=("off", "on", "compare"), default="off",
                        help="activation checkpointing; compare: off and on, each in a fresh child process")
    parser.add_argument("--json", action="store_true", help="one precision and layout: print the result as JSON")
    args = parser.parse_args()
    single = args.precision != "both" and args.layout != "both"
    if (args.grad_checkpoint == "compare" or args.json) and not single:
        parser.error("--grad-checkpoint compare and --json measure one setting: give --precision and --layout")
    if args.grad_checkpoint == "compare":
        print(f"{args.model}, crop {args.height}x{args.width}, batch {args.batch}, {args.precision} {args.layout}, "
              f"{args.threads} threads, median of {args.repeats} steps after {args.warmup} (torch {torch.__version__})")
        print("\n".join(grad_checkpoint_table(compare_grad_checkpoint(args))))
        return 0
    torch.set_num_threads(args.threads)
    if args.json:
        median, peak, rss_before, cpu = measure(args.model, args.precision, args.layout == "channels_last", args.height,
                                           args.width, args.batch, args.warmup, args.repeats,
                                           args.grad_checkpoint == "on")  # fmt: skip
        print(json.dumps({"step_s": median, "cpu_s": cpu, "peak_gib": peak, "rss_before_gib": rss_before}))
        return 0
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    layouts = (False, True) if args.layout == "both" else (args.layout == "channels_last",)
    results = {(p, cl): measure(args.model, p, cl, args.height, args.width, args.batch, args.warmup, args.repeats)
               for p in precisions for cl in layouts}
    print(f"\n{args.model}, crop {args.height}x{args.width}, batch {args.batch}, {args.threads} threads, "
          f"median of {args.repeats} steps (torch {torch.__version__})")
    print(f"{'precision':<10} {'layout':<14} {'step (s)':>10} {'img/s':>8} {'peak RSS (GiB)':>15} {'speed-up':>9}")
    base = next(iter(results.values()))[0]  # the first row: fp32 NCHW when both are measured
    for (precision, channels_last), (median, peak, *_) in results.items():
        print(f"{precision:<10} {layout_name(channels_last):<14} {median:>10.3f} {args.batch / median:>8.3f} "
              f"{peak:>15.2f} {base / median:>8.2f}x")
    return 0


def layout_name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "nchw"


if __name__ == "__main__":
    sys.exit(main())
