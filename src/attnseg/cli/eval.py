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

from attnseg.cli.arguments import (
    add_recipe_arguments,
    check_fp16,
    check_output_file,
    default_device_type,
    non_negative_int,
    positive_int,
    size_pair,
)

DEFAULT_DUMP_KINDS = "color,overlay,labelIds,compare,confidence"  # attnseg.inference.dump.DEFAULT_DUMP_KINDS

# Which command-line flag sets each `EvalConfig` field, to name the flag when a value is refused.
FLAG_OF_FIELD = {"split": "--split", "scales": "--scales", "multi_scale": "--multi-scale", "flip": "--flip",
                 "fusion": "--fusion", "precision": "--precision", "batch_size": "--batch-size",
                 "num_workers": "--workers", "crop_size": "--crop", "stride": "--stride", "mode": "--slide"}


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
    parser.add_argument("--dump", type=Path, default=None,
                        help="write colour/overlay/labelIds/compare/confidence images here")
    parser.add_argument(
        "--dump-kinds", default=DEFAULT_DUMP_KINDS,
        help="comma list of color,overlay,trainIds,labelIds,compare,confidence,scales (scales = MscaleOCR attention "
             "maps), or none (with --dump-topn: only the top-N strips)",
    )  # fmt: skip
    parser.add_argument("--dump-topn", type=positive_int, default=None, metavar="N",
                        help="find the N images with the lowest image mIoU and, per class, the lowest IoU; print the "
                             "worst N and, with --dump, write their input|truth|prediction strips to DIR/topn/")
    parser.add_argument("--submission", type=Path, default=None, help="write Cityscapes server labelId PNGs here")
    parser.add_argument("--json", type=Path, default=None, help="write metrics and the recipe as JSON (a file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=None,
                        help="read ahead (loader workers, a thread) and write behind the model (default: where cores "
                             "are left beside the model's threads; else read in line and write behind at idle "
                             "priority; --no-pipeline: everything in line)")
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
    model: Any  # attnseg.inference.eval_job.EvalModel
    dataset: Any
    dump_kinds: list[str] = dataclasses.field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    @property
    def description(self) -> str:
        return self.model.description


def _load_model(args: argparse.Namespace, model_cfg, eval_cfg):
    """(EvalModel, eval_cfg) of the checkpoint or exported file `--weights` names, on its device, with the precision
    (and, for an exported graph, the outside scales) the evaluation runs at."""
    import torch

    from attnseg.hardware import choose_precision, resolve_backend_precision

    if getattr(args, "backend", "torch") != "torch":
        from attnseg.export.runtime import eval_backend_model

        args.precision = resolve_backend_precision(args.backend, args.precision)
        exported = eval_backend_model(args.weights, args.backend, precision=args.precision,
                                      compile=bool(args.compile), scales=args.scales,
                                      multi_scale=eval_cfg.multi_scale)  # fmt: skip
        changes = {"precision": exported.precision}
        if exported.outside_scales is not None:
            changes["scales"] = exported.outside_scales
        return exported.model, dataclasses.replace(eval_cfg, **changes)
    from attnseg.config.build import build_model
    from attnseg.inference.eval_job import load_eval_model

    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = choose_precision(eval_cfg.precision, device.type, what="eval.precision", allow_fp16=False)
    model = load_eval_model(args.weights, device, build_model=lambda: build_model(dataclasses.replace(model_cfg,
                            pretrained=None)), model_name=model_cfg.name, num_classes=model_cfg.num_classes,
                            source=model_cfg.pretrained_source)  # fmt: skip
    return model, dataclasses.replace(eval_cfg, precision=precision)


def prepare_eval(args: argparse.Namespace) -> EvalSetup:
    """Load the config, model and dataset of `attnseg eval` and check that they fit together."""
    from attnseg.config import load_config
    from attnseg.config.build import build_eval_split, dataset_class_count
    from attnseg.errors import ConfigError
    from attnseg.inference.evaluate import check_class_count, model_forward
    from attnseg.inference.scales import check_scaled_input

    config = load_config(args.config, args.overrides)
    eval_cfg = eval_config_from_args(config.eval, args)
    check_output_file(args.json, "--json")
    check_fp16(eval_cfg.precision, default_device_type(args.device), getattr(args, "backend", "torch"),
               "--precision" if args.precision is not None else "eval.precision")  # fmt: skip
    model, eval_cfg = _load_model(args, config.model, eval_cfg)
    data_cfg = config.data
    if model.mean is not None:  # a native checkpoint knows how it was trained to be fed
        data_cfg = dataclasses.replace(data_cfg, mean=tuple(model.mean), std=tuple(model.std))
    split_flag = "--split" if args.split is not None else "eval.split"
    dataset = build_eval_split(data_cfg, eval_cfg.split, split_flag, num_classes=len(model.class_names))
    check_class_count(len(model.class_names), dataset_class_count(data_cfg, dataset),
                      f"{data_cfg.dataset}:{eval_cfg.split}", weights=model.description)  # fmt: skip
    if len(dataset):
        height, width = dataset[0]["image"].shape[-2:]
        scales_flag = "--scales" if args.scales is not None else "eval.scales"
        try:
            check_scaled_input(int(height), int(width), eval_cfg.scales, f"the first image of {eval_cfg.split}")
        except ConfigError as error:
            raise ConfigError(f"{scales_flag}: {error}") from None
    # The recipe's own errors (a window without a size, scales the model cannot fuse) now, before any output folder.
    model_forward(model.module, recipe_of(eval_cfg))
    dump_kinds = _dump_kinds(args, model)
    if getattr(args, "dump_topn", None) and len(dataset) and dataset[0].get("label") is None:
        raise ConfigError(f"--dump-topn {args.dump_topn}: {data_cfg.dataset}:{eval_cfg.split} has no labels to "
                          "score images against")  # fmt: skip
    if getattr(args, "backend", "torch") == "torch":
        from attnseg.inference.fast_path import apply_fast_path

        apply_fast_path(model.module, eval_cfg.precision, model.device, compile=bool(getattr(args, "compile", False)))
    return EvalSetup(eval_cfg, data_cfg, model, dataset, dump_kinds)


def _dump_kinds(args: argparse.Namespace, model) -> list[str]:
    """The kinds --dump writes: --dump-kinds (``none``: nothing), without ``confidence`` for an export that outputs
    argmax ids (refused when asked for by name).

    Raises:
        ConfigError: an unknown kind, or ``confidence`` named for a labels-only export.
    """
    from attnseg.errors import ConfigError
    from attnseg.inference.dump import DUMP_KINDS

    text = getattr(args, "dump_kinds", DEFAULT_DUMP_KINDS)
    kinds = [kind.strip() for kind in text.split(",") if kind.strip() and kind.strip() != "none"]
    unknown = [kind for kind in kinds if kind not in DUMP_KINDS]
    if unknown:
        raise ConfigError(f"--dump-kinds {text}: unknown {', '.join(unknown)}; choose from {', '.join(DUMP_KINDS)} "
                          "or none")  # fmt: skip
    if "confidence" in kinds and not model.gives_probabilities:
        if text != DEFAULT_DUMP_KINDS:
            raise ConfigError(f"--dump-kinds confidence: {args.weights} outputs argmax class ids, which carry no "
                              "probabilities; export it again with `attnseg export ... --output softmax`")
        kinds.remove("confidence")
    return kinds


def recipe_of(eval_cfg):
    """The `InferenceRecipe` of an `EvalConfig`."""
    from attnseg.inference.evaluate import InferenceRecipe

    return InferenceRecipe(scales=tuple(eval_cfg.scales), multi_scale=eval_cfg.multi_scale, flip=eval_cfg.flip,
                           mode=eval_cfg.mode, crop_size=eval_cfg.crop_size, stride=eval_cfg.stride,
                           precision=eval_cfg.precision, fusion=eval_cfg.fusion)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from attnseg.cli import notes
    from attnseg.config.build import build_eval_loader
    from attnseg.inference.eval_job import EvalOutputs, run_evaluation
    from attnseg.inference.pipeline import choose_pipeline_for

    setup = prepare_eval(args)
    eval_cfg, data_cfg, dataset = setup.eval_cfg, setup.data_cfg, setup.dataset
    plan = choose_pipeline_for(args.pipeline, setup.model.device, eval_cfg.num_workers)
    loader = build_eval_loader(data_cfg, eval_cfg.split, batch_size=eval_cfg.batch_size,
                               num_workers=plan.workers, dataset=dataset)  # fmt: skip
    outputs = EvalOutputs(setup.class_names, setup.model.palette, data_cfg.mean, data_cfg.std, dump_dir=args.dump,
                          dump_kinds=setup.dump_kinds, submission_dir=args.submission, topn=args.dump_topn or 0,
                          ignore_index=data_cfg.ignore_index)  # fmt: skip
    notes.flush()
    print(f"evaluating {setup.description} on {data_cfg.dataset}:{eval_cfg.split} ({len(dataset)} images), "
          f"scales {list(eval_cfg.scales)} {eval_cfg.multi_scale}, flip {eval_cfg.flip}, {eval_cfg.mode}, "
          f"{eval_cfg.precision}, {setup.model.device}")  # fmt: skip
    result = run_evaluation(setup.model, loader, recipe_of(eval_cfg), outputs=outputs,
                            ignore_index=data_cfg.ignore_index, progress=not args.no_progress,
                            pipeline=plan.pipeline, idle_writer=plan.idle_writer)  # fmt: skip
    _report(args, setup, result, outputs)
    return 0


def _report(args: argparse.Namespace, setup: EvalSetup, run, outputs) -> None:
    """Print the metrics (and the worst images), check the submission folder and write the JSON file."""
    from attnseg.fileio import atomic_write_text
    from attnseg.inference.topn import format_worst_table
    from attnseg.metrics import format_class_table, format_eval_log, metrics_to_json

    metrics, elapsed = run.metrics, run.seconds
    eval_cfg, data_cfg, count = setup.eval_cfg, setup.data_cfg, len(setup.dataset)
    if metrics.num_pixels:
        print_eval_lines(format_eval_log(metrics))
        print(format_class_table(metrics, setup.class_names))
    else:
        print(f"split {eval_cfg.split!r} has no labels: predictions only, no metrics")
    print(f"evaluated {count} images in {elapsed:.1f} s ({count / max(elapsed, 1e-9):.2f} images/s)")
    if run.worst is not None:
        print(format_worst_table(run.worst["overall"]))
    if args.dump is not None:
        print(f"wrote images to {args.dump}" + (f" (worst {args.dump_topn}: {args.dump / 'topn'})"
                                                if run.worst is not None else ""))  # fmt: skip
    # Against the split's image list when it is a Cityscapes folder, so a missed image is caught too.
    outputs.check_submission(data_cfg.root if data_cfg.dataset == "cityscapes" else None, eval_cfg.split)
    if args.json is not None:
        result = metrics_to_json(metrics, setup.class_names) if metrics.num_pixels else {"numImages": count}
        result["recipe"] = {"weights": setup.description, "split": eval_cfg.split, **_recipe_dict(eval_cfg)}
        result["seconds"] = elapsed
        if run.worst is not None:
            result["worstImages"] = run.worst["overall"]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


def _recipe_dict(eval_cfg) -> dict:
    keys = ("scales", "multi_scale", "flip", "fusion", "mode", "crop_size", "stride", "precision")
    return {key: (list(value) if isinstance(value, tuple) else value)
            for key in keys if (value := getattr(eval_cfg, key, None)) is not None or key in ("crop_size", "stride")}
