"""`attnseg export WEIGHTS --format onnx|openvino --out PATH`: a deployable graph plus its sidecar JSON.

WEIGHTS is a native checkpoint (``.safetensors`` + ``.json``), a training run directory (its best checkpoint, else
the last), or a registered model name (random weights: for benchmarks and smoke tests). The sidecar written next
to the model (``model.onnx.json`` / ``model.xml.json``) holds the pre-processing (RGB, 0-255, mean/std, NCHW
float32), input/output names and shapes, the output op, class names, palette and the scales fused in the graph,
so the file can be used without attnseg's configs.

Exporting at full resolution needs 15-19 GB of RAM; ``--dynamic`` traces at 256x512 with symbolic height and
width instead (PSANet's attention masks depend on the size, so export PSANet with a fixed ``--input-shape``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from attnseg.cli.arguments import positive_int, scale_series
    from attnseg.config.schema import ExportConfig

    defaults = ExportConfig()
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX or OpenVINO IR with a pre-processing sidecar",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("weights", help="native checkpoint, training run directory, or a model name (random weights)")
    parser.add_argument("--format", choices=("onnx", "openvino"), default=defaults.format, help="default: %(default)s")
    parser.add_argument("--out", required=True, type=Path, help="target file (.onnx or .xml)")
    parser.add_argument("--input-shape", type=positive_int, nargs=4, metavar=("N", "C", "H", "W"),
                        default=list(defaults.input_shape), help="default: %(default)s")  # fmt: skip
    parser.add_argument("--dynamic", action="store_true", default=defaults.dynamic,
                        help="symbolic batch/height/width; traced at a small size (less export memory)")  # fmt: skip
    parser.add_argument("--output", choices=("logits", "softmax", "argmax"), default=defaults.output,
                        help="float logits/probabilities (N,K,H,W) or uint8 ids (N,H,W); default %(default)s")
    parser.add_argument("--scales", type=scale_series, default=defaults.scales,
                        help="scales fused inside the graph (MscaleOCR), e.g. 0.5,1.0,2.0; default: the model's own")
    parser.add_argument("--opset", type=positive_int, default=defaults.opset, help="ONNX opset (default %(default)s)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=defaults.precision,
                        help="OpenVINO precision hint recorded in the sidecar; auto: bf16 where this CPU runs it "
                             "natively, else fp32 (default %(default)s)")  # fmt: skip
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=None,
                        help="compare ONNX Runtime with PyTorch after export (default: on with --dynamic)")
    parser.set_defaults(func=run, validate=validate)


def validate(args: argparse.Namespace) -> None:
    """Refuse an input shape or scales the export could not trace, before the model is loaded.

    Raises:
        ConfigError: a channel count other than 3, a side above the size limit (scales included), an output path
            that is a folder.
    """
    from attnseg.cli.arguments import check_output_file
    from attnseg.errors import ConfigError
    from attnseg.inference.scales import MAX_SIDE, check_scaled_input

    shape = tuple(args.input_shape)
    if shape[1] != 3:
        raise ConfigError(f"--input-shape: the channel count must be 3, got {shape[1]}")
    if max(shape[2:]) > MAX_SIDE:
        raise ConfigError(f"--input-shape {' '.join(map(str, shape))}: more than the {MAX_SIDE} px per side "
                          "attnseg allows")  # fmt: skip
    if args.scales is not None:
        try:
            check_scaled_input(shape[2], shape[3], tuple(args.scales), "--input-shape")
        except ConfigError as error:
            raise ConfigError(f"--scales: {error}") from None
    check_output_file(args.out, "--out")


def load_export_model(weights: str):
    """(model, checkpoint sidecar or None, description) for a checkpoint, a run directory or a model name."""
    from attnseg.errors import WeightsError
    from attnseg.inference.predictor import resolve_weights
    from attnseg.models import create_model, list_models
    from attnseg.weights import checkpoint_paths, load_model

    path = Path(weights)
    if path.exists() or checkpoint_paths(path)[1].is_file():
        model, sidecar = load_model(resolve_weights(path))
        return model, sidecar, f"{path} ({sidecar.model})"
    if weights in list_models():
        return create_model(weights).eval(), {"model": weights}, f"{weights} (random weights)"
    raise WeightsError(f"{weights}: neither a checkpoint, a run directory nor a registered model name")


def run(args: argparse.Namespace) -> int:
    from attnseg.errors import ConfigError
    from attnseg.export.onnx import export_onnx

    model, sidecar, description = load_export_model(args.weights)
    shape = tuple(args.input_shape)
    options = dict(dynamic=args.dynamic, output=args.output, scales=args.scales, opset=args.opset, sidecar=sidecar,
                   verify=args.verify)  # fmt: skip
    start = time.perf_counter()
    try:
        if args.format == "openvino":
            from attnseg.export.openvino import export_openvino
            from attnseg.hardware import announce, resolve_openvino_precision

            choice = resolve_openvino_precision(args.precision, what="--precision")
            announce(choice)
            result = export_openvino(model, args.out, shape, precision=choice.precision, **options)
            target = args.out if args.out.suffix == ".xml" else args.out.with_suffix(".xml")
        else:
            result = export_onnx(model, args.out, shape, **options)
            target = args.out
    except ValueError as error:
        raise ConfigError(f"export: {error}") from None
    print(f"exported {description} to {target} ({args.format}, input {result.input_shape}, output {result.output} "
          f"{result.output_dtype}, scales {result.scales}) in {time.perf_counter() - start:.1f} s")  # fmt: skip
    for check in result.extra.get("parity", []):
        measure = (f"relative error {check['relative_error']:.2e}" if "relative_error" in check
                   else f"label agreement {check['agreement']:.4%}")  # fmt: skip
        print(f"  verified against PyTorch at {check['shape']}: {measure}")
    print(f"sidecar: {target}.json")
    return 0
