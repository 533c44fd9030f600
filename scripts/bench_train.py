"""Training throughput: vistool's loop vs the textbook's bare loop, side by side in one run.

Same model (a recipe's), same data, same batch size and optimiser; samples/s of the
training phase (validation excluded), median over epochs after a warm-up epoch, printed
as a ratio. Target (issue 3): >= 0.95x the bare loop on CPU. With ``--device cuda`` it
also reports the effect of AMP and channels-last.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from trainers.data import load_data
from trainers.models import get_model, model_defaults
from trainers.recipes import RECIPES, run_recipe


def bare_loop(recipe_name: str, dataset: str, epochs: int, batch: int, device: str,
              seed: int) -> float:
    """The textbook loop: DataLoader(shuffle=True), zero_grad, forward, loss, backward, step."""
    recipe = RECIPES[recipe_name]
    defaults = model_defaults(recipe.arch)
    size = tuple(defaults["input_size"])
    data = load_data(dataset, size, defaults["mean"], defaults["std"], augment=recipe.augment,
                     seed=seed)
    torch.manual_seed(seed)
    model = get_model(recipe.arch, num_classes=len(data.classes), in_channels=size[0],
                      image_size=size[1], **recipe.arch_kwargs).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr,
                                  weight_decay=recipe.weight_decay)
    loader = DataLoader(data.train, batch_size=batch, shuffle=True, drop_last=True)
    rates = []
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        rates.append(len(loader) * batch / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def vistool_loop(recipe_name: str, dataset: str, epochs: int, batch: int, device: str,
                 seed: int, **options) -> float:
    with tempfile.TemporaryDirectory() as out:
        result = run_recipe(recipe_name, Path(out), dataset=dataset, epochs=epochs,
                            batch_size=batch, device=device, seed=seed, progress=False,
                            log=lambda _line: None, **options)
    return statistics.median(h["samples_per_s"] for h in result["history"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="simplecnn-cifar10", help="a classifier recipe")
    parser.add_argument("--dataset", default="shapes", help="data that needs no download")
    parser.add_argument("--epochs", type=int, default=4, help="epochs (the first is warm-up)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    common = (args.recipe, args.dataset, args.epochs, args.batch_size, args.device, args.seed)
    rates = {"bare textbook loop": bare_loop(*common), "vistool loop": vistool_loop(*common)}
    if args.device.startswith("cuda"):
        rates["vistool loop --amp"] = vistool_loop(*common, amp=True)
        rates["vistool loop, no channels-last"] = vistool_loop(*common, channels_last=False)
    base = rates["bare textbook loop"]
    print(f"{args.recipe} on {args.dataset}, batch {args.batch_size}, {args.device}, "
          f"median samples/s over epochs 2..{args.epochs}")
    for name, rate in rates.items():
        print(f"  {name:<32} {rate:9.1f} samples/s   {rate / base:5.3f}x bare")


if __name__ == "__main__":
    main()
