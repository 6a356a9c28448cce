"""`attnseg predict WEIGHTS INPUT... --out DIR`: segment images, folders (recursively), globs and videos.

Per image it writes ``<name>_labels.png`` (raw 8-bit class ids) and ``<name>_color.png`` (palette), plus
``<name>_overlay.png`` with ``--overlay``; files from a folder keep their sub-folder path under DIR. A video gives
``<name>_overlay.mp4``. A file that cannot be read is reported and skipped; the others are still done, and the
exit status is 1 when anything was skipped.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def register(subparsers: argparse._SubParsersAction) -> None:
    from attnseg.cli.eval import add_recipe_arguments

    parser = subparsers.add_parser(
        "predict",
        help="segment images, folders, globs or videos with a checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("weights", help="native checkpoint (.safetensors + .json) or a training run directory")
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively), globs, video files")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--overlay", action="store_true", help="also write the prediction blended over the image")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colours (default 0.5)")
    add_recipe_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def collect_inputs(inputs: list[str]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """((file, output stem relative to --out), problems) for image and video inputs, in a stable order.

    Folders are searched recursively for image/video suffixes and keep their relative layout; a glob or a single
    file maps to its own file name.
    """
    items: list[tuple[Path, Path]] = []
    problems: list[str] = []
    wanted = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
            if not files:
                problems.append(f"{path}: folder holds no image or video files")
            items += [(p, p.relative_to(path).with_suffix("")) for p in files]
        elif path.is_file():
            items.append((path, Path(path.stem)))
        else:
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True) if Path(m).is_file())
            if not matches:
                problems.append(f"{text}: no such file, folder or matching glob")
            items += [(p, Path(p.stem)) for p in matches]
    seen: set[Path] = set()
    unique = []
    for path, stem in items:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((path, stem))
    return unique, problems


def predict_image(predictor, path: Path, out_stem: Path, overlay: bool, alpha: float) -> None:
    from attnseg.inference.dump import write_png
    from attnseg.inference.predictor import read_image

    image = read_image(path)
    labels = predictor(image)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    write_png(out_stem.with_name(out_stem.name + "_labels.png"), labels)
    write_png(out_stem.with_name(out_stem.name + "_color.png"), predictor.colorize(labels))
    if overlay:
        write_png(out_stem.with_name(out_stem.name + "_overlay.png"), predictor.overlay(image, labels, alpha))


def predict_video(predictor, path: Path, out_stem: Path, alpha: float, progress: bool) -> int:
    """Write ``<stem>_overlay.mp4``; returns the number of frames."""
    import cv2

    from attnseg.errors import DatasetError

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError(f"{path}: cannot be opened as a video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    frames = 0
    bar = _bar(total, f"{path.name}", progress)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            blended = predictor.overlay(rgb, predictor(rgb), alpha)
            if writer is None:
                out_stem.parent.mkdir(parents=True, exist_ok=True)
                target = out_stem.with_name(out_stem.name + "_overlay.mp4")
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (blended.shape[1], blended.shape[0]))  # fmt: skip
                if not writer.isOpened():
                    raise DatasetError(f"{target}: cannot open a video writer (mp4v)")
            writer.write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
            frames += 1
            if bar is not None:
                bar.update(1)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
        if bar is not None:
            bar.close()
    if frames == 0:
        raise DatasetError(f"{path}: no frame could be decoded")
    return frames


def _bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, leave=False)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from attnseg.errors import AttnsegError
    from attnseg.inference.predictor import Predictor

    items, problems = collect_inputs(args.inputs)
    import torch

    from attnseg.hardware import resolve_backend_precision

    device_type = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0]
    args.precision = resolve_backend_precision(getattr(args, "backend", "torch"), args.precision, device_type)
    if getattr(args, "backend", "torch") != "torch":
        from attnseg.export.runtime import predictor_from_export

        predictor = predictor_from_export(args.weights, args.backend, precision=args.precision, scales=args.scales,
                                          multi_scale=args.multi_scale or "hierarchical", flip=bool(args.flip))
    else:
        predictor = Predictor.from_weights(
            args.weights, device=args.device, precision=args.precision or "fp32", scales=args.scales,
            multi_scale=args.multi_scale or "hierarchical", flip=bool(args.flip), fusion=args.fusion or "softmax",
        )  # fmt: skip
        if getattr(args, "compile", False) or (args.precision == "bf16" and predictor.device.type == "cpu"):
            from attnseg.export.runtime import prepare_fast_model

            prepare_fast_model(predictor.model, channels_last=args.precision == "bf16", compile=args.compile)
    for problem in problems:
        print(f"attnseg predict: skipped {problem}", file=sys.stderr)
    done = 0
    progress = not args.no_progress
    for path, stem in tqdm(items, desc="predict", unit="file", disable=not progress, dynamic_ncols=True):
        out_stem = args.out / stem
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                predict_video(predictor, path, out_stem, args.alpha, progress)
            else:
                predict_image(predictor, path, out_stem, args.overlay, args.alpha)
            done += 1
        except (AttnsegError, OSError, ValueError) as error:
            problems.append(str(error))
            print(f"attnseg predict: skipped {error}", file=sys.stderr)
    skipped = f"; {len(problems)} skipped" if problems else ""
    print(f"predicted {done} of {len(items)} inputs into {args.out}{skipped}")
    return 1 if problems else 0
