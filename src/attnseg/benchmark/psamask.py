"""Benchmark the psamask op: the pure-PyTorch version (`psa_mask`, pad/slice/reshape) against the same op as one
gather (`psa_mask_gather`) and against a per-pixel loop written like the reference C++ kernels, at PSANet's
sizes; then the op's share of one full `psanet_r50_vd` forward at 512x1024.

Grids (59x59 window, shrink factor 2 at output stride 8):
  32x64  -> 512x1024 input (PSANet_paddle's training crop)
  64x128 -> 1024x2048 input (full Cityscapes frame)

Run from a checkout (the loop lives in tests/models/): ``python -m attnseg.benchmark.psamask [--repeats 5]
[--threads 2] [--skip-model]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attnseg.benchmark.rates import median_seconds
from attnseg.models import create_model
from attnseg.models.heads import psa as psa_module
from attnseg.models.ops.psamask import COLLECT, DISTRIBUTE, psa_mask, psa_mask_gather

REFERENCE_LAYOUTS = Path(__file__).resolve().parents[3] / "tests" / "models"

MASK = (59, 59)
GRIDS = {"32x64 (512x1024 input)": (32, 64), "64x128 (1024x2048 input)": (64, 128)}


def reference_loop() -> Callable[[torch.Tensor, int, tuple[int, int]], torch.Tensor]:
    """The per-pixel loop written like the reference kernels: test code, in the checkout's tests/models/."""
    if not (REFERENCE_LAYOUTS / "psanet_reference_layouts.py").is_file():
        raise SystemExit(f"{REFERENCE_LAYOUTS}: not found; run from a checkout of attnseg (the loop is test code)")
    sys.path.insert(0, str(REFERENCE_LAYOUTS))
    from psanet_reference_layouts import psa_mask_loop

    return psa_mask_loop


def bench_ops(repeats: int, grids: tuple[str, ...] = tuple(GRIDS)) -> None:
    """Print the op table for the grids named (keys of `GRIDS`)."""
    psa_mask_loop = reference_loop()
    print(f"\npsamask, window {MASK[0]}x{MASK[1]}, batch 1, fp32; median of {repeats} runs (loop: of 2)")
    header = f"{'grid':26s} {'mode':10s} {'ours ms':>9s} {'gather ms':>10s} {'loop ms':>9s} {'loop/ours':>10s} "
    header += f"{'gather/ours':>12s} {'ours fwd+bwd ms':>16s}"
    print(header)
    for label in grids:
        height, width = GRIDS[label]
        x = torch.randn(1, MASK[0] * MASK[1], height, width)
        for mode, mode_name in ((COLLECT, "collect"), (DISTRIBUTE, "distribute")):
            ours = median_seconds(lambda: psa_mask(x, mode, MASK), repeats, warmup=1)
            gather = median_seconds(lambda: psa_mask_gather(x, mode, MASK), repeats, warmup=1)
            loop = median_seconds(lambda: psa_mask_loop(x, mode, MASK), 2, warmup=1)
            leaf = x.clone().requires_grad_()
            grad_out = torch.randn(1, height * width, height, width)

            def forward_backward():
                torch.autograd.grad(psa_mask(leaf, mode, MASK), leaf, grad_out)

            both = median_seconds(forward_backward, repeats, warmup=1)
            print(
                f"{label:26s} {mode_name:10s} {ours * 1e3:9.1f} {gather * 1e3:10.1f} {loop * 1e3:9.1f} "
                f"{loop / ours:10.1f} {gather / ours:12.2f} {both * 1e3:16.1f}"
            )
            assert torch.equal(psa_mask(x, mode, MASK), psa_mask_loop(x, mode, MASK))


def bench_model_share() -> None:
    model = create_model("psanet_r50_vd", num_classes=19).eval()
    images = torch.randn(1, 3, 512, 1024)
    spent: list[float] = []
    original = psa_module.psa_mask

    def timed_psa_mask(*args, **kwargs):
        start = time.perf_counter()
        result = original(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return result

    psa_module.psa_mask = timed_psa_mask
    try:
        with torch.no_grad():
            start = time.perf_counter()
            model(images)
            total = time.perf_counter() - start
    finally:
        psa_module.psa_mask = original
    op = sum(spent)
    print("\npsanet_r50_vd eval forward, 1x3x512x1024, fp32, one run (includes first-call overheads)")
    print(f"{'total s':>8s} {'psamask s':>10s} {'calls':>6s} {'share':>7s}")
    print(f"{total:8.2f} {op:10.3f} {len(spent):6d} {op / total:7.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-model", action="store_true", help="only the op table")
    names = [label.split()[0] for label in GRIDS]
    parser.add_argument("--grids", default=",".join(names), help=f"op-table grids, comma list of {', '.join(names)}")
    args = parser.parse_args()
    wanted = [name.strip() for name in args.grids.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown or not wanted:
        parser.error(f"--grids {args.grids!r}: choose from {', '.join(names)}")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    bench_ops(args.repeats, tuple(label for label in GRIDS if label.split()[0] in wanted))
    if not args.skip_model:
        bench_model_share()


if __name__ == "__main__":
    main()
