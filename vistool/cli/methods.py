"""``vistool methods``: the CAM methods ``--method`` accepts, what each needs and its options."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("methods", help="list the CAM methods, what each needs and its options",
                       description="List the CAM methods of 'vistool gradcam --method' and "
                                   "'vistool evaluate --methods' (the built-in ones and those "
                                   "installed under the vistool.cams entry points): what each "
                                   "needs, the forward passes it adds, whether --eigen-smooth "
                                   "applies, its own options (--option NAME=VALUE) and the "
                                   "implementation its tests compare with.")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=run)


def describe(method) -> dict:
    """One method's row: its specification in words."""
    needs = [word for flag, word in ((method.gradients, "gradients"),
                                     (method.class_target, "a class index"),
                                     (method.head == "require", "a GAP + linear head"))
             if flag]
    return {"name": method.name, "summary": method.summary, "needs": needs,
            "closed_form": method.head != "never", "forwards": method.forwards,
            "eigen_smooth": method.eigen_smooth, "fuse": method.fuse,
            "options": {name: {"default": param.default, "help": param.help,
                               **({"choices": list(param.choices)} if param.choices else {})}
                        for name, param in method.params.items()},
            "reference": method.reference}


def run(args: argparse.Namespace) -> int:
    from ..explainers.cams import methods

    rows = [describe(method) for method in methods().values()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        print(f"{row['name']}: {row['summary']}")
        extras = [f"needs {', '.join(row['needs'])}" if row["needs"] else "needs no gradients",
                  f"extra forwards: {row['forwards']}",
                  "--eigen-smooth applies" if row["eigen_smooth"] else "no --eigen-smooth"]
        print("    " + "; ".join(extras))
        for name, option in row["options"].items():
            print(f"    --option {name}=... ({option['default']}): {option['help']}")
        if row["reference"]:
            print(f"    compared with {row['reference']}")
    return 0
