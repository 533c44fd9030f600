"""Cost of recording layer outputs: ``record`` on 5 layers vs a plain forward pass.

Side by side in one run, interleaved repeats, median times, printed as a ratio.
Target (issue 2): recording 5 layers of resnet50 (batch 8, 224², CPU) <= 1.10x plain.
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from benchutil import report, timeit

from vistool import record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50", help="torchvision model name")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", nargs="+",
                        default=["layer1", "layer2", "layer3", "layer4", "layer4.2.conv3"])
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = torchvision.models.get_model(args.model, weights=None).eval().to(device)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)

    def plain():
        with torch.no_grad():
            model(x)

    def recorded():
        with torch.no_grad(), record(model, args.layers):
            model(x)

    times = timeit({"plain forward": plain, f"record {len(args.layers)} layers": recorded},
                   args.repeats, device)
    report(f"{args.model}, batch {args.batch_size}, {args.size}², {device}, median of "
           f"{args.repeats}", times, "plain forward")


if __name__ == "__main__":
    main()
