"""``vistool layers``: the layer table of a model."""

from __future__ import annotations

import argparse
import json

from ..core.errors import LayerError
from .options import add_model_options, load


def add_parser(sub) -> None:
    p = sub.add_parser("layers", help="print the layer table of a model",
                       description="Print every layer with its type, output shape and "
                                   "parameter count (one dry forward pass).")
    add_model_options(p)
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {name, type, output_shape, params, calls}")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load(args)
    rows = loaded.layers
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=1))
        return 0
    header = ("name", "type", "output shape", "params")
    table = [(r.name, r.type, "x".join(map(str, r.output_shape)) if r.output_shape else "-",
              f"{r.params:,}") for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in table:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))
    total = sum(p.numel() for p in loaded.model.parameters())
    size = "x".join(map(str, loaded.input_size))
    try:
        default = loaded.default_layer
    except LayerError:
        default = "none (no layer with a spatial output)"
    print(f"\n{len(rows)} layers, {total:,} parameters, input {size}, "
          f"default target layer: {default}")
    return 0
