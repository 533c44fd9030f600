"""``vistool models``: the names ``--model`` accepts."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list the model names --model accepts",
                       description="List torchvision classification and semantic segmentation "
                                   "models and vistool's book models. --model also takes "
                                   "checkpoints and file.py:factory.")
    p.add_argument("--json", action="store_true", help="print {group: [names]} as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.zoo import list_models

    groups = list_models()
    if args.json:
        print(json.dumps(groups, indent=1))
        return 0
    for group, names in groups.items():
        print(f"{group} ({len(names)}):")
        print("  " + "\n  ".join(names))
    return 0
