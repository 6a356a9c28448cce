"""`attnseg print-config CONFIG [section.key=value ...]`: show the resolved configuration."""

from __future__ import annotations

import argparse

from attnseg.config import load_config, to_yaml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "print-config",
        help="print the resolved experiment config (base + file + overrides)",
        description="Resolve an experiment YAML file with its base and dotted overrides and print it.",
    )
    parser.add_argument("config", help="experiment YAML file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=0.01 eval.scales=[0.5,1.0,2.0]")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(to_yaml(load_config(args.config, args.overrides)), end="")
    return 0
