"""`attnseg score` vs cityscapesscripts' evalPixelLevelSemanticLabeling on the same synthetic Cityscapes files.

Generates (or reuses) a synthetic gtFine split and degraded labelId predictions, checks that both scorers give the
same numbers, then prints the median of a few timed runs of each and the speed-ups::

    python -m attnseg.benchmark.score                           # 20 images at 1024x2048, 3 runs each
    python -m attnseg.benchmark.score --images 5 --height 256 --width 512 --data /tmp/bench_score
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from attnseg.benchmark.rates import median_seconds
from attnseg.data.synthetic import make_synthetic_dataset
from attnseg.metrics.cityscapes import evaluate_folder

OFFICIAL_KEYS = ("averageScoreClasses", "averageScoreInstClasses", "averageScoreCategories",
                 "averageScoreInstCategories", "classScores", "classInstScores", "categoryScores",
                 "categoryInstScores")  # fmt: skip


def prepare_data(root: Path, images: int, height: int, width: int, workers: int) -> tuple[Path, Path]:
    """Synthetic gtFine/val (reused when already there with the right count and size) and noisy predictions."""
    gt_files = sorted(root.glob("gtFine/val/*/*_gtFine_labelIds.png"))
    if len(gt_files) != images or cv2.imread(str(gt_files[0]), cv2.IMREAD_UNCHANGED).shape != (height, width):
        print(f"generating {images} synthetic {height}x{width} images in {root} ...", flush=True)
        make_synthetic_dataset(root, num_train=0, num_val=images, height=height, width=width, workers=workers)
        gt_files = sorted(root.glob("gtFine/val/*/*_gtFine_labelIds.png"))
    pred_dir = root / "predictions"
    pred_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for gt_file in gt_files:
        label_ids = cv2.imread(str(gt_file), cv2.IMREAD_UNCHANGED)
        # a plausible prediction: boundaries off by a few pixels, 5 % of 16x16 blocks wrong
        prediction = np.roll(label_ids, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
        blocks = rng.random((math.ceil(height / 16), math.ceil(width / 16))) < 0.05
        wrong = np.kron(blocks, np.ones((16, 16), dtype=bool))[:height, :width]
        prediction[wrong] = rng.integers(0, 34, int(wrong.sum()))
        name = gt_file.name.replace("_gtFine_labelIds.png", "_leftImg8bit.png")
        cv2.imwrite(str(pred_dir / name), prediction.astype(np.uint8))
    return root, pred_dir


def run_official(root: Path, pred_dir: Path) -> dict:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official

    if not hasattr(np, "in1d"):
        np.in1d = np.isin  # removed in NumPy 2.4, still called by cityscapesscripts 2.3.0
    args = official.args
    args.quiet, args.JSONOutput, args.evalInstLevelScore = True, False, True
    args.predictionPath, args.predictionWalk = str(pred_dir), None
    gt_files = sorted(glob.glob(str(root / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")))
    predictions = [official.getPrediction(args, gt) for gt in gt_files]
    return official.evaluateImgLists(predictions, gt_files, args)


def decode_all(root: Path, pred_dir: Path) -> None:
    """Only read every file a scorer must read: the floor for one thread."""
    for gt_file in sorted(root.glob("gtFine/val/*/*_gtFine_labelIds.png")):
        cv2.imread(str(gt_file), cv2.IMREAD_UNCHANGED)
        cv2.imread(str(gt_file).replace("_labelIds", "_instanceIds"), cv2.IMREAD_UNCHANGED)
    for pred_file in sorted(pred_dir.glob("*.png")):
        cv2.imread(str(pred_file), cv2.IMREAD_UNCHANGED)


def max_difference(ours: dict, theirs: dict) -> float:
    worst = 0.0
    for key in OFFICIAL_KEYS:
        pairs = [(ours[key][k], theirs[key][k]) for k in theirs[key]] if isinstance(theirs[key], dict) else [
            (ours[key], theirs[key])]  # fmt: skip
        for a, b in pairs:
            if math.isnan(b) != math.isnan(a):
                return math.inf
            if not math.isnan(b):
                worst = max(worst, abs(a - b))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="threads for attnseg's threaded row")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder to create or reuse (default: tmp)")
    args = parser.parse_args()

    root = args.data or Path(tempfile.mkdtemp(prefix="bench_score_"))
    root, pred_dir = prepare_data(root, args.images, args.height, args.width, workers=args.workers)

    theirs = run_official(root, pred_dir)
    ours = evaluate_folder(root, pred_dir, workers=args.workers)
    print(f"max |attnseg - official| over all official scores: {max_difference(ours, theirs):.3e}")
    print(f"averageScoreClasses {ours['averageScoreClasses']:.6f}  averageScoreInstClasses "
          f"{ours['averageScoreInstClasses']:.6f}  (official {theirs['averageScoreInstClasses']:.6f})")  # fmt: skip

    official_name = "cityscapesscripts evalPixelLevelSemanticLabeling"
    rows = [
        (official_name, median_seconds(lambda: run_official(root, pred_dir), args.runs)),
        ("attnseg score, 1 thread", median_seconds(lambda: evaluate_folder(root, pred_dir, workers=1), args.runs)),
        (f"attnseg score, {args.workers} threads",
         median_seconds(lambda: evaluate_folder(root, pred_dir, workers=args.workers), args.runs)),
        ("(PNG decoding alone, 1 thread)", median_seconds(lambda: decode_all(root, pred_dir), args.runs)),
    ]  # fmt: skip
    reference = rows[0][1]
    print(f"\n{args.images} images {args.height}x{args.width}, median of {args.runs} runs, "
          f"{os.cpu_count()} CPUs visible")  # fmt: skip
    print(f"| {'scorer':<50} | {'median s':>9} | {'ms / image':>10} | {'speed-up':>8} |")
    print(f"|{'-' * 52}|{'-' * 11}|{'-' * 12}|{'-' * 10}|")
    for name, seconds in rows:
        per_image = 1000 * seconds / args.images
        print(f"| {name:<50} | {seconds:>9.3f} | {per_image:>10.1f} | {reference / seconds:>7.1f}x |")


if __name__ == "__main__":
    main()
