"""`attnseg autolabel WEIGHTS IMAGES... --out ROOT`: a teacher's confident pixels as training labels.

WEIGHTS is a training run directory or a native checkpoint; IMAGES are image files, folders (recursively), globs, or
a Cityscapes root (its ``train_extra`` images). Each image is labelled with the teacher's best inference: by default
the run's ``eval`` recipe (scales, hierarchical fusion, flip) when WEIGHTS is a run directory, else the model's own
scales with flip; ``--scales``/``--flip``/``--slide`` change it. A pixel keeps the argmax class where the fused
probability reaches ``--threshold`` (default 0.5, NVIDIA's ``--custom_coarse_prob`` for its released auto-labels)
and is ignored (255) elsewhere.

ROOT is a Cityscapes root: the labels go to ``convert_autolabelled/<city>/`` (trainIds, with a ``_prob.png``
confidence map), images from elsewhere are linked into ``leftImg8bit_trainextra/leftImg8bit/train_extra/<city>/``,
and ``train_extra.txt`` lists the pairs, so ``data.coarse: autolabelled`` trains on them with no conversion.
``convert_autolabelled/autolabel.json`` records the teacher, the recipe, the threshold and the label coverage per image
and per class. Re-running skips images already labelled; under ``torchrun`` each process labels its share.
``--refine-coarse`` keeps a gtCoarse label where it has a class and lets the teacher fill the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from attnseg.cli.arguments import add_recipe_arguments
    from attnseg.cli.predict import add_tiling_arguments
    from attnseg.inference.autolabel import DEFAULT_THRESHOLD

    parser = subparsers.add_parser(
        "autolabel",
        help="label unlabelled images with a trained teacher (hard labels where it is confident)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("weights", help="training run directory or native checkpoint (the teacher)")
    parser.add_argument("inputs", nargs="+", help="image files, folders, globs, or a Cityscapes root (train_extra)")
    parser.add_argument("--out", required=True, type=Path, help="Cityscapes root the labels are written to")
    parser.add_argument("--threshold", type=_probability, default=DEFAULT_THRESHOLD,
                        help="minimum fused probability of a labelled pixel (default %(default)s)")
    parser.add_argument("--refine-coarse", action="store_true",
                        help="keep gtCoarse classes of ROOT/gtCoarse/train_extra; the teacher fills the rest")
    parser.add_argument("--no-confidence", action="store_true", help="do not write the _prob.png confidence maps")
    parser.add_argument("--truth", type=Path, default=None,
                        help="Cityscapes root with the images' true gtFine labels: report pseudo-label accuracy")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_recipe_arguments(parser)
    add_tiling_arguments(parser)
    parser.set_defaults(func=run)


def _probability(text: str) -> float:
    from attnseg.cli.arguments import UsageError

    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--threshold {text}: not a number") from None
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--threshold {text}: a probability in [0, 1]")
    return value


def _input_files(inputs: list[str]) -> list[Path]:
    """Image files of the inputs; a Cityscapes root stands for its train_extra images."""
    from attnseg.cli.predict import collect_inputs
    from attnseg.errors import ConfigError

    expanded = []
    for text in inputs:
        extra = Path(text) / "leftImg8bit_trainextra" / "leftImg8bit" / "train_extra"
        expanded.append(str(extra) if extra.is_dir() else text)
    collection = collect_inputs(expanded)
    files = [item.path for item in collection.items if not item.is_video]
    if not files:
        reasons = "; ".join(f"{text}: {reason}" for text, reason in collection.failed) or "no image files"
        raise ConfigError(f"{' '.join(inputs)}: nothing to label ({reasons})")
    for text, reason in collection.failed:
        print(f"attnseg autolabel: skipped {text}: {reason}", file=sys.stderr)
    return files


def _recipe_defaults(args: argparse.Namespace) -> None:
    """The run's eval recipe (scales, fusion, flip) for the options not given; flip on otherwise."""
    from attnseg.inference.predictor import run_config_path

    run_config = run_config_path(args.weights)
    if run_config is not None:
        from attnseg.config import load_config

        eval_cfg = load_config(run_config, []).eval
        args.scales = args.scales if args.scales is not None else tuple(eval_cfg.scales)
        args.multi_scale = args.multi_scale or eval_cfg.multi_scale
        args.fusion = args.fusion or eval_cfg.fusion
        args.flip = eval_cfg.flip if args.flip is None else args.flip
    elif args.flip is None:
        args.flip = True


def _label_reader(folders: list[Path], quality: str):
    """item -> its Cityscapes label of `quality` (gtFine, gtCoarse) in trainIds from the first of `folders` that has
    it (labelTrainIds, else labelIds mapped), or None."""
    from attnseg.data.base import read_label_png
    from attnseg.data.labels import label_ids_to_train_ids

    def read(item):
        for folder in folders:
            train_ids = folder / item.city / f"{item.frame}_{quality}_labelTrainIds.png"
            label_ids = folder / item.city / f"{item.frame}_{quality}_labelIds.png"
            if train_ids.is_file():
                return read_label_png(train_ids)
            if label_ids.is_file():
                return label_ids_to_train_ids(read_label_png(label_ids))
        return None

    return read


def _truth_reader(root: Path | None):
    """item -> its gtFine label under ROOT/gtFine/<any split>/ (for --truth), or None."""
    if root is None:
        return None
    from attnseg.errors import ConfigError

    folders = sorted(path for path in (root / "gtFine").glob("*") if path.is_dir())
    if not folders:
        raise ConfigError(f"--truth {root}: no gtFine/<split>/ folders")
    return _label_reader(folders, "gtFine")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from attnseg.cli.predict import _PlanLog, build_predictor
    from attnseg.data.prepare import write_extra_list
    from attnseg.engine import distributed
    from attnseg.fileio import remove_stale_temporaries
    from attnseg.inference.autolabel import collect_records, items_from_files, label_items, write_sidecar

    context = distributed.init_distributed("cpu" if args.device == "cpu" else "auto")
    if context.is_distributed and context.device.type == "cuda":
        args.device = str(context.device)  # one GPU per process
    items = items_from_files(_input_files(args.inputs))
    truth = _truth_reader(args.truth)
    _recipe_defaults(args)
    if context.is_main:
        remove_stale_temporaries(args.out / "convert_autolabelled")
    predictor = build_predictor(args, _PlanLog())
    recipe = predictor.recipe

    def probabilities(path: Path):
        return predictor(path, return_probabilities=True)[1]

    from attnseg.cli import notes

    notes.flush()
    mine = items[context.rank :: context.world_size]
    bar = (lambda it: tqdm(it, desc="autolabel", unit="image", dynamic_ncols=True, disable=args.no_progress
                           or not context.is_main))  # fmt: skip
    summary = label_items(mine, args.out, probabilities, predictor.num_classes, threshold=args.threshold,
                          coarse_label=_label_reader([args.out / "gtCoarse" / "train_extra"], "gtCoarse")
                          if args.refine_coarse else None, true_label=truth,
                          write_confidence=not args.no_confidence, progress=bar)  # fmt: skip
    distributed.barrier()
    if context.is_main:
        records = collect_records(args.out, items, predictor.num_classes, truth)
        sidecar = write_sidecar(args.out, records, predictor.class_names, {
            "teacher": str(args.weights), "threshold": args.threshold, "scales": list(recipe.scales),
            "multi_scale": recipe.multi_scale, "flip": recipe.flip, "fusion": recipe.fusion,
            "refine_coarse": bool(args.refine_coarse), "precision": recipe.precision,
        })  # fmt: skip
        write_extra_list(args.out)
        coverage = sum(r["labelled"] for r in records.values()) / max(sum(r["pixels"] for r in records.values()), 1)
        accuracy = json.loads(sidecar.read_text()).get("accuracy_against_truth")
        checked = f", {accuracy:.1%} of labelled pixels correct against --truth" if accuracy is not None else ""
        print(f"labelled {summary.labelled} images ({summary.skipped} already done) into {args.out}: "
              f"coverage {coverage:.1%} at threshold {args.threshold}{checked}; {sidecar}")  # fmt: skip
    distributed.cleanup()
    return 0
