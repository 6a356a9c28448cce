"""`attnseg prepare {cityscapes,autolabelled,mapillary} ROOT`: convert a downloaded dataset for training."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="convert a downloaded dataset (trainId label files, file lists, checks)",
        description="One-off dataset conversion. Every image and label is checked first; bad files are all listed "
        "(and written to ROOT/prepare_errors.txt) and nothing is converted. Re-running skips files that are "
        "already up to date and re-checks only files that changed.",
    )
    kinds = parser.add_subparsers(dest="dataset", metavar="DATASET")
    kinds.required = True
    workers = min(8, os.cpu_count() or 1)

    city = kinds.add_parser("cityscapes", help="gtFine polygons/labelIds -> *_labelTrainIds.png + train/val/test.txt")
    city.add_argument("root", help="Cityscapes root holding leftImg8bit/ and gtFine/")
    city.add_argument("--workers", type=int, default=workers, help=f"processes (default: {workers})")
    city.add_argument("--instances", action="store_true", help="also write 16-bit *_instanceTrainIds.png")
    city.add_argument("--coarse", action="store_true", help="also convert gtCoarse/ if present")
    city.add_argument("--overwrite", action="store_true", help="convert files that are already up to date too")
    city.add_argument("--no-progress", action="store_true", help="no progress bars")

    auto = kinds.add_parser("autolabelled", help="refinement_final/ (labelIds) -> convert_autolabelled/ (trainIds)")
    auto.add_argument("root", help="Cityscapes root holding refinement_final/ and leftImg8bit_trainextra/")
    auto.add_argument("--workers", type=int, default=workers, help=f"processes (default: {workers})")
    auto.add_argument("--overwrite", action="store_true", help="convert files that are already up to date too")
    auto.add_argument("--no-progress", action="store_true", help="no progress bars")

    vistas = kinds.add_parser("mapillary", help="check a Mapillary Vistas v1.2 tree (labels are used as they are)")
    vistas.add_argument("root", help="Vistas root holding training/ and validation/")
    vistas.add_argument("--all-values", action="store_true",
                        help="decode every image and label (default: sizes of all, values of 32 per split)")
    vistas.add_argument("--workers", type=int, default=workers, help=f"processes (default: {workers})")
    vistas.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        from attnseg.errors import ConfigError

        raise ConfigError(f"--workers {args.workers}: must be at least 1")
    progress = not args.no_progress
    if args.dataset == "cityscapes":
        from attnseg.data.prepare import prepare_cityscapes

        print(prepare_cityscapes(args.root, workers=args.workers, progress=progress, instances=args.instances,
                                 include_coarse=args.coarse, overwrite=args.overwrite))  # fmt: skip
    elif args.dataset == "autolabelled":
        from attnseg.data.prepare import prepare_autolabelled

        print(prepare_autolabelled(args.root, workers=args.workers, progress=progress, overwrite=args.overwrite))
    else:
        from attnseg.data.prepare import check_mapillary

        # Vistas labels need no conversion: the 65 -> 19 Cityscapes table is applied when loading. Checking the tree
        # here still catches a wrong layout or a corrupt label before a long pre-training run.
        print(check_mapillary(args.root, workers=args.workers, progress=progress, all_values=args.all_values))
    return 0
