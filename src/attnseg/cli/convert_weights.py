"""`attnseg convert-weights SRC OUT`: turn a released checkpoint into a native attnseg checkpoint.

Reads an NVIDIA ``.pth``, PaddleSeg ``.pdparams`` or semseg ``.pth`` (without running code from it), remaps it onto
the matching attnseg model, loads it strictly and writes ``OUT.safetensors`` + ``OUT.json`` (model name, class
names, palette and the preprocessing the source was trained with).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import torch

from attnseg.data.statistics import IMAGENET_MEAN, IMAGENET_STD
from attnseg.errors import WeightsError
from attnseg.weights import SOURCES, CheckpointFormat, convert_state_dict, detect_source, load_state_dict_report
from attnseg.weights import read_checkpoint_file, save_checkpoint
from attnseg.weights.formats import find_format

_HRNET_VARIANT_BY_WIDTH = {48: "w48", 32: "w32", 18: "w18"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert-weights",
        help="convert an NVIDIA / PaddleSeg / semseg checkpoint into a native .safetensors + .json checkpoint",
        description="Read a released checkpoint safely, remap it onto the matching attnseg model (strict load) and "
        "write OUT.safetensors plus the OUT.json sidecar (model, classes, palette, preprocessing).",
    )
    parser.add_argument("src", type=Path, help="source checkpoint (.pth, .pdparams, .safetensors)")
    parser.add_argument("out", type=Path, help="output base name; writes OUT.safetensors and OUT.json")
    parser.add_argument(
        "--from", dest="source", default="auto", choices=("auto", *SOURCES),
        help="layout of SRC (default: detected from its keys)",
    )  # fmt: skip
    parser.add_argument("--model", help="attnseg model name (default: inferred from the checkpoint layout)")
    parser.add_argument("--num-classes", type=int, help="classes of the checkpoint (default: from its classifier)")
    parser.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"), help="override input mean (0-255)")
    parser.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"), help="override input std (0-255)")
    parser.add_argument("--classes-from", type=Path, default=None, metavar="VISTAS_CONFIG",
                        help="class names and colours from a Mapillary Vistas config (config.json, config_v2.0.json); "
                             "default: Cityscapes for 19 classes, Vistas v1.2 for 65")  # fmt: skip
    parser.set_defaults(func=run)


def model_family(state: dict, source: str, record: CheckpointFormat | None) -> str:
    """``"mscale_ocr"`` or ``"psanet"`` for a source state dict (as read from the file) of format ``record``."""
    if record is not None:
        return record.family
    keys = [str(k).removeprefix("module.") for k in state]
    return "mscale_ocr" if any(k.startswith("ocr.") for k in keys) else "psanet"


def infer_model(state: dict, converted: dict[str, torch.Tensor], source: str, family: str) -> tuple[str, dict]:
    """Builder name and keyword arguments (besides ``num_classes``) that fit a converted checkpoint."""
    if family == "psanet":
        if source == "semseg":
            from attnseg.models.psanet import semseg_psanet_build_args

            name, kwargs = semseg_psanet_build_args(state)
            kwargs.pop("num_classes", None)
            return name, {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        if source == "paddle":
            return "psanet_r50_vd", {}
        raise WeightsError("cannot tell which PSANet this native state dict belongs to; pass --model")
    branch_conv = converted.get("backbone.stage2.0.branches.0.0.conv1.weight")
    width = None if branch_conv is None else int(branch_conv.shape[0])
    variant = _HRNET_VARIANT_BY_WIDTH.get(width)
    if "backbone.stage2.0.branches.0.2.conv1.weight" not in converted and width == 18:
        variant = "w18_small"  # two blocks per branch instead of four
    if variant is None:
        raise WeightsError(f"HRNet branch width {width} matches no MscaleOCR builder; pass --model")
    prefix = "mscale_ocr_hrnet_" if any(k.startswith("scale_attn.") for k in converted) else "ocr_hrnet_"
    return prefix + variant, {}


def source_model_kwargs(source: str, model_name: str) -> dict:
    """Builder arguments that reproduce the source's own forward beyond its weights (recorded in the sidecar).

    PaddleSeg's MscaleOCRNet resizes inputs with ``scale_factor`` as given (samples 1/scale apart), NVIDIA's with
    the factor recomputed from the output size; they differ on sizes where ``side * scale`` is not an integer.
    """
    if source == "paddle" and model_name.startswith("mscale_ocr_"):
        return {"resize_recompute_scale_factor": False}
    return {}


def infer_num_classes(converted: dict[str, torch.Tensor]) -> int:
    for key in ("ocr.cls_head.weight", "head.classifier.weight"):
        if key in converted:
            return int(converted[key].shape[0])
    raise WeightsError("no classifier found in the checkpoint; pass --num-classes")


def class_metadata(num_classes: int, classes_from: Path | None = None) -> tuple[list[str], np.ndarray]:
    """Names and colours of a converted checkpoint's classes: from a Vistas config when given, else Cityscapes' for
    19 classes (the Cityscapes releases), Vistas v1.2's for 65 (NVIDIA's Mapillary release), else numbered greys.

    Raises:
        WeightsError: the config defines another number of evaluated classes than the checkpoint has.
    """
    from attnseg.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, fallback_class_table
    from attnseg.data.mapillary import VISTAS_V12, VistasLabelSet, read_label_set

    label_set: VistasLabelSet | None = None
    if classes_from is not None:
        version = "v2.0" if "v2.0" in classes_from.name else "v1.2"
        if not classes_from.is_file():
            raise WeightsError(f"--classes-from {classes_from}: no such file")
        folder_config = classes_from.parent / ("config_v2.0.json" if version == "v2.0" else "config.json")
        if classes_from.resolve() != folder_config.resolve():
            raise WeightsError(f"--classes-from {classes_from}: name it config.json (v1.2) or config_v2.0.json")
        label_set = read_label_set(classes_from.parent, version)
    elif num_classes == VISTAS_V12.num_classes:
        label_set = VISTAS_V12
    if label_set is not None:
        if label_set.num_classes != num_classes:
            raise WeightsError(f"--classes-from {classes_from}: {label_set.num_classes} evaluated classes, but the "
                               f"checkpoint has {num_classes}")  # fmt: skip
        return list(label_set.class_names), label_set.palette
    if num_classes == len(CITYSCAPES_CLASSES):
        return list(CITYSCAPES_CLASSES), np.asarray(CITYSCAPES_PALETTE)
    return fallback_class_table(num_classes)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(args: argparse.Namespace) -> int:
    from attnseg.models import create_model, list_models

    state = read_checkpoint_file(args.src)
    source = detect_source(state) if args.source == "auto" else args.source
    if source == "hrnet_imagenet":
        raise WeightsError(f"{args.src}: an ImageNet HRNet backbone is an initialisation, not a segmentation model; "
                           "use it as the training config's pretrained weights")  # fmt: skip
    record = find_format(state, source)
    family = model_family(state, source, record)
    try:
        converted = convert_state_dict(state, source)
    except WeightsError as error:
        raise WeightsError(f"{args.src}: {error}") from error

    if args.model:
        name, kwargs = args.model, {}
    else:
        name, kwargs = infer_model(state, converted, source, family)
    if name not in list_models():
        raise WeightsError(f"model {name!r} is not registered; available: {', '.join(list_models())}")
    kwargs = {**kwargs, **source_model_kwargs(source, name)}
    num_classes = args.num_classes or infer_num_classes(converted)
    model = create_model(name, num_classes=num_classes, **kwargs)
    try:
        report = load_state_dict_report(model, converted, path=str(args.src), source=source, strict=True)
    except WeightsError as error:
        raise WeightsError(f"{args.src} does not fit {name} with {num_classes} classes: {error}") from error

    default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if record is None else (record.mean, record.std)
    reference = "" if record is None else record.reference
    mean = list(args.mean) if args.mean else list(default_mean)
    std = list(args.std) if args.std else list(default_std)
    class_names, palette = class_metadata(num_classes, args.classes_from)
    extra = {
        "converted_from": args.src.name,
        "source_sha256": _sha256(args.src),
        "source_layout": source,
        "reference": reference,
    }
    weights_path, sidecar_path = save_checkpoint(
        args.out, model, name, kwargs, class_names, palette, mean, std, extra=extra
    )
    parameters = sum(p.numel() for p in model.parameters())
    print(f"source      {args.src} ({source} layout, {reference or family})")
    print(f"model       {name} with {num_classes} classes, {parameters / 1e6:.2f} M parameters")
    print(f"loaded      {len(report.loaded)}/{len(model.state_dict())} state-dict entries (strict)")
    print(f"preprocess  RGB 0-255, mean {mean}, std {std}")
    print(f"wrote       {weights_path}")
    print(f"            {sidecar_path}")
    return 0
