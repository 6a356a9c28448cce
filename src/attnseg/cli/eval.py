"""`attnseg eval CONFIG --weights W`: evaluate a checkpoint on a split, optionally dumping images or a submission.

Command-line flags override the config's `eval:` section; dotted ``section.key=value`` overrides work as for
`attnseg train`. W is a native checkpoint (``.safetensors`` + ``.json``), a training run directory (its best
checkpoint, else the last), or a foreign checkpoint (NVIDIA ``.pth``, PaddleSeg ``.pdparams``) for the config's
model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def _pair(text: str) -> tuple[int, int]:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected H,W (or one number for both), got {text!r}")
    try:
        height, width = int(parts[0]), int(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers H,W, got {text!r}") from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return height, width


def _scales(text: str) -> tuple[float, ...]:
    from attnseg.errors import ConfigError
    from attnseg.inference.scales import parse_scales

    try:
        return parse_scales(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Test-time options shared by `attnseg eval` and `attnseg predict`."""
    parser.add_argument(
        "--scales", type=_scales, default=None,
        help="test scales: 0.5,1.0,2.0 | ratio:LOW:HIGH:COUNT (equal ratio) | diff:LOW:HIGH:STEP (equal difference)",
    )  # fmt: skip
    parser.add_argument(
        "--multi-scale", choices=("hierarchical", "average"), default=None,
        help="hierarchical: MscaleOCR attention fusion inside the model; average: mean over scales (any model)",
    )  # fmt: skip
    parser.add_argument("--flip", action="store_true", default=None, help="add horizontally flipped passes")
    parser.add_argument(
        "--fusion", choices=("softmax", "logits"), default=None,
        help="how flip/averaged passes combine: mean of softmax (PaddleSeg <= 2.7) or logits (NVIDIA, PaddleSeg 2.8)",
    )  # fmt: skip
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None,
                        help="model precision: bf16 autocast, or auto (bf16 where the CPU runs it natively)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--backend", choices=("torch", "onnxruntime", "openvino"), default="torch",
        help="torch: a checkpoint; onnxruntime/openvino: a file from `attnseg export` (its scales are in the graph)",
    )  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (first batch compiles)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (mIoU etc.), with multi-scale/flip/sliding-window inference and dumps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="experiment YAML (its model, data and eval sections are used)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=/data/cityscapes")
    parser.add_argument("--weights", required=True, help="native checkpoint, training run directory, or .pth/.pdparams")
    parser.add_argument("--split", default=None, help="split to evaluate (default: eval.split)")
    add_recipe_arguments(parser)
    parser.add_argument("--slide", action="store_true", help="sliding-window inference (needs --crop and --stride)")
    parser.add_argument("--crop", type=_pair, default=None, help="sliding window H,W")
    parser.add_argument("--stride", type=_pair, default=None, help="sliding window stride H,W")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: eval.batch_size)")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: eval.num_workers)")
    parser.add_argument("--dump", type=Path, default=None, help="write colour/overlay/labelIds/compare images here")
    parser.add_argument(
        "--dump-kinds", default="color,overlay,labelIds,compare",
        help="comma list of color,overlay,trainIds,labelIds,compare,scales (scales = MscaleOCR attention maps)",
    )  # fmt: skip
    parser.add_argument("--submission", type=Path, default=None, help="write Cityscapes server labelId PNGs here")
    parser.add_argument("--json", type=Path, default=None, help="write metrics and the recipe as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def eval_config_from_args(eval_cfg, args: argparse.Namespace):
    """The config's `EvalConfig` with the command-line flags that were given applied on top."""
    changes = {}
    for flag, field in (("split", "split"), ("scales", "scales"), ("multi_scale", "multi_scale"), ("flip", "flip"),
                        ("fusion", "fusion"), ("precision", "precision"), ("batch_size", "batch_size"),
                        ("workers", "num_workers"), ("crop", "crop_size"), ("stride", "stride")):  # fmt: skip
        value = getattr(args, flag, None)
        if value is not None:
            changes[field] = value
    if getattr(args, "slide", False):
        changes["mode"] = "slide"
    return dataclasses.replace(eval_cfg, **changes)


def load_eval_model(weights: str | Path, model_cfg, device):
    """(model, mean, std, class_names, palette, description) for a native checkpoint, run dir or foreign file."""
    from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
    from attnseg.inference.predictor import resolve_weights
    from attnseg.weights import checkpoint_paths, load_model, load_weights

    path = resolve_weights(weights)
    if checkpoint_paths(path)[1].is_file():
        model, sidecar = load_model(path, device=device)
        return model, sidecar.mean, sidecar.std, sidecar.class_names, sidecar.palette, f"{path} ({sidecar.model})"
    from attnseg.config.build import build_model

    model = build_model(dataclasses.replace(model_cfg, pretrained=None))
    load_weights(model, path, source=model_cfg.pretrained_source, strict=True)
    model.to(device).eval()
    names = list(CITYSCAPES_CLASSES) if model_cfg.num_classes == 19 else [str(i) for i in range(model_cfg.num_classes)]
    palette = CITYSCAPES_PALETTE if model_cfg.num_classes == 19 else _gray_palette(model_cfg.num_classes)
    return model, None, None, names, palette, f"{path} ({model_cfg.name})"


def _gray_palette(count: int):
    import numpy as np

    values = np.linspace(0, 255, max(count, 2)).astype(np.uint8)[:count]
    return np.stack([values] * 3, axis=1)


def print_eval_lines(lines: list[str]) -> None:
    """Print `format_eval_log` lines with the timestamped ``[INFO]`` prefix of the PaddleSeg logs."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    for line in lines:
        print(f"{stamp} [INFO]\t{line}" if line.startswith("[EVAL]") else line)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from attnseg.config import load_config
    from attnseg.config.build import build_eval_loader, build_eval_dataset
    from attnseg.data.labels import train_id_to_id
    from attnseg.errors import ConfigError
    from attnseg.inference.dump import PredictionDumper
    from attnseg.inference.evaluate import evaluate_model
    from attnseg.inference.submission import SubmissionWriter, check_submission
    from attnseg.metrics import format_class_table, format_eval_log, metrics_to_json

    config = load_config(args.config, args.overrides)
    try:
        eval_cfg = eval_config_from_args(config.eval, args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"eval options: {error}") from None
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from attnseg.hardware import choose_precision, resolve_backend_precision

    if getattr(args, "backend", "torch") != "torch":
        from attnseg.export.runtime import eval_backend_model

        args.precision = resolve_backend_precision(args.backend, args.precision)

        model, mean, std, class_names, palette, description, eval_cfg = eval_backend_model(args, eval_cfg)
        device = torch.device("cpu")
    else:
        precision = choose_precision(eval_cfg.precision, device.type, what="eval.precision", allow_fp16=False)
        eval_cfg = dataclasses.replace(eval_cfg, precision=precision)
        model, mean, std, class_names, palette, description = load_eval_model(args.weights, config.model, device)
        if getattr(args, "compile", False) or (eval_cfg.precision == "bf16" and device.type == "cpu"):
            from attnseg.export.runtime import prepare_fast_model

            prepare_fast_model(model, channels_last=eval_cfg.precision == "bf16", compile=args.compile)
    data_cfg = config.data
    if mean is not None:  # a native checkpoint knows how it was trained to be fed
        data_cfg = dataclasses.replace(data_cfg, mean=tuple(mean), std=tuple(std))
    dataset = build_eval_dataset(data_cfg, eval_cfg.split)
    loader = build_eval_loader(data_cfg, eval_cfg.split, batch_size=eval_cfg.batch_size,
                               num_workers=eval_cfg.num_workers, dataset=dataset)  # fmt: skip
    num_classes = len(class_names)
    cityscapes_ids = num_classes == 19

    callbacks = []
    keep_scale_outputs = False
    if args.dump is not None:
        kinds = [k.strip() for k in args.dump_kinds.split(",") if k.strip()]
        if not cityscapes_ids and "labelIds" in kinds:
            kinds.remove("labelIds")
        keep_scale_outputs = "scales" in kinds
        callbacks.append(PredictionDumper(args.dump, np.asarray(palette), data_cfg.mean, data_cfg.std, kinds=kinds,
                                          train_id_to_label_id=train_id_to_id if cityscapes_ids else None))
    writer = None
    sizes: set[tuple[int, int]] = set()
    if args.submission is not None:
        if not cityscapes_ids:
            raise ConfigError("--submission writes Cityscapes labelIds and needs a 19-class model")
        writer = SubmissionWriter(args.submission)
        callbacks.append(writer)
        callbacks.append(lambda names, predictions, extras: sizes.add(tuple(predictions.shape[-2:])))

    def on_prediction(names, predictions, extras):
        for callback in callbacks:
            callback(names, predictions, extras)

    print(f"evaluating {description} on {data_cfg.dataset}:{eval_cfg.split} ({len(dataset)} images), "
          f"scales {list(eval_cfg.scales)} {eval_cfg.multi_scale}, flip {eval_cfg.flip}, {eval_cfg.mode}, "
          f"{eval_cfg.precision}, {device}")  # fmt: skip
    start = time.perf_counter()
    metrics = evaluate_model(
        model, loader, num_classes, scales=eval_cfg.scales, multi_scale=eval_cfg.multi_scale, flip=eval_cfg.flip,
        mode=eval_cfg.mode, crop_size=eval_cfg.crop_size, stride=eval_cfg.stride, precision=eval_cfg.precision,
        device=device, progress=not args.no_progress, on_prediction=on_prediction if callbacks else None,
        fusion=eval_cfg.fusion, ignore_index=data_cfg.ignore_index, keep_scale_outputs=keep_scale_outputs,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if metrics.num_pixels:
        print_eval_lines(format_eval_log(metrics))
        print(format_class_table(metrics, class_names))
    else:
        print(f"split {eval_cfg.split!r} has no labels: predictions only, no metrics")
    print(f"evaluated {len(dataset)} images in {elapsed:.1f} s ({len(dataset) / max(elapsed, 1e-9):.2f} images/s)")
    if args.dump is not None:
        print(f"wrote images to {args.dump}")
    if writer is not None:
        # Against the split's image list when it is a Cityscapes folder, so a missed image is caught too.
        split_dir = Path(data_cfg.root) / "leftImg8bit" / eval_cfg.split
        use_root = data_cfg.dataset == "cityscapes" and split_dir.is_dir()
        expected = data_cfg.root if use_root else [path.name for path in writer.written]
        size = next(iter(sizes)) if len(sizes) == 1 else (1024, 2048)
        check_submission(args.submission, expected, expected_size=size, split=eval_cfg.split)
    if args.json is not None:
        result = metrics_to_json(metrics, class_names) if metrics.num_pixels else {"numImages": len(dataset)}
        result["recipe"] = {"weights": description, "split": eval_cfg.split, **_recipe_dict(eval_cfg)}
        result["seconds"] = elapsed
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _recipe_dict(eval_cfg) -> dict:
    keys = ("scales", "multi_scale", "flip", "fusion", "mode", "crop_size", "stride", "precision")
    return {key: (list(value) if isinstance(value, tuple) else value)
            for key in keys if (value := getattr(eval_cfg, key, None)) is not None or key in ("crop_size", "stride")}
