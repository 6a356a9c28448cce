"""The demo's training step and an evaluation pass on an idle CPU and beside one CPU-bound process.

Each measurement runs in a fresh spawned child process (OpenMP reads its settings when torch loads), in two ways:

- ``fixed``: what the demo did before issue #16: ``--threads`` threads whatever the load, OpenMP's default wait
  policy (threads spin at barriers for a while before sleeping).
- ``planned``: what attnseg does now: the thread count from the cores other processes leave free
  (`attnseg.hardware.plan_threads`, measured in the child just before it starts).

With ``--together``, it also starts two copies of the demo's training at the same moment (each sees an idle machine at
start and plans every core): ``fixed`` keeps that plan, ``watched`` re-plans while it trains
(`attnseg.engine.thread_watch.ThreadWatch`, as `attnseg train` and the demo do); it prints each job's median step over
its second half and the ratio to the idle step.

The busy process is a ``while True`` Python loop started before the "busy" rows and killed after them (and on any
error). Prints one table of medians and the busy/idle ratio per way; the target is a ratio <= 2.5 for ``planned``.
Run it on an otherwise idle machine: other work would count as "idle" load.

    python -m attnseg.benchmark.contention                      # the demo's recipe, 8 steps + 5 passes per row
    python -m attnseg.benchmark.contention --steps 3 --passes 2  # a quick check that it works
    python -m attnseg.benchmark.contention --together --together-steps 60   # two demos started at once
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m attnseg.benchmark.contention   # emulated AVX2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from attnseg.benchmark.children import run_in_child

REPO = Path(__file__).resolve().parents[3]  # the checkout: configs/ lives beside src/
WAYS = ("fixed", "planned")
TARGET_RATIO = 2.5


def worker(way: str, config: str, threads: int, steps: int, passes: int, height: int, width: int) -> dict:
    """Runs in the child: the demo's step (random batch) and eval passes; returns medians and what was chosen."""
    import torch

    from attnseg.config import load_config
    from attnseg.config.build import build_model
    from attnseg.demo import measure_train_step
    from attnseg.config.training import build_criterion_from_config, build_optimizer
    from attnseg.hardware import plan_threads, resolve_experiment_precision

    if way == "planned":
        plan = plan_threads(threads)
        chosen, seen = plan.threads, plan.reason
    else:
        chosen, seen = threads, f"threads {threads} (fixed)"
    torch.set_num_threads(chosen)
    experiment = resolve_experiment_precision(load_config(config), "cpu", log=lambda line: None)
    torch.manual_seed(0)
    model = build_model(experiment.model).to(memory_format=torch.channels_last)
    criterion = build_criterion_from_config(experiment.train, experiment.model.num_classes)
    optimizer = build_optimizer(model, experiment.train)
    step_times = [measure_train_step(model, criterion, optimizer, experiment.train.batch_size,
                                     experiment.data.crop_size, experiment.model.num_classes,
                                     experiment.train.precision, True, steps=1)
                  for _ in range(steps)]  # fmt: skip
    eval_times = eval_passes(model, height, width, experiment.eval.precision, passes)
    return {"step": statistics.median(step_times), "eval": statistics.median(eval_times), "threads": chosen,
            "seen": seen, "precision": experiment.train.precision,
            "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)")}  # fmt: skip


def eval_passes(model, height: int, width: int, precision: str, count: int) -> list[float]:
    """Seconds of `count` eval-mode forwards (the model's eval scales) of one image, after one untimed."""
    import torch

    model.eval()
    image = torch.zeros(1, 3, height, width).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        for _ in range(count + 1):
            start = time.perf_counter()
            model(image)
            times.append(time.perf_counter() - start)
    return times[1:]


def together_worker(watched: bool, config: str, threads: int, steps: int, interval: float) -> dict:
    """Runs in each of two children started together: `steps` training steps of the demo's recipe (random batch),
    re-planning threads after each step when `watched`; returns step times and the thread count of each step."""
    import torch

    from attnseg.config import load_config
    from attnseg.config.build import build_model
    from attnseg.config.training import build_criterion_from_config, build_optimizer
    from attnseg.demo.measure import train_step_times
    from attnseg.engine.thread_watch import ThreadWatch
    from attnseg.hardware import plan_threads, resolve_experiment_precision

    torch.set_num_threads(plan_threads(threads).threads)
    watch = ThreadWatch(threads, interval=interval) if watched else None
    experiment = resolve_experiment_precision(load_config(config), "cpu", log=lambda line: None)
    torch.manual_seed(0)
    model = build_model(experiment.model).to(memory_format=torch.channels_last)
    criterion = build_criterion_from_config(experiment.train, experiment.model.num_classes)
    optimizer = build_optimizer(model, experiment.train)
    batch, crop = experiment.train.batch_size, experiment.data.crop_size
    images = torch.randn(batch, 3, *crop).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, experiment.model.num_classes, (batch, *crop))
    counts = [torch.get_num_threads()]  # the count each step ran with

    def after_step() -> None:
        if watch is not None:
            watch.tick()
        counts.append(torch.get_num_threads())

    times = train_step_times(model, criterion, optimizer, images, labels, experiment.train.precision, steps, after_step)
    return {"times": times, "threads": counts[:steps]}


def run_together(args: argparse.Namespace, watched: bool) -> list[dict]:
    """Two `together_worker` children started at the same moment; their results."""
    import threading

    results: list[dict] = [{}, {}]

    def one(index: int) -> None:
        results[index] = run_in_child(together_worker, args.timeout, watched=watched, config=str(args.config),
                                      threads=args.threads, steps=args.together_steps,
                                      interval=args.watch_interval)  # fmt: skip

    workers = [threading.Thread(target=one, args=(index,)) for index in range(2)]
    for worker_thread in workers:
        worker_thread.start()
    for worker_thread in workers:
        worker_thread.join()
    for result in results:
        if "error" in result:
            raise RuntimeError(f"together worker failed: {result['error']}")
    return results


def together_table(idle_step: float, runs: dict[str, list[dict]]) -> str:
    """Each job's median step over its second half against the idle step of one job alone."""
    lines = ["", f"two jobs started together (idle step of one job alone: {idle_step:.3f} s)",
             f"{'way':<9}{'job':>4}{'threads at end':>16}{'step s (2nd half)':>19}{'/ idle':>8}", "-" * 56]
    for way, jobs in runs.items():
        for index, job in enumerate(jobs):
            half = job["times"][len(job["times"]) // 2:]
            step = statistics.median(half)
            lines.append(f"{way:<9}{index:>4}{job['threads'][-1]:>16}{step:>19.3f}{step / idle_step:>7.2f}x")
    return "\n".join(lines)


def run_child(args: argparse.Namespace, way: str) -> dict:
    """`worker` in a fresh process (it inherits this environment, from which main removed OMP_WAIT_POLICY)."""
    result = run_in_child(worker, args.timeout, way=way, config=str(args.config), threads=args.threads,
                          steps=args.steps, passes=args.passes, height=args.height, width=args.width)  # fmt: skip
    if "error" in result:
        raise RuntimeError(f"worker ({way}) failed: {result['error']}")
    return result


def start_busy_process() -> subprocess.Popen:
    """One CPU-bound process (a Python busy loop), like a second user's job on the same cores."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def table(results: dict[tuple[str, str], dict]) -> str:
    lines = [f"{'way':<9}{'load':<6}{'threads':>8}{'step s':>9}{'eval s':>9}  what it saw",
             "-" * 100]  # fmt: skip
    for (way, load), r in results.items():
        lines.append(f"{way:<9}{load:<6}{r['threads']:>8}{r['step']:>9.3f}{r['eval']:>9.3f}  {r['seen']} "
                     f"(wait policy {r['wait_policy']}, {r['precision']})")  # fmt: skip
    lines.append("")
    for way in WAYS:
        if (way, "idle") in results and (way, "busy") in results:
            idle, busy = results[(way, "idle")], results[(way, "busy")]
            step, evaluation = busy["step"] / idle["step"], busy["eval"] / idle["eval"]
            verdict = "meets" if max(step, evaluation) <= TARGET_RATIO else "misses"
            lines.append(f"{way}: beside one busy process the step takes {step:.2f}x and the eval pass "
                         f"{evaluation:.2f}x the idle time ({verdict} the <= {TARGET_RATIO}x target)")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo_mscale.yaml")
    parser.add_argument("--threads", type=int, default=2, help="threads asked for (the demo's default: 2)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per row (after one untimed)")
    parser.add_argument("--passes", type=int, default=5, help="timed eval passes per row (after one untimed)")
    parser.add_argument("--height", type=int, default=256, help="eval image height (the demo's scenes: 256)")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per child process")
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma list of {', '.join(WAYS)}")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--together", action="store_true", help="also run two jobs started at the same moment")
    parser.add_argument("--together-steps", type=int, default=60, help="training steps of each job (--together)")
    parser.add_argument("--watch-interval", type=float, default=5.0, help="seconds between thread re-plans")
    args = parser.parse_args()
    os.environ.pop("OMP_WAIT_POLICY", None)  # both ways: OpenMP's default wait policy (passive measured slower)
    ways = [way for way in args.ways.split(",") if way in WAYS]
    results: dict[tuple[str, str], dict] = {}
    for way in ways:
        results[(way, "idle")] = run_child(args, way)
        print(f"{way} idle: {results[(way, 'idle')]}", file=sys.stderr, flush=True)
    busy = start_busy_process()
    try:
        time.sleep(0.5)  # the loop is running before the child measures the load
        for way in ways:
            results[(way, "busy")] = run_child(args, way)
            print(f"{way} busy: {results[(way, 'busy')]}", file=sys.stderr, flush=True)
    finally:
        busy.kill()
        busy.wait()
    report = table({key: results[key] for key in sorted(results, key=lambda k: (ways.index(k[0]), k[1] != "idle"))})
    if args.together:
        idle = results.get(("planned", "idle")) or run_child(args, "planned")
        runs = {way: run_together(args, watched=way == "watched") for way in ("fixed", "watched")}
        report += "\n" + together_table(idle["step"], runs)
    print(report)
    if args.out is not None:
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
