"""`attnseg quantize WEIGHTS --calib IMAGES_OR_SPLIT --out model_int8.xml`: an INT8 OpenVINO model and its cost.

WEIGHTS is a training run directory, a native checkpoint or an fp32 OpenVINO ``.xml`` from `attnseg export`
(exported with a fixed ``--input-shape``). A checkpoint is first exported to an fp32 IR (in a temporary folder) at
``--input-shape`` (default: the size of the first calibration image) with ``--scales`` fused in the graph (default:
the run's ``eval.scales``, else the model's own). NNCF then quantizes the whole multi-scale graph with statistics of
``--calib-count`` images: a folder, glob or image files, or ``split:NAME`` for a split of the run's dataset (or of
``--config``'s).

The accuracy report compares INT8 with fp32 on the same images: label agreement, and on a labelled split
(``--report-split``, default the run's ``eval.split`` when the run has a dataset) the mIoU of each and per class. It
is printed and written to ``<out>.report.json``. With ``--max-drop P`` the command refuses (exit 2, nothing written)
when INT8 loses more than P points of mIoU; without it, a drop above 0.5 points is a warning.

``--min-agreement P`` refuses in the same way when INT8 gives fp32's label on fewer than P percent of the pixels
(no labels needed).

``--accuracy-control --max-drop P`` runs NNCF's accuracy-aware mode instead of the plain quantization: the quantized
operations are ranked by what they cost on ``--ranking-count`` images of the report split, and the costliest go back
to floating point until INT8 loses at most P points on the report split (the same images the report then measures:
pass a split the model was not tuned on). It takes several passes over the split. ``--accuracy-control
--min-agreement P`` bounds the agreement with fp32 instead, on the report images (or the calibration images when
there is no report split).

``--finetune-steps N`` quantizes the PyTorch model instead (NNCF's PyTorch backend, the same settings) and then
trains the quantized network for N steps (quantization-aware fine-tuning) to reproduce fp32's class distributions on
the calibration images (the KL divergence of INT8's from fp32's: no labels needed), before converting it to
OpenVINO IR. It needs a run directory or checkpoint.

``attnseg predict/eval --backend openvino`` run the result unchanged (its sidecar carries the preprocessing).
Needs the ``int8`` extra: ``pip install -e '.[int8]'`` (nncf + openvino).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

WARN_DROP_POINTS = 0.5  # the bound OpenVINO's INT8 DeepLabV3 results stay within (a few tenths of a point)


def register(subparsers: argparse._SubParsersAction) -> None:
    from attnseg.cli.arguments import positive_int, scale_series
    from attnseg.export.quantize import BIAS_CORRECTIONS, KEEP_FLOAT_GROUPS, MODEL_TYPES, OVERFLOW_FIXES, PRESETS
    from attnseg.export.quantize_finetune import FINETUNE_PARAMETERS

    parser = subparsers.add_parser(
        "quantize",
        help="post-training INT8 quantization (NNCF, OpenVINO) with an accuracy report against fp32",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("weights", help="training run directory, native checkpoint, or an fp32 OpenVINO .xml")
    parser.add_argument("--calib", required=True, nargs="+", help="images, folders, globs, or split:NAME")
    parser.add_argument("--out", required=True, type=Path, help="target .xml (with .bin, .xml.json, .report.json)")
    parser.add_argument("--calib-count", type=positive_int, default=32, help="calibration images (default %(default)s)")
    parser.add_argument("--config", default=None, help="experiment YAML for split: sources (default: the run's)")
    parser.add_argument("--report-split", default=None,
                        help="labelled split for the mIoU report (default: the config's eval.split, if any)")
    parser.add_argument("--report-count", type=positive_int, default=500, help="at most this many report images")
    parser.add_argument("--input-shape", type=positive_int, nargs=4, metavar=("N", "C", "H", "W"), default=None,
                        help="graph input shape (default: 1 3 and the first calibration image's size)")
    parser.add_argument("--scales", type=scale_series, default=None, help="scales fused in the graph (MscaleOCR)")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default="transformer",
                        help="NNCF model type; transformer keeps attention products' inputs in float (default)")
    parser.add_argument("--preset", choices=PRESETS, default="mixed", help="NNCF preset (default %(default)s)")
    parser.add_argument("--bias-correction", choices=BIAS_CORRECTIONS, default="none",
                        help="NNCF's bias correction after quantization: none (default; agreed best with fp32 on "
                             "every trained model measured), fast (NNCF's default) or full (slower)")
    parser.add_argument("--overflow-fix", choices=tuple(OVERFLOW_FIXES), default="first-layer",
                        help="layers whose weights get 7 bits of range so that CPUs without VNNI/AMX cannot saturate: "
                             "first-layer (default), all, or none (for VNNI/AMX CPUs only; more accurate there)")
    parser.add_argument("--keep-float", default="",
                        help=f"comma list of parts left unquantized: {', '.join(KEEP_FLOAT_GROUPS)}")
    parser.add_argument("--float-scales", type=scale_series, default=(),
                        help="scales of the multi-scale graph whose branches stay in floating point, e.g. 0.5,1.0 "
                             "(the low scales flip the most labels for their cost)")
    parser.add_argument("--max-drop", type=float, default=None,
                        help="refuse when INT8 loses more than this many mIoU points (needs a labelled split)")
    parser.add_argument("--min-agreement", type=float, default=None, metavar="P",
                        help="refuse when INT8 gives fp32's label on fewer than P percent of the pixels (no labels "
                             "needed)")
    parser.add_argument("--accuracy-control", action="store_true",
                        help="NNCF's accuracy-aware mode: return the costliest operations to float until INT8 loses "
                             "at most --max-drop points on --report-split, or agrees with fp32 on at least "
                             "--min-agreement percent of the report images' pixels (needs one of them)")
    parser.add_argument("--ranking-count", type=positive_int, default=16,
                        help="with --accuracy-control: images the operations are ranked on (default %(default)s)")
    parser.add_argument("--finetune-steps", type=int, default=0, metavar="N",
                        help="quantization-aware fine-tuning: N steps of distilling fp32 into the quantized PyTorch "
                             "model on the calibration images (default 0: post-training quantization only)")
    parser.add_argument("--finetune-lr", type=float, default=1e-5, help="Adam learning rate (default %(default)s)")
    parser.add_argument("--finetune-batch", type=positive_int, default=2, help="images per step (default %(default)s)")
    parser.add_argument("--finetune-params", choices=FINETUNE_PARAMETERS, default="all",
                        help="what the fine-tuning trains: all (default), weights (convolutions) or ranges "
                             "(the quantizers')")
    parser.add_argument("--threads", type=positive_int, default=None, help="OpenVINO threads (default: all)")
    parser.set_defaults(func=run, validate=validate)


def validate(args: argparse.Namespace) -> None:
    """Refuse arguments that cannot work before anything is loaded."""
    from attnseg.cli.arguments import check_output_file
    from attnseg.errors import ConfigError
    from attnseg.export.quantize import QuantizationSettings

    if args.out.suffix != ".xml":
        raise ConfigError(f"--out {args.out}: an OpenVINO model file ends in .xml")
    check_output_file(args.out, "--out")
    if args.input_shape is not None and (args.input_shape[0] != 1 or args.input_shape[1] != 3):
        raise ConfigError(f"--input-shape {' '.join(map(str, args.input_shape))}: quantize one 3-channel image per "
                          "call (N=1, C=3)")  # fmt: skip
    if args.max_drop is not None and not args.max_drop >= 0:
        raise ConfigError(f"--max-drop {args.max_drop}: must be a number of points >= 0")
    if args.min_agreement is not None and not 0 < args.min_agreement <= 100:
        raise ConfigError(f"--min-agreement {args.min_agreement}: must be a percentage in (0, 100]")
    if args.accuracy_control and (args.max_drop is None) == (args.min_agreement is None):
        raise ConfigError("--accuracy-control needs one bound: --max-drop P (the mIoU points INT8 may lose) or "
                          "--min-agreement P (the percentage of fp32's labels INT8 must keep)")
    args.settings = QuantizationSettings(args.model_type, args.preset,
                                         tuple(name for name in args.keep_float.split(",") if name),
                                         args.bias_correction, tuple(args.float_scales),
                                         args.overflow_fix)  # fmt: skip
    _validate_finetune(args)


def _validate_finetune(args: argparse.Namespace) -> None:
    from attnseg.errors import AttnsegError, ConfigError
    from attnseg.export.quantize_finetune import FinetuneSettings, check_torch_backend_settings

    try:
        args.finetune = FinetuneSettings(args.finetune_steps, args.finetune_lr, args.finetune_batch,
                                         args.finetune_params)  # fmt: skip
        if args.finetune.steps:
            check_torch_backend_settings(args.settings)
    except AttnsegError as error:
        raise ConfigError(str(error)) from None
    if not args.finetune.steps:
        return
    if Path(args.weights).suffix == ".xml":
        raise ConfigError(f"--finetune-steps: {args.weights} is an OpenVINO graph; fine-tuning trains the PyTorch "
                          "model: give the run directory or checkpoint")  # fmt: skip
    if args.accuracy_control:
        raise ConfigError("--finetune-steps and --accuracy-control: choose one (NNCF's accuracy-aware mode works on "
                          "the OpenVINO graph)")  # fmt: skip


def _warn_without_int8_dot_product(overflow_fix: str) -> None:
    from attnseg.hardware import cpu_facts

    facts = cpu_facts()
    if overflow_fix != "none" or not facts.known or facts.int8_paths:
        return
    print("warning: --overflow-fix none on a CPU without VNNI or AMX: its int8 products can saturate with full-range "
          "weights; the report below measures that. Deploy this model on VNNI/AMX CPUs only", file=sys.stderr)


def _warn_finetune_on_report(args: argparse.Namespace, report_split: str | None) -> None:
    """Fine-tuning on the images the report measures makes the report flatter the model."""
    calibration_split = args.calib[0][len("split:"):] if args.calib[0].startswith("split:") else None
    if args.finetune.steps and (report_split is None or calibration_split == report_split):
        where = f"split {report_split}" if report_split is not None else "the calibration images"
        print(f"warning: fine-tuning on the images the report measures ({where}): the agreement and mIoU below "
              "flatter INT8; calibrate on another split (e.g. --calib split:train)", file=sys.stderr)  # fmt: skip


def _config_for(args: argparse.Namespace):
    """The experiment config for `split:` sources and the report: --config, else the run directory's."""
    from attnseg.config import load_config

    from attnseg.inference.predictor import run_config_path

    if args.config is not None:
        return load_config(args.config, [])
    run_config = run_config_path(args.weights) if Path(args.weights).suffix != ".xml" else None
    return load_config(run_config, []) if run_config is not None else None


def _split_dataset(config, split: str, flag: str):
    from attnseg.config.build import build_eval_dataset
    from attnseg.errors import ConfigError

    if config is None:
        raise ConfigError(f"{flag} split:{split}: needs --config (or a run directory whose config names the data)")
    return build_eval_dataset(config.data, split).base  # raw uint8 samples; normalisation follows the sidecar


def _calibration_sources(args: argparse.Namespace, config) -> tuple[list[Path], object | None]:
    """(image files, or a dataset of raw samples) that --calib names."""
    from attnseg.cli.predict import collect_inputs
    from attnseg.errors import ConfigError

    splits = [text for text in args.calib if text.startswith("split:")]
    if splits:
        if len(args.calib) > 1:
            raise ConfigError("--calib: either one split:NAME or image files/folders/globs, not both")
        return [], _split_dataset(config, splits[0][len("split:"):], "--calib")
    collection = collect_inputs(list(args.calib))
    files = [item.path for item in collection.items if not item.is_video]
    if not files:
        reasons = "; ".join(f"{text}: {reason}" for text, reason in collection.failed) or "no image files"
        raise ConfigError(f"--calib {' '.join(args.calib)}: nothing to calibrate on ({reasons})")
    return files[: args.calib_count], None


def _first_image_size(files: list[Path], dataset) -> tuple[int, int]:
    from attnseg.inference.predictor import read_image

    image = read_image(files[0]) if files else dataset[0]["image"]
    return int(image.shape[0]), int(image.shape[1])


def _fp32_graph(args: argparse.Namespace, config, size: tuple[int, int], folder: Path):
    """(the fp32 IR to quantize, the PyTorch model or None, the fused scales or None): WEIGHTS itself when it is an
    IR, else an export of the checkpoint."""
    from attnseg.cli.export import load_export_model
    from attnseg.export.openvino import export_openvino

    if Path(args.weights).suffix == ".xml":
        return Path(args.weights), None, None
    model, sidecar, description = load_export_model(args.weights)
    scales = args.scales
    if scales is None and config is not None and config.eval.multi_scale == "hierarchical":
        scales = tuple(config.eval.scales)
    target = folder / "fp32.xml"
    scale_text = list(scales) if scales else "(the model's own)"
    print(f"exporting {description} at 1x3x{size[0]}x{size[1]}, scales {scale_text}",
          file=sys.stderr)  # fmt: skip
    export_openvino(model, target, (1, 3, *size), scales=scales, sidecar=sidecar, verify=False)
    return target, model, scales


def _quantize(args: argparse.Namespace, model, scales, fp32_path: Path, staged: Path, calibration, sidecar, control):
    """Quantize (and fine-tune) into `staged`; returns its sidecar."""
    from attnseg.export.quantize import quantize_ir
    from attnseg.export.quantize_finetune import quantize_torch

    if not args.finetune.steps:
        return quantize_ir(fp32_path, staged, calibration, args.settings, source=str(args.weights),
                           accuracy_control=control)  # fmt: skip
    tuning = args.finetune
    print(f"fine-tuning {tuning.steps} steps by distillation from fp32 (KL; Adam lr {tuning.learning_rate:g}, "
          f"batch {tuning.batch_size}, {tuning.parameters} parameters)", file=sys.stderr)  # fmt: skip
    every = max(1, tuning.steps // 10)
    start = time.perf_counter()

    def progress(step: int, loss: float) -> None:
        if step % every == 0 or step == tuning.steps:
            print(f"  step {step}/{tuning.steps}: KL {loss:.6f} ({(time.perf_counter() - start) / step:.2f} s a step)",
                  file=sys.stderr)  # fmt: skip

    return quantize_torch(model, scales, staged, calibration, sidecar, args.settings, tuning,
                          source=str(args.weights), progress=progress)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from attnseg.errors import AttnsegError, ConfigError
    from attnseg.export.onnx import read_export_sidecar
    from attnseg.export.quantize import (
        AccuracyControl, compare_int8, dataset_samples, image_samples, require_nncf, static_input_size,
    )  # fmt: skip
    from attnseg.export.scale_branches import match_scales
    from attnseg.fileio import atomic_write_text
    from attnseg.export.openvino import move_ir

    require_nncf()
    config = _config_for(args)
    files, calib_dataset = _calibration_sources(args, config)
    size = tuple(args.input_shape[2:]) if args.input_shape else _first_image_size(files, calib_dataset)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Staged beside the target, so that the finished files are renamed into place on the same file system.
    with tempfile.TemporaryDirectory(prefix=".attnseg-quantize-", dir=args.out.parent) as work:
        fp32_path, model, scales = _fp32_graph(args, config, size, Path(work))
        sidecar = read_export_sidecar(fp32_path)
        size = static_input_size(sidecar, fp32_path)
        if args.settings.float_scales:  # before calibration, which is the long part
            match_scales(args.settings.float_scales, sidecar.scales)
        calibration = [sample.inputs for sample in (
            image_samples(files, sidecar, size) if files else dataset_samples(calib_dataset, sidecar, size,
                                                                              args.calib_count))]  # fmt: skip
        print(f"quantizing with {len(calibration)} calibration images ({args.settings.model_type}, "
              f"{args.settings.preset}, bias correction {args.settings.bias_correction}, float: "
              f"{', '.join(args.settings.keep_float) or 'NNCF default'}"
              f"{''.join(f', scale {scale:g}' for scale in args.settings.float_scales)}; overflow fix "
              f"{args.settings.overflow_fix})", file=sys.stderr)  # fmt: skip
        _warn_without_int8_dot_product(args.settings.overflow_fix)
        report_split = args.report_split or (config.eval.split if config is not None else None)
        if args.max_drop is not None and report_split is None:
            raise ConfigError("--max-drop needs labels: give --report-split (and --config without a run directory)")
        _warn_finetune_on_report(args, report_split)
        if report_split is not None:
            samples = dataset_samples(_split_dataset(config, report_split, "--report-split"), sidecar, size,
                                      args.report_count)  # fmt: skip
            where = f"split {report_split}"
        else:
            samples, where = image_samples(files, sidecar, size), "the calibration images"
        control = None
        if args.accuracy_control:  # NNCF validates several times: the split is held in memory for it
            samples = list(samples)
            control = AccuracyControl(samples, sidecar.num_classes, args.max_drop, args.min_agreement,
                                      args.ranking_count)  # fmt: skip
            print(f"accuracy control: {control.describe()} on {where} ({len(samples)} images, operations ranked on "
                  f"{min(args.ranking_count, len(samples))})", file=sys.stderr)  # fmt: skip
        staged = Path(work) / "int8.xml"
        result = _quantize(args, model, scales, fp32_path, staged, calibration, sidecar, control)
        report = compare_int8(fp32_path, staged, samples, threads=args.threads)
        for line in report.lines():
            print(line)
        drop = report.miou_drop_points
        if args.max_drop is not None and drop is not None and drop > args.max_drop:
            raise AttnsegError(f"--max-drop {args.max_drop}: INT8 loses {drop:.2f} mIoU points on {where}; nothing "
                               "written (try --keep-float scale-attention,ocr-context or more --calib-count)")
        if args.min_agreement is not None and 100 * report.agreement < args.min_agreement:
            raise AttnsegError(f"--min-agreement {args.min_agreement}: INT8 gives fp32's label on "
                               f"{report.agreement:.2%} of the pixels of {where}; nothing written (try "
                               "--accuracy-control)")  # fmt: skip
        if drop is not None and drop > WARN_DROP_POINTS:
            print(f"warning: INT8 loses {drop:.2f} mIoU points on {where} (above {WARN_DROP_POINTS})", file=sys.stderr)
        record = {"report_on": where, **report.to_json(), "quantization": result.extra["quantization"],
                  "model": result.model, "input_shape": result.input_shape, "scales": result.scales}  # fmt: skip
        move_ir(staged, args.out)
        atomic_write_text(args.out.with_suffix(".report.json"), json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} (+ .bin, {args.out.name}.json, {args.out.with_suffix('.report.json').name})")
    return 0
