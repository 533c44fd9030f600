"""Style transfer (Gatys) speed, side by side in one run, printed as ratios.

1. Per-iteration cost. ``vistool.style_transfer`` (VGG19, SIZE², L-BFGS, the paper's layers:
   content conv4_2, style conv1_1 ... conv5_1) against a plain implementation in the PyTorch
   tutorial's structure, written below: an ``nn.Sequential`` cut after the last loss layer
   with loss modules inserted after the paper's layers (features.21; features.0, 5, 10, 19,
   28), the style Grams precomputed, a closure with ``.backward()``. Same images, weights
   and evaluations; one evaluation's cost is the time between the starts of two consecutive
   forward passes (forward, backward, the L-BFGS update; a forward pre-hook stamps them),
   set-up excluded for both, each run's first interval dropped (warm-up), in wall-clock and
   in the thread's CPU time (which other processes on a busy machine disturb less). The
   ratio is the median of the per-round ratios of interleaved rounds (vistool first in odd
   rounds, the tutorial first in even ones).
   The tutorial's loss is multiplied by 1e4 so that torch's absolute tolerances let its
   L-BFGS work (at the loss scale of random weights it would otherwise stop at once).
2. Coarse to fine. ``style_transfer`` at FINE² from the content, STEPS evaluations, against
   ``scales=(FINE/2, FINE)`` with STEPS evaluations per scale: the time the coarse-to-fine
   run needs until a FINE² evaluation is at or below the single-scale run's final loss,
   over the single-scale run's whole time; and the same in evaluations (a coarse one
   counted as 1/4), which a busy machine's drift between the two runs does not change.
3. Feed-forward (Johnson et al.). One forward pass of ``TransformerNet`` (Johnson's size:
   width 32, 5 residual blocks; its weights do not change its speed) on a FINE² image, the
   median of ROUNDS after a warm-up, against Gatys at FINE²: the median time of one
   evaluation over a few evaluations, times the default 300 evaluations (the whole run is
   not timed: at 512² it takes many minutes on a CPU).

The weights are random (``--weights none``) unless ``--weights default`` finds ImageNet's
in the torch hub cache; a speed comparison does not depend on them. ``--quick`` shrinks
the sizes (64² and 64 -> 128²) and the steps for a first look.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data as skdata
from torch import nn

import vistool
from vistool.synthesize.fast_style import TransformerNet, stylize
from vistool.synthesize.style import style_transfer

CONTENT_INDEX, STYLE_INDICES = 21, (0, 5, 10, 19, 28)  # conv4_2; conv1_1 ... conv5_1
STYLE_WEIGHT, TUTORIAL_SCALE = 1e6, 1e4


def picture(name: str, size: int, device: torch.device) -> torch.Tensor:
    array = getattr(skdata, name)()
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, 2)
    image = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(size, size), mode="bilinear",
                         antialias=True).clamp(0, 1).to(device)


class Clock:
    """Stamps (wall, thread CPU) time at the start of every forward pass of a module."""

    def __init__(self):
        self.stamps: list[tuple[float, float]] = []

    @contextlib.contextmanager
    def on(self, module: nn.Module):
        self.stamps = []
        handle = module.register_forward_pre_hook(
            lambda *_: self.stamps.append((time.perf_counter(), time.thread_time())))
        try:
            yield
        finally:
            handle.remove()

    def per_evaluation(self, first: int, count: int) -> np.ndarray:
        """(count - 2, 2) seconds between consecutive evaluations, from the forward at
        ``first``, the first interval dropped (warm-up)."""
        return np.diff(np.array(self.stamps[first:first + count]), axis=0)[1:]


# --- the plain implementation (the PyTorch tutorial's structure) ---------------------------

def gram(x: torch.Tensor) -> torch.Tensor:
    a, b, c, d = x.size()
    features = x.view(a * b, c * d)
    return (features @ features.t()).div(a * b * c * d)


class ContentLoss(nn.Module):
    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target, self.loss = target.detach(), None

    def forward(self, x):
        self.loss = F.mse_loss(x, self.target)
        return x


class StyleLoss(nn.Module):
    def __init__(self, target_feature: torch.Tensor):
        super().__init__()
        self.target, self.loss = gram(target_feature).detach(), None

    def forward(self, x):
        self.loss = F.mse_loss(gram(x), self.target)
        return x


class Normalization(nn.Module):
    def __init__(self, mean, std, device):
        super().__init__()
        self.mean = torch.tensor(mean, device=device).view(-1, 1, 1)
        self.std = torch.tensor(std, device=device).view(-1, 1, 1)

    def forward(self, img):
        return (img - self.mean) / self.std


def tutorial_model(loaded, content, style):
    """The features up to the last loss layer, loss modules inserted after the paper's layers."""
    model = nn.Sequential(Normalization(loaded.mean, loaded.std, content.device))
    content_losses, style_losses = [], []
    for index, layer in enumerate(loaded.model.features):
        model.add_module(f"features_{index}", nn.ReLU(inplace=False)
                         if isinstance(layer, nn.ReLU) else layer)
        if index == CONTENT_INDEX:
            content_losses.append(ContentLoss(model(content).detach()))
            model.add_module(f"content_loss_{index}", content_losses[-1])
        if index in STYLE_INDICES:
            style_losses.append(StyleLoss(model(style).detach()))
            model.add_module(f"style_loss_{index}", style_losses[-1])
        if index == max(CONTENT_INDEX, *STYLE_INDICES):
            break
    return model.eval().requires_grad_(False), content_losses, style_losses


def run_tutorial(loaded, content, style, steps: int, clock: Clock) -> float:
    """The tutorial's loop, ``clock`` stamping each forward; returns the loss fall."""
    with torch.no_grad():
        model, content_losses, style_losses = tutorial_model(loaded, content, style)
    image = content.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([image], max_iter=min(20, steps))  # no evaluations past steps
    losses = []

    def closure():
        with torch.no_grad():
            image.clamp_(0, 1)
        optimizer.zero_grad()
        model(image)
        style_score = STYLE_WEIGHT * sum(sl.loss for sl in style_losses)
        content_score = sum(cl.loss for cl in content_losses)
        loss = TUTORIAL_SCALE * (style_score + content_score)
        loss.backward()
        losses.append(loss.item() / TUTORIAL_SCALE)
        return loss

    with clock.on(model):
        while len(losses) < steps:
            optimizer.step(closure)
    return losses[steps - 1] / losses[0]


# --- the measurements ----------------------------------------------------------------------

def per_iteration(loaded, size: int, steps: int, rounds: int) -> None:
    device = loaded.device
    content, style = picture("chelsea", size, device), picture("brick", size, device)
    print(f"\n1. Per-iteration cost, VGG19 {size}², L-BFGS, {steps} evaluations per run, "
          f"{rounds} interleaved rounds (order alternating); wall and thread CPU time")
    clock = Clock()

    def ours() -> np.ndarray:
        with clock.on(loaded.model):  # forwards: the content, the style, the evaluations
            result = style_transfer(loaded, content, [style], steps=steps)
        falls["vistool"] = float(result.history[-1, 0] / result.history[0, 0])
        return clock.per_evaluation(2, steps)

    def theirs() -> np.ndarray:
        falls["tutorial"] = run_tutorial(loaded, content, style, steps, clock)
        return clock.per_evaluation(0, steps)

    cases = {"vistool": ours, "tutorial": theirs}
    times: dict[str, list[np.ndarray]] = {name: [] for name in cases}
    ratios, falls = [], {}
    for r in range(rounds):
        for name in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
            times[name].append(cases[name]())
        medians = {name: np.median(values[-1], axis=0) for name, values in times.items()}
        ratios.append(medians["vistool"] / medians["tutorial"])
        print(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{k} {v[0] * 1000:.0f} ms (CPU {v[1] * 1000:.0f})" for k, v in medians.items())
            + f", ratio {ratios[-1][0]:.3f} (CPU {ratios[-1][1]:.3f})", flush=True)
    for name, values in times.items():
        wall, cpu = np.median(np.concatenate(values), axis=0)
        print(f"  {name:<10} {wall * 1000:7.1f} ms per evaluation, CPU {cpu * 1000:7.1f} ms "
              f"(medians of all)   loss after {steps}: {falls[name]:.3f} of the first")
    wall, cpu = np.median(ratios, axis=0)
    low, high = np.min(ratios, axis=0), np.max(ratios, axis=0)
    print(f"  ratio vistool / tutorial, the median of the rounds' ratios: wall {wall:.3f}x "
          f"(range {low[0]:.3f}-{high[0]:.3f}), CPU {cpu:.3f}x (range {low[1]:.3f}-"
          f"{high[1]:.3f}); target <= 1.05")


def coarse_to_fine(loaded, fine: int, steps: int) -> None:
    device = loaded.device
    content, style = picture("chelsea", fine, device), picture("brick", fine, device)
    print(f"\n2. Coarse to fine, VGG19 {fine}², L-BFGS, {steps} evaluations per scale")
    start = time.perf_counter()
    single = style_transfer(loaded, content, [style], steps=steps)
    single_time = time.perf_counter() - start
    target = float(single.final[0])
    print(f"  single scale {fine}: {single_time:.1f} s, final loss {target:.4g} "
          f"({target / float(single.history[0, 0]):.3f} of the first)", flush=True)
    start = time.perf_counter()
    coarse = style_transfer(loaded, content, [style], steps=steps, scales=(fine // 2, fine))
    coarse_time = time.perf_counter() - start
    begin = coarse.scale_starts[1]
    below = (coarse.history[begin:, 0] <= target).nonzero()
    print(f"  scales {fine // 2},{fine}: {coarse_time:.1f} s in all, final loss "
          f"{float(coarse.final[0]):.4g}; the first {fine}² evaluation "
          f"{float(coarse.history[begin, 0]):.4g} (after {float(coarse.seconds[begin]):.1f} s)")
    if len(below) == 0:
        print(f"  not reached: ratio time to reach / single-scale time > "
              f"{coarse_time / single_time:.3f}x (target <= 0.5)")
        return
    reached = begin + int(below[0])
    seconds = float(coarse.seconds[reached])
    work = (begin / 4 + reached - begin + 1) / len(single.history)
    print(f"  reached the single-scale final loss at {fine}² evaluation {reached - begin + 1} "
          f"after {seconds:.1f} s")
    print(f"  ratio time to reach / single-scale time: {seconds / single_time:.3f}x "
          "(target <= 0.5)")
    print(f"  the same in evaluations, a {fine // 2}² one counted as 1/4 (the pixels; immune to "
          f"the machine's drift): {work:.3f}x")


def feed_forward(loaded, fine: int, rounds: int, evaluations: int, steps: int = 300) -> None:
    device = loaded.device
    content, style = picture("chelsea", fine, device), picture("brick", fine, device)
    print(f"\n3. Feed-forward vs Gatys at {fine}²: one TransformerNet pass ({rounds} rounds) "
          f"vs {evaluations} Gatys evaluations (VGG19, L-BFGS) scaled to {steps}")
    net = TransformerNet().to(device)

    def once() -> float:
        start = time.perf_counter()
        stylize(net, content)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once()  # warm-up
    fast = float(np.median([once() for _ in range(rounds)]))
    result = style_transfer(loaded, content, [style], steps=evaluations)
    per_evaluation = float(np.median(np.diff(result.seconds.numpy())[1:]))
    print(f"  feed-forward: {fast * 1000:.0f} ms per image; Gatys: {per_evaluation * 1000:.0f} "
          f"ms per evaluation, {per_evaluation * steps:.1f} s for {steps}")
    print(f"  speed-up of the feed-forward network over a {steps}-evaluation Gatys run: "
          f"{per_evaluation * steps / fast:.0f}x (expected >= 100x); over one Gatys "
          f"evaluation: {per_evaluation / fast:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="(default: %(default)s)")
    parser.add_argument("--fine", type=int, default=512, help="(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8,
                        help="evaluations per run in part 1 (default: %(default)s)")
    parser.add_argument("--scale-steps", type=int, default=30,
                        help="evaluations per scale in part 2 (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=12,
                        help="interleaved rounds in part 1 (default: %(default)s)")
    parser.add_argument("--weights", default="none", help="none or default "
                        "(default: %(default)s)")
    parser.add_argument("--device", default="auto", help="(default: %(default)s)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's; 1 on a busy shared machine)")
    parser.add_argument("--quick", action="store_true", help="64² and 64 -> 128², fewer steps")
    parser.add_argument("--parts", default="1,2,3", help="which measurements to run "
                        "(default: %(default)s)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.size, args.fine, args.steps, args.scale_steps, args.rounds = 64, 128, 8, 20, 4
    torch.manual_seed(0)  # the same random weights in every run
    loaded = vistool.load_model("vgg19", weights=args.weights, device=args.device)
    began = time.perf_counter()
    print(f"Style transfer, vgg19 ({loaded.weights}) on {loaded.device}, "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()}")
    parts = set(args.parts.split(","))
    if "1" in parts:
        per_iteration(loaded, args.size, args.steps, args.rounds)
    if "2" in parts:
        coarse_to_fine(loaded, args.fine, args.scale_steps)
    if "3" in parts:
        feed_forward(loaded, args.fine, args.rounds, args.steps)
    print(f"\nLoad average at the end: {os.getloadavg()}; "
          f"{time.perf_counter() - began:.0f} s in all")


if __name__ == "__main__":
    main()
