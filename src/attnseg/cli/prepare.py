"""`attnseg prepare {cityscapes,autolabelled,mapillary} ROOT`: convert a downloaded dataset for training."""

from __future__ import annotations

import argparse
import os

from attnseg.errors import DatasetError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="convert a downloaded dataset (trainId label files, file lists, checks)",
        description="One-off dataset conversion. Re-running skips files that are already up to date.",
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

    auto = kinds.add_parser("autolabelled", help="refinement_final/ (labelIds) -> convert_autolabelled/ (trainIds)")
    auto.add_argument("root", help="Cityscapes root holding refinement_final/ and leftImg8bit_trainextra/")
    auto.add_argument("--workers", type=int, default=workers, help=f"processes (default: {workers})")
    auto.add_argument("--overwrite", action="store_true", help="convert files that are already up to date too")

    vistas = kinds.add_parser("mapillary", help="check a Mapillary Vistas v1.2 tree (labels are used as they are)")
    vistas.add_argument("root", help="Vistas root holding training/ and validation/")
    vistas.add_argument("--all-values", action="store_true", help="read every label (default: a sample of 32)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.dataset == "cityscapes":
        from attnseg.data.prepare import prepare_cityscapes

        print(prepare_cityscapes(args.root, workers=args.workers, instances=args.instances,
                                 include_coarse=args.coarse, overwrite=args.overwrite))  # fmt: skip
    elif args.dataset == "autolabelled":
        from attnseg.data.prepare import prepare_autolabelled

        print(prepare_autolabelled(args.root, workers=args.workers, overwrite=args.overwrite))
    else:
        from attnseg.data.mapillary import MapillaryDataset

        # Vistas labels need no conversion: the 65 -> 19 Cityscapes table is applied when loading. Checking the tree
        # here still catches a wrong layout or a corrupt label before a long pre-training run.
        found = 0
        for split in ("train", "val"):
            try:
                dataset = MapillaryDataset(args.root, split, classes="vistas")
            except DatasetError:
                if split == "val":
                    continue
                raise
            checks = dataset.validate("all" if args.all_values else "sample", sample_size=32, progress=True)
            found += len(dataset)
            print(f"{split}: {len(dataset)} images, sizes checked: {checks['sizes']}, "
                  f"values checked: {checks['values']}")
        print(f"Mapillary Vistas at {args.root}: {found} labelled images, ready (no conversion needed)")
    return 0
