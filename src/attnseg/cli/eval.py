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
from typing import Any


from attnseg.cli.arguments import check_output_file, non_negative_int, positive_int, scale_series, size_pair
from attnseg.cli.arguments import torch_device

# Kept for callers that imported them from here.
_pair = size_pair
_scales = scale_series

# Split names each dataset kind knows (a folder dataset's splits are whatever sub-folders or lists it holds).
KNOWN_SPLITS = {"cityscapes": ("train", "val", "test"), "mapillary": ("train", "val", "test")}
# Which command-line flag sets each `EvalConfig` field, to name the flag when a value is refused.
FLAG_OF_FIELD = {"split": "--split", "scales": "--scales", "multi_scale": "--multi-scale", "flip": "--flip",
                 "fusion": "--fusion", "precision": "--precision", "batch_size": "--batch-size",
                 "num_workers": "--workers", "crop_size": "--crop", "stride": "--stride", "mode": "--slide"}


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Test-time options shared by `attnseg eval` and `attnseg predict`."""
    parser.add_argument(
        "--scales", type=scale_series, default=None,
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
    parser.add_argument("--device", type=torch_device, default=None,
                        help="torch device: cpu, cuda, cuda:N, mps (default: cuda if available, else cpu)")
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
    parser.add_argument("--crop", type=size_pair, default=None, help="sliding window H,W")
    parser.add_argument("--stride", type=size_pair, default=None, help="sliding window stride H,W (<= --crop)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="images per batch (default: eval.batch_size)")
    parser.add_argument("--workers", type=non_negative_int, default=None,
                        help="loader workers (default: eval.num_workers)")
    parser.add_argument("--dump", type=Path, default=None, help="write colour/overlay/labelIds/compare images here")
    parser.add_argument(
        "--dump-kinds", default="color,overlay,labelIds,compare",
        help="comma list of color,overlay,trainIds,labelIds,compare,scales (scales = MscaleOCR attention maps)",
    )  # fmt: skip
    parser.add_argument("--submission", type=Path, default=None, help="write Cityscapes server labelId PNGs here")
    parser.add_argument("--json", type=Path, default=None, help="write metrics and the recipe as JSON (a file)")
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
    from attnseg.config.schema import FieldError
    from attnseg.errors import ConfigError

    try:
        return dataclasses.replace(eval_cfg, **changes)
    except FieldError as error:
        if error.field not in changes:
            raise ConfigError(f"config.eval.{error}") from None
        raise ConfigError(f"{FLAG_OF_FIELD[error.field]} {_shown(error.value)}: {error.allowed}") from None


def _shown(value) -> str:
    """A value as the command line writes it: ``40,64`` for a pair, ``0.5,1`` for scales."""
    if isinstance(value, (tuple, list)):
        return ",".join(f"{item:g}" if isinstance(item, float) else str(item) for item in value)
    return str(value)


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


@dataclasses.dataclass
class EvalSetup:
    """Everything `run` evaluates with, checked before any image is processed."""

    eval_cfg: Any
    data_cfg: Any
    device: Any
    model: Any
    class_names: list[str]
    palette: Any
    description: str
    dataset: Any


def dataset_class_count(data_cfg, dataset=None) -> int | None:
    """Classes the dataset evaluates: its own table for Cityscapes and Mapillary, None for a folder dataset (whose
    label files hold the model's own class ids)."""
    if data_cfg.dataset == "folder":
        return None
    if dataset is not None and hasattr(getattr(dataset, "base", None), "num_classes"):
        return int(dataset.base.num_classes)
    from attnseg.data.labels import CITYSCAPES_CLASSES

    classes = getattr(data_cfg, "mapillary_classes", "cityscapes")
    if data_cfg.dataset == "mapillary" and classes != "cityscapes":
        from attnseg.data.mapillary import VISTAS_NUM_CLASSES

        return VISTAS_NUM_CLASSES
    return len(CITYSCAPES_CLASSES)


def build_split(data_cfg, split: str, flag: str):
    """The evaluation dataset of `split`, refusing a split name the dataset kind does not have."""
    from attnseg.config.build import build_eval_dataset
    from attnseg.errors import ConfigError

    known = KNOWN_SPLITS.get(data_cfg.dataset)
    if known is not None and split not in known:
        raise ConfigError(f"{flag} {split!r}: {data_cfg.dataset} has the splits {', '.join(known)}")
    return build_eval_dataset(data_cfg, split)


def prepare_eval(args: argparse.Namespace) -> EvalSetup:
    """Load the config, model and dataset of `attnseg eval` and check that they fit together."""
    import torch

    from attnseg.config import load_config
    from attnseg.errors import ConfigError
    from attnseg.hardware import choose_precision, resolve_backend_precision
    from attnseg.inference.evaluate import check_class_count
    from attnseg.inference.scales import check_scaled_input

    config = load_config(args.config, args.overrides)
    eval_cfg = eval_config_from_args(config.eval, args)
    check_output_file(args.json, "--json")
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if getattr(args, "backend", "torch") != "torch":
        from attnseg.export.runtime import eval_backend_model

        args.precision = resolve_backend_precision(args.backend, args.precision)
        model, mean, std, class_names, palette, description, eval_cfg = eval_backend_model(args, eval_cfg)
        device = torch.device("cpu")
    else:
        precision = choose_precision(eval_cfg.precision, device.type, what="eval.precision", allow_fp16=False)
        eval_cfg = dataclasses.replace(eval_cfg, precision=precision)
        model, mean, std, class_names, palette, description = load_eval_model(args.weights, config.model, device)
    data_cfg = config.data
    if mean is not None:  # a native checkpoint knows how it was trained to be fed
        data_cfg = dataclasses.replace(data_cfg, mean=tuple(mean), std=tuple(std))
    split_flag = "--split" if args.split is not None else "eval.split"
    dataset = build_split(data_cfg, eval_cfg.split, split_flag)
    check_class_count(len(class_names), dataset_class_count(data_cfg, dataset),
                      f"{data_cfg.dataset}:{eval_cfg.split}", weights=description)  # fmt: skip
    if len(dataset):
        height, width = dataset[0]["image"].shape[-2:]
        scales_flag = "--scales" if args.scales is not None else "eval.scales"
        try:
            check_scaled_input(int(height), int(width), eval_cfg.scales, f"the first image of {eval_cfg.split}")
        except ConfigError as error:
            raise ConfigError(f"{scales_flag}: {error}") from None
    _check_recipe_fits(model, eval_cfg)
    if getattr(args, "backend", "torch") == "torch":
        from attnseg.inference.fast_path import apply_fast_path

        apply_fast_path(model, eval_cfg.precision, device, compile=bool(getattr(args, "compile", False)))
    return EvalSetup(eval_cfg, data_cfg, device, model, class_names, palette, description, dataset)


def _check_recipe_fits(model, eval_cfg) -> None:
    """Raise the recipe's own errors (a sliding window without a size, scales the model cannot fuse) now, before
    any output folder is made."""
    from attnseg.inference.evaluate import InferenceRecipe, model_forward

    recipe = InferenceRecipe(scales=tuple(eval_cfg.scales), multi_scale=eval_cfg.multi_scale, flip=eval_cfg.flip,
                             mode=eval_cfg.mode, crop_size=eval_cfg.crop_size, stride=eval_cfg.stride,
                             precision=eval_cfg.precision, fusion=eval_cfg.fusion)  # fmt: skip
    model_forward(model, recipe)


def _callbacks(args: argparse.Namespace, setup: EvalSetup, sizes: set) -> tuple[list, Any, bool]:
    """(per-batch callbacks, the submission writer or None, whether per-scale outputs are kept) for the dumps."""
    import numpy as np

    from attnseg.data.labels import train_id_to_id
    from attnseg.errors import ConfigError
    from attnseg.inference.dump import PredictionDumper
    from attnseg.inference.submission import SubmissionWriter

    cityscapes_ids = len(setup.class_names) == 19
    callbacks = []
    keep_scale_outputs = False
    if args.submission is not None and not cityscapes_ids:
        raise ConfigError("--submission writes Cityscapes labelIds and needs a 19-class model")
    if args.dump is not None:
        kinds = [k.strip() for k in args.dump_kinds.split(",") if k.strip()]
        if not cityscapes_ids and "labelIds" in kinds:
            kinds.remove("labelIds")
        keep_scale_outputs = "scales" in kinds
        callbacks.append(PredictionDumper(args.dump, np.asarray(setup.palette), setup.data_cfg.mean,
                                          setup.data_cfg.std, kinds=kinds,
                                          train_id_to_label_id=train_id_to_id if cityscapes_ids else None))
    writer = None
    if args.submission is not None:
        writer = SubmissionWriter(args.submission)
        callbacks.append(writer)
        callbacks.append(lambda names, predictions, extras: sizes.add(tuple(predictions.shape[-2:])))
    return callbacks, writer, keep_scale_outputs


def run(args: argparse.Namespace) -> int:
    from attnseg.config.build import build_eval_loader
    from attnseg.inference.evaluate import evaluate_model

    setup = prepare_eval(args)
    eval_cfg, data_cfg, dataset = setup.eval_cfg, setup.data_cfg, setup.dataset
    loader = build_eval_loader(data_cfg, eval_cfg.split, batch_size=eval_cfg.batch_size,
                               num_workers=eval_cfg.num_workers, dataset=dataset)  # fmt: skip
    sizes: set[tuple[int, int]] = set()
    callbacks, writer, keep_scale_outputs = _callbacks(args, setup, sizes)

    def on_prediction(names, predictions, extras):
        for callback in callbacks:
            callback(names, predictions, extras)

    print(f"evaluating {setup.description} on {data_cfg.dataset}:{eval_cfg.split} ({len(dataset)} images), "
          f"scales {list(eval_cfg.scales)} {eval_cfg.multi_scale}, flip {eval_cfg.flip}, {eval_cfg.mode}, "
          f"{eval_cfg.precision}, {setup.device}")  # fmt: skip
    start = time.perf_counter()
    metrics = evaluate_model(
        setup.model, loader, len(setup.class_names), scales=eval_cfg.scales, multi_scale=eval_cfg.multi_scale,
        flip=eval_cfg.flip, mode=eval_cfg.mode, crop_size=eval_cfg.crop_size, stride=eval_cfg.stride,
        precision=eval_cfg.precision, device=setup.device, progress=not args.no_progress,
        on_prediction=on_prediction if callbacks else None, fusion=eval_cfg.fusion,
        ignore_index=data_cfg.ignore_index, keep_scale_outputs=keep_scale_outputs,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    _report(args, setup, metrics, elapsed, writer, sizes)
    return 0


def _report(args: argparse.Namespace, setup: EvalSetup, metrics, elapsed: float, writer, sizes: set) -> None:
    """Print the metrics, check the submission folder and write the JSON file."""
    from attnseg.fileio import atomic_write_text
    from attnseg.inference.submission import check_submission
    from attnseg.metrics import format_class_table, format_eval_log, metrics_to_json

    eval_cfg, data_cfg, count = setup.eval_cfg, setup.data_cfg, len(setup.dataset)
    if metrics.num_pixels:
        print_eval_lines(format_eval_log(metrics))
        print(format_class_table(metrics, setup.class_names))
    else:
        print(f"split {eval_cfg.split!r} has no labels: predictions only, no metrics")
    print(f"evaluated {count} images in {elapsed:.1f} s ({count / max(elapsed, 1e-9):.2f} images/s)")
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
        result = metrics_to_json(metrics, setup.class_names) if metrics.num_pixels else {"numImages": count}
        result["recipe"] = {"weights": setup.description, "split": eval_cfg.split, **_recipe_dict(eval_cfg)}
        result["seconds"] = elapsed
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


def _recipe_dict(eval_cfg) -> dict:
    keys = ("scales", "multi_scale", "flip", "fusion", "mode", "crop_size", "stride", "precision")
    return {key: (list(value) if isinstance(value, tuple) else value)
            for key in keys if (value := getattr(eval_cfg, key, None)) is not None or key in ("crop_size", "stride")}
