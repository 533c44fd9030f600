"""Cost of recording layer outputs: ``record`` on 5 layers vs a plain forward pass.

Side by side in one run, interleaved repeats, median times, printed as a ratio.
Target (issue 2): recording 5 layers of resnet50 (batch 8, 224², CPU) <= 1.10x plain.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

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

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def plain():
        with torch.no_grad():
            model(x)

    def recorded():
        with torch.no_grad(), record(model, args.layers):
            model(x)

    cases = {"plain forward": plain, f"record {len(args.layers)} layers": recorded}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in cases.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain forward"])
    print(f"{args.model}, batch {args.batch_size}, {args.size}², {device}, "
          f"median of {args.repeats}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<20} {med * 1000:9.1f} ms   {med / base:5.3f}x")


if __name__ == "__main__":
    main()
