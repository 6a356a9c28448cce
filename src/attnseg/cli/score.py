"""`attnseg score --gt ROOT --pred DIR`: official Cityscapes benchmark scores of a folder of labelId PNGs."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score labelId prediction PNGs against Cityscapes gtFine (official IoU/iIoU, faster)",
        description=(
            "Compute the Cityscapes pixel-level benchmark scores (class and category IoU and iIoU, as "
            "cityscapesscripts' evalPixelLevelSemanticLabeling does) plus 19-class mIoU, Acc and Kappa. "
            "Predictions are labelId PNGs named <city>_<seq>_<frame>*.png, found recursively, one per image."
        ),
    )
    parser.add_argument("--gt", required=True, type=Path, help="Cityscapes root holding gtFine/<split>/")
    parser.add_argument("--pred", required=True, type=Path, help="folder of labelId prediction PNGs")
    parser.add_argument("--split", default="val", help="gtFine split to score against (default: val)")
    parser.add_argument("--json", type=Path, default=None, help="write the full result (official keys + ours) here")
    parser.add_argument("--workers", type=int, default=None, help="file-decoding threads (default: min(8, CPUs))")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnseg.metrics.cityscapes import evaluate_folder, format_report

    start = time.perf_counter()
    result = evaluate_folder(args.gt, args.pred, split=args.split, workers=args.workers)
    elapsed = time.perf_counter() - start
    print(format_report(result))
    print(f"scored {result['numImages']} images in {elapsed:.2f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        # NaN stays NaN, as in the official resultPixelLevelSemanticLabeling.json
        from attnseg.fileio import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
