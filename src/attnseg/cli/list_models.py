"""`attnseg list-models`: the registered model names, one per line, with their parameter counts."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "list-models",
        help="list the model names accepted by configs and --model",
        description="Print every registered model with its parameter count (19 classes).",
    )
    parser.add_argument("--names-only", action="store_true", help="print only the names (no models are built)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from attnseg.models import create_model, list_models

    names = list_models()
    if args.names_only:
        print("\n".join(names))
        return 0
    width = max(map(len, names), default=0)
    for name in names:
        # Building on the meta device allocates no memory, so even the 70 M-parameter models list instantly.
        with torch.device("meta"):
            model = create_model(name, num_classes=19)
        parameters = sum(p.numel() for p in model.parameters())
        print(f"{name:<{width}}  {parameters / 1e6:7.2f} M parameters")
    return 0

