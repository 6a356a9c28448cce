"""`attnseg predict WEIGHTS INPUT... --out DIR`: segment images, folders (recursively), globs and videos.

Outputs per image: ``<name>_labels.png`` (raw 8-bit class ids), ``<name>_color.png`` (palette) and, with
``--overlay``, ``<name>_overlay.png``; with ``--confidence``, ``<name>_confidence.png`` (top fused class probability
p as round(255 * p), the encoding of `attnseg autolabel`'s ``_prob.png``); with ``--attention`` (MscaleOCR at two or
more scales, whole images), each fused scale's ``<name>_attn_<s>x.png`` (attention, round(255 * a)) and
``<name>_pred_<s>x.png`` (that scale's own prediction), as `attnseg eval --dump` writes them in ``scales/``. Per
video: ``<name>_overlay.mp4``.

Where outputs go (two inputs can never share an output):
  - Every input keeps its path relative to the deepest folder common to all inputs; a folder given as an argument
    counts with its own name. `predict a/img.png b/img.png` writes DIR/a/img_labels.png and DIR/b/img_labels.png;
    `predict photos/` writes DIR/photos/...; a single file or a glob in one folder writes DIR/<file>_labels.png.
  - <name> is the file name without its extension, unless another input that lands in the same output folder has
    the same name without extension (compared ignoring case): then the whole file name is kept, so `predict x.png
    x.jpg` writes DIR/x.png_labels.png and DIR/x.jpg_labels.png.

Folders and globs take files with image suffixes (.png .jpg .jpeg .bmp .tif .tiff .webp .ppm .pgm) and video
suffixes (.mp4 .avi .mov .mkv .webm .m4v); anything else they contain (GIFs, which are often animated, broken
symbolic links, other files) is listed in the summary as skipped, with the reason. A file named on the command line
is always tried.

Large images: a whole-image pass whose estimated memory exceeds --max-memory (default: half the available memory;
on CUDA 80 % of the free device memory) runs as sliding windows instead (--crop/--stride, or a window chosen to
fit), and a line says so; --slide always uses windows.

Every file is written under a temporary name in its folder and renamed when complete, so a killed run leaves no
partial file under a final name; the next run removes the temporaries it left.

A failure on one input (unreadable file, out of memory, ...) is reported and the other inputs still run. Exit
status: the number of inputs that failed (an input argument matching nothing counts as one), at most 100; 0 when
all succeeded; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
MAX_EXIT_CODE = 100
MAX_LISTED = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    from attnseg.cli.arguments import add_recipe_arguments

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
    parser.add_argument("--confidence", action="store_true",
                        help="also write <name>_confidence.png: the top fused class probability, 0-255")
    parser.add_argument("--attention", action="store_true",
                        help="also write MscaleOCR's per-scale attention maps and predictions (<name>_attn_<s>x.png, "
                             "<name>_pred_<s>x.png; not with sliding windows)")
    add_recipe_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=None,
                        help="read the next image and write the last one while the model runs (--no-pipeline: one "
                             "image after the other; default: where cores are left beside the model's threads, else "
                             "the model in line and each image's files written behind the next one at idle priority)")
    add_tiling_arguments(parser)
    parser.set_defaults(func=run, validate=validate)


def validate(args: argparse.Namespace) -> None:
    """Refuse option combinations argparse cannot see, before any model is loaded or file written.

    Raises:
        ConfigError: hierarchical fusion (the default) with scales lacking 1.0, --alpha outside [0, 1], fp16 off
            CUDA, or --attention with --slide.
    """
    from attnseg.cli.arguments import check_fp16, default_device_type
    from attnseg.errors import ConfigError
    from attnseg.inference.scales import check_hierarchical_scales, format_scales

    if args.scales is not None and (args.multi_scale or "hierarchical") == "hierarchical":
        try:
            check_hierarchical_scales(tuple(args.scales))
        except ConfigError as error:
            raise ConfigError(f"--scales {format_scales(args.scales)}: {error}") from None
    if args.crop is not None and args.stride is not None and any(s > c for s, c in zip(args.stride, args.crop)):
        raise ConfigError(f"--stride {args.stride[0]},{args.stride[1]}: larger than --crop "
                          f"{args.crop[0]},{args.crop[1]} (windows would leave gaps)")
    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha {args.alpha:g}: the overlay opacity must be in [0, 1]")
    if args.attention and args.slide:
        raise ConfigError("--attention with --slide: each window has its own per-scale attention and they are not "
                          "assembled into one map; leave out --slide")  # fmt: skip
    check_fp16(args.precision, default_device_type(args.device), getattr(args, "backend", "torch"))


def _memory_size(text: str) -> int:
    from attnseg.errors import ConfigError
    from attnseg.inference.memory import parse_memory_size

    try:
        return parse_memory_size(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_tiling_arguments(parser: argparse.ArgumentParser) -> None:
    """--slide, --crop, --stride and --max-memory (sliding windows, chosen by hand or by the memory budget)."""
    from attnseg.cli.arguments import size_pair as _pair

    group = parser.add_argument_group("large images")
    group.add_argument("--slide", action="store_true",
                       help="always use sliding windows (window: --crop, else the largest that fits --max-memory)")
    group.add_argument("--crop", type=_pair, default=None, help="sliding window H,W (when windows are used)")
    group.add_argument("--stride", type=_pair, default=None, help="window stride H,W (default: 2/3 of the window)")
    group.add_argument("--max-memory", type=_memory_size, default=None, metavar="SIZE",
                       help="memory budget of one pass, e.g. 4G or 512M; a whole-image pass estimated above it "
                            "uses sliding windows (default: half the available memory, CUDA: 80%% of free)")


@dataclass
class InputItem:
    """One file to segment and where its outputs go.

    Attributes:
        path: the file.
        relative: its path relative to the inputs' common folder (the output folder mirrors it).
        out_name: output name stem (``img`` or, on a clash, ``img.png``), set by `assign_output_names`.
    """

    path: Path
    relative: Path
    out_name: str = ""

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES

    def output(self, out_dir: Path, kind: str) -> Path:
        """``out_dir/<relative folder>/<out_name>_<kind>`` (kind with its extension, e.g. ``labels.png``)."""
        return out_dir / self.relative.parent / f"{self.out_name}_{kind}"


@dataclass
class InputCollection:
    """What the command-line inputs expand to.

    Attributes:
        items: files to segment, in a stable order.
        failed: (argument, reason) for arguments that give nothing to segment.
        skipped: (file, reason) for files of a folder or glob that are not segmented.
    """

    items: list[InputItem] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _skip_reason(path: Path) -> str | None:
    """Why a file found in a folder or glob is not segmented, or None if it is."""
    if path.is_symlink() and not path.exists():
        return "broken symbolic link"
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return "GIF (often animated) is not segmented; convert it to PNG, or name the file itself for its first frame"
    if suffix not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
        return f"not an image or video file (suffix {path.suffix or 'none'!r})"
    return None


def _is_inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and (path == folder or folder in path.parents)


def _scan(files: list[Path], out_dir: Path | None, collection: InputCollection) -> list[Path]:
    """The segmentable ones of `files` (absolute); records the others as skipped."""
    kept = []
    for path in files:
        if _is_inside(path, out_dir):
            continue  # our own outputs when --out lies inside an input folder
        reason = _skip_reason(path)
        if reason is None:
            kept.append(path)
        else:
            collection.skipped.append((path, reason))
    return kept


def _expand(text: str, out_dir: Path | None, collection: InputCollection) -> list[tuple[Path, Path]]:
    """(absolute file, anchor folder its relative path starts from) for one command-line input."""
    path = Path(os.path.abspath(text))
    if path.is_dir():
        entries = sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
        files = _scan(entries, out_dir, collection)
        if not files:
            collection.failed.append((text, "folder holds no image or video files"))
        return [(file, path.parent) for file in files]
    if path.is_file():
        return [(path, path.parent)]
    if path.is_symlink():
        collection.failed.append((text, "broken symbolic link"))
        return []
    matches = sorted(Path(os.path.abspath(m)) for m in glob.glob(text, recursive=True))
    files = _scan([m for m in matches if m.is_file() or m.is_symlink()], out_dir, collection)
    if not files:
        collection.failed.append((text, "no such file, folder or matching glob"))
    return [(file, file.parent) for file in files]


def collect_inputs(inputs: list[str], out_dir: Path | None = None) -> InputCollection:
    """Expand files, folders (recursively) and globs; relative paths start at the anchors' common folder.

    The same file reached twice (also through a symbolic link) is segmented once. Output names are assigned with
    `assign_output_names`.
    """
    collection = InputCollection()
    out_dir = Path(os.path.abspath(out_dir)) if out_dir is not None else None
    found: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for text in inputs:
        for file, anchor in _expand(text, out_dir, collection):
            if file.resolve() not in seen:
                seen.add(file.resolve())
                found.append((file, anchor))
    if found:
        common = Path(os.path.commonpath([str(anchor) for _, anchor in found]))
        collection.items = [InputItem(file, file.relative_to(common)) for file, _ in found]
    assign_output_names(collection.items)
    return collection


def assign_output_names(items: list[InputItem]) -> None:
    """Set each item's `out_name`: its stem, or its whole file name where stems clash in one output folder.

    Relative paths are distinct, so whole file names are distinct within a folder; a whole name can itself equal
    another input's stem (``x.png`` next to ``x.png.jpg``), so clashes are resolved until none is left.
    """
    whole: set[int] = set()
    while True:
        groups: dict[tuple[Path, str], list[int]] = {}
        for index, item in enumerate(items):
            name = item.relative.name if index in whole else item.relative.stem
            groups.setdefault((item.relative.parent, name.lower()), []).append(index)
        clashing = {index for group in groups.values() if len(group) > 1 for index in group} - whole
        if not clashing:
            break
        whole |= clashing
    for index, item in enumerate(items):
        item.out_name = item.relative.name if index in whole else item.relative.stem


def prepare_image(predictor, item: InputItem, out_dir: Path, overlay: bool, alpha: float, *, confidence: bool = False,
                  attention: bool = False) -> Callable[[], None]:  # fmt: skip
    """Read and predict one image; returns the function that writes its label, colour and (optionally) overlay,
    confidence and per-scale attention PNGs, so that the writing can run behind the next image's forward."""
    from attnseg.inference.confidence import unit_to_uint8
    from attnseg.inference.dump import scale_map_images, write_png
    from attnseg.inference.predictor import read_image

    image = read_image(item.path)
    prediction = predictor.predict(image, confidence=confidence, attention=attention)

    def write() -> None:
        labels = prediction.labels
        write_png(item.output(out_dir, "labels.png"), labels)
        write_png(item.output(out_dir, "color.png"), predictor.colorize(labels))
        if overlay:
            write_png(item.output(out_dir, "overlay.png"), predictor.overlay(image, labels, alpha))
        if confidence:
            write_png(item.output(out_dir, "confidence.png"), unit_to_uint8(prediction.confidence))
        for suffix, picture in scale_map_images(prediction.attention, prediction.scale_labels, predictor.palette):
            write_png(item.output(out_dir, f"{suffix}.png"), picture)

    return write


def predict_video(predictor, item: InputItem, out_dir: Path, alpha: float, progress: bool) -> int:
    """Write ``<name>_overlay.mp4`` (under a temporary name until the last frame); returns the number of frames."""
    import cv2

    from attnseg.errors import DatasetError
    from attnseg.fileio import atomic_path

    capture = cv2.VideoCapture(str(item.path))
    if not capture.isOpened():
        raise DatasetError(f"{item.path}: cannot be opened as a video")
    try:
        ok, frame = capture.read()
        if not ok:
            raise DatasetError(f"{item.path}: no frame could be decoded")
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        target = item.output(out_dir, "overlay.mp4")
        with atomic_path(target) as temp:
            writer = cv2.VideoWriter(str(temp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (frame.shape[1], frame.shape[0]))
            if not writer.isOpened():
                raise DatasetError(f"{target}: cannot open a video writer (mp4v)")
            bar = _bar(total, item.path.name, progress)
            frames = 0
            try:
                while ok:
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    writer.write(cv2.cvtColor(predictor.overlay(rgb, predictor(rgb), alpha), cv2.COLOR_RGB2BGR))
                    frames += 1
                    if bar is not None:
                        bar.update(1)
                    ok, frame = capture.read()
            finally:
                writer.release()
                if bar is not None:
                    bar.close()
    finally:
        capture.release()
    return frames


def _bar(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, leave=False)


class _PlanLog:
    """Prints the predictor's "sliding windows" line once per input (a video would repeat it every frame)."""

    def __init__(self) -> None:
        self.current = ""
        self.seen: set[str] = set()

    def start(self, name: str) -> None:
        self.current, self.seen = name, set()

    def __call__(self, message: str) -> None:
        if message not in self.seen:
            self.seen.add(message)
            print(f"attnseg predict: {self.current}: {message}", file=sys.stderr)


def build_predictor(args: argparse.Namespace, log: _PlanLog):
    """The `Predictor` the options ask for (checkpoint or exported model), with its window settings."""
    import torch

    from attnseg.cli.arguments import check_fp16
    from attnseg.hardware import resolve_backend_precision

    tiling = {"slide": bool(args.slide), "crop_size": args.crop, "stride": args.stride, "log": log}
    device_type = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0]
    check_fp16(args.precision, device_type, getattr(args, "backend", "torch"))  # autolabel comes here unvalidated
    args.precision = resolve_backend_precision(getattr(args, "backend", "torch"), args.precision, device_type)
    if getattr(args, "backend", "torch") != "torch":
        from attnseg.export.runtime import predictor_from_export

        predictor = predictor_from_export(args.weights, args.backend, precision=args.precision, scales=args.scales,
                                          multi_scale=args.multi_scale or "hierarchical", flip=bool(args.flip))
        for name, value in tiling.items():  # exported models get no memory estimate, only explicit windows
            setattr(predictor, name, value)
        _check_outputs(predictor, args)
        return predictor
    from attnseg.inference.predictor import Predictor

    predictor = Predictor.from_weights(
        args.weights, device=args.device, precision=args.precision or "fp32", scales=args.scales,
        multi_scale=args.multi_scale or "hierarchical", flip=bool(args.flip), fusion=args.fusion or "softmax",
        max_memory_bytes=args.max_memory if args.max_memory is not None else "auto", **tiling,
    )  # fmt: skip
    from attnseg.inference.fast_path import apply_fast_path

    apply_fast_path(predictor.model, args.precision or "fp32", predictor.device,
                    compile=bool(getattr(args, "compile", False)))
    _check_outputs(predictor, args)
    return predictor


def _check_outputs(predictor, args: argparse.Namespace) -> None:
    """Refuse --confidence / --attention that the model cannot give (`Predictor.check_outputs`), naming the flag
    and the weights, before any input is read."""
    from attnseg.errors import ConfigError

    for flag, wanted in (("--confidence", {"probabilities": True}), ("--attention", {"attention": True})):
        if getattr(args, flag[2:], False):
            try:
                predictor.check_outputs(**wanted)
            except ConfigError as error:
                raise ConfigError(f"{flag} ({args.weights}): {error}") from None


def _one_line(error: BaseException) -> str:
    from attnseg.errors import AttnsegError

    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, AttnsegError) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _release_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _listed(lines: list[str]) -> list[str]:
    shown = [f"  {line}" for line in lines[:MAX_LISTED]]
    return shown + ([f"  ... and {len(lines) - MAX_LISTED} more"] if len(lines) > MAX_LISTED else [])


def print_summary(done: int, collection: InputCollection, failed: list[tuple[str, str]], out_dir: Path) -> None:
    """The closing lines: counts, failed inputs and skipped files, each with its reason."""
    total = len(collection.items) + len(collection.failed)
    print(f"predicted {done} of {total} inputs into {out_dir}")
    if failed:
        print(f"{len(failed)} of {total} inputs failed:")
        print("\n".join(_listed([f"{name}: {reason}" for name, reason in failed])))
    if collection.skipped:
        print(f"skipped {len(collection.skipped)} files found in folders or globs:")
        print("\n".join(_listed([f"{path}: {reason}" for path, reason in collection.skipped])))


def run(args: argparse.Namespace) -> int:
    import threading

    from tqdm import tqdm

    from attnseg.cli import notes
    from attnseg.fileio import remove_stale_temporaries
    from attnseg.inference.pipeline import SerializedCalls, choose_pipeline_for, pipelined, written_behind

    remove_stale_temporaries(args.out)
    collection = collect_inputs(args.inputs, args.out)
    log = _PlanLog()
    predictor = build_predictor(args, log)
    notes.flush()
    failed = list(collection.failed)
    for name, reason in failed:
        print(f"attnseg predict: failed {name}: {reason}", file=sys.stderr)
    done = 0
    progress = not args.no_progress
    # With cores beside the model's threads: while one image is in the model, the next is read and the last one's
    # files are written, in other threads; the model runs one image at a time (SerializedCalls). Without: images
    # are read and predicted in this thread and their files written behind at idle priority. Videos run alone in
    # this thread; results come in order.
    lock = threading.Lock()

    def image(model, item: InputItem) -> Callable[[], None]:
        return prepare_image(model, item, args.out, args.overlay, args.alpha, confidence=args.confidence,
                             attention=args.attention)  # fmt: skip

    def video(item: InputItem) -> int:
        log.start(str(item.path))
        return predict_video(predictor, item, args.out, args.alpha, progress)

    def job(item: InputItem):  # `pipelined`: the image is named when its forward starts, under the lock
        if item.is_video:
            return video(item)
        shared = SerializedCalls(predictor, lock, free=("colorize", "overlay"),
                                 on_enter=lambda: log.start(str(item.path)))  # fmt: skip
        return image(shared, item)()

    def prepare(item: InputItem):  # `written_behind`: read and predict here, return the writing
        if item.is_video:
            return lambda: video(item)
        log.start(str(item.path))
        return image(predictor, item)

    choice = choose_pipeline_for(args.pipeline, predictor.device, 0)
    if choice.idle_writer:  # the model in this thread, each image's files written behind the next one's forward
        results = written_behind(collection.items, prepare, inline=lambda item: item.is_video)
    else:
        results = pipelined(collection.items, job, window=2 if choice.pipeline else 1,
                            inline=lambda item: item.is_video)  # fmt: skip
    for item, result in tqdm(results, total=len(collection.items), desc="predict", unit="file", disable=not progress,
                             dynamic_ncols=True):  # fmt: skip
        try:
            result()
            done += 1
        except Exception as error:  # one bad input (unreadable, out of memory, a bug) must not end the others
            _release_cached_memory()
            failed.append((str(item.path), _one_line(error)))
            print(f"attnseg predict: failed {item.path}: {_one_line(error)}", file=sys.stderr)
    print_summary(done, collection, failed, args.out)
    return min(len(failed), MAX_EXIT_CODE)
