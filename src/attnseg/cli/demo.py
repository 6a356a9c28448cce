"""``attnseg demo [--out DIR] [--minutes M] [--model NAME]``: the whole job on a CPU in about ten minutes.

Generates the synthetic street scenes, trains a narrow MscaleOCR (two-scale training, NVIDIA's loss layout: the
fused output 1.0, aux 0.4, each scale 0.05, with NVIDIA's image-based class weighting) on 2 threads within the time
budget, evaluates it single-scale, with hierarchical attention over the config's eval.scales (0.25/0.5/1.0) and with
those scales averaged + flip (PaddleSeg aug_eval), prints the [EVAL] lines and a comparison table, and writes
pictures and ``DIR/index.html``. ``DIR/run`` is an ordinary training run folder
(``config.yaml``, ``checkpoints/best|last``) for ``attnseg eval``, ``predict``, ``export`` and ``benchmark``.
``--model psanet_r18_narrow`` does the same for PSANet (scale averaging instead of learned attention).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="generate synthetic scenes, train, evaluate and show hierarchical attention (minutes, CPU)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="config overrides: section.key=value (e.g. train.iters=50)")
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    # 9, not 10: the README's first command also installs the package, and the whole command must fit in 10 minutes
    # on a busy machine too.
    parser.add_argument("--minutes", type=float, default=9.0,
                        help="wall-clock budget for everything; training stops early to fit (default: 9)")
    parser.add_argument("--model", default=None,
                        help="model to train (default: mscale_ocr_hrnet_w18_small_v1; psanet_r18_narrow for PSANet)")
    parser.add_argument("--config", default=None, help="demo config (default: configs/demo_mscale.yaml or demo_psanet)")
    parser.add_argument("--train-images", type=int, default=300, help="synthetic training scenes (default: 300)")
    parser.add_argument("--val-images", type=int, default=30, help="synthetic validation scenes (default: 30)")
    parser.add_argument("--size", default="256x512", help="scene size HxW (default: 256x512)")
    parser.add_argument("--pictures", type=int, default=6, help="validation images drawn on the page (default: 6)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--no-channels-last", action="store_true", help="keep NCHW memory format")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _size(text: str) -> tuple[int, int]:
    from attnseg.errors import ConfigError

    parts = text.lower().replace(",", "x").split("x")
    try:
        height, width = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--size must be HxW, e.g. 256x512; got {text!r}") from None
    if height < 32 or width < 64:
        raise ConfigError(f"--size must be at least 32x64, got {text!r}")
    return height, width


def run(args: argparse.Namespace) -> int:
    from attnseg.demo import run_demo
    from attnseg.errors import ConfigError

    if args.minutes <= 0:
        raise ConfigError("--minutes must be positive")
    if args.train_images < 1 or args.val_images < 1:
        raise ConfigError("--train-images and --val-images must be at least 1")
    run_demo(
        args.out, minutes=args.minutes, model_name=args.model, config=args.config, overrides=args.overrides,
        num_train=args.train_images, num_val=args.val_images, image_size=_size(args.size),
        threads=args.threads if args.threads > 0 else None, channels_last=not args.no_channels_last,
        num_pictures=max(0, args.pictures), progress=not args.no_progress,
    )  # fmt: skip
    return 0
