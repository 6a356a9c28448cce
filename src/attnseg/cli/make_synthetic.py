"""`attnseg make-synthetic ROOT --train N --val M`: write procedural street scenes in the Cityscapes layout."""

from __future__ import annotations

import argparse
import os
import time

from attnseg.data.labels import CITYSCAPES_CLASSES
from attnseg.data.synthetic import class_pixel_counts, make_synthetic_dataset


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-synthetic",
        help="write a synthetic street-scene dataset in the exact Cityscapes layout",
        description="Draw random street scenes (polygons first, labels rasterised by cityscapesscripts) into "
        "ROOT/leftImg8bit and ROOT/gtFine. Same seed, same dataset, whatever the number of workers.",
    )
    parser.add_argument("root", help="output folder (becomes a Cityscapes root)")
    parser.add_argument("--train", type=int, default=8, help="training images (default: 8)")
    parser.add_argument("--val", type=int, default=4, help="validation images (default: 4)")
    parser.add_argument("--height", type=int, default=256, help="image height (default: 256)")
    parser.add_argument("--width", type=int, default=512, help="image width (default: 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes (default: up to 4)")
    parser.add_argument("--prepare", action="store_true", help="also write labelTrainIds and train/val lists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in ("train", "val", "height", "width", "workers"):
        if getattr(args, name) < (1 if name in ("workers",) else 0):
            raise SystemExit(f"attnseg make-synthetic: error: --{name} must not be negative")
    start = time.perf_counter()
    root = make_synthetic_dataset(args.root, args.train, args.val, args.height, args.width, args.seed, args.workers,
                                  progress=True)  # fmt: skip
    elapsed = time.perf_counter() - start
    print(f"wrote {args.train} train + {args.val} val images of {args.height}x{args.width} to {root} "
          f"in {elapsed:.1f} s")  # fmt: skip
    if args.val:
        counts = class_pixel_counts(root, "val")
        missing = [CITYSCAPES_CLASSES[k] for k in range(len(counts)) if counts[k] == 0]
        print("val classes present: " + ("all 19" if not missing else f"{19 - len(missing)}/19, missing {missing}"))
    if args.prepare:
        from attnseg.data.prepare import prepare_cityscapes

        print(prepare_cityscapes(root, workers=args.workers, progress=False))
    return 0
