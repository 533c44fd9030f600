"""Every capability on a GPU, compared with the same run on the CPU, in one table.

    python scripts/gpu_check.py                          # on CUDA (or MPS) when there is one
    python scripts/gpu_check.py --device cpu --quick     # the dry run ``make test`` runs

Each check is one ``vistool`` command (the CLI in this process, so the imports are paid
once; ``torchrun`` in child processes): every CAM method and attribution method,
feature visualisation, DeepDream, Gatys style transfer, fast style (a network trained by
the check), ``evaluate``, a streamed folder run, a ``torchrun`` run (nccl on two GPUs,
gloo on the CPU), and one epoch of every training recipe with and without ``--amp``. The
first run on the device warms it up and is not timed apart from the table's seconds.

Each row: seconds on the device and on the CPU, their ratio, the largest difference
between the two runs' outputs and the tolerance it must stay under:

* maps (``.npy``): max |a - b| of the maps scaled by the larger of their peaks (TF32
  convolutions on Ampere and later differ from the CPU's float32 by about 1e-3);
* pictures (PNG): mean |a - b| over the pixels in [0, 1] (optimisations drift apart);
* training: relative difference of the validation loss before training (same initial
  weights, made on the CPU from the seed; the training steps themselves draw their noise
  and dropout from the device's generator, so the two runs train differently), and the
  training loss must stay finite.

With ``--device cpu`` the device is the CPU: nothing is run twice and the differences
are not computed (a dry run that keeps this script from rotting). Every model here has
random weights (``--weights none``): the check is about devices, not about pictures.
Exit status 1 when a check fails or differs by more than its tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vistool.cli import main as vistool
from vistool.core.devices import resolve_device, synchronize
from vistool.explainers.names import ATTRIBUTION_METHODS, CAM_METHODS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "dashboard" / "samples").glob("*.jpg"))


@dataclass
class Check:
    """One row: ``argv(device, out)`` is a vistool command; ``compare(out_a, out_b)`` the
    difference of two runs' outputs (None: not comparable)."""

    name: str
    argv: Callable[[str, Path], list[str]] | None
    compare: Callable[[Path, Path], float | None]
    tolerance: float
    run: Callable[[str, Path], None] | None = None  # instead of argv: any code
    prepare: Callable[[], None] | None = None  # untimed, before the first run
    result: dict = field(default_factory=dict)


def _worst(a: Path, b: Path, pattern: str, difference: Callable[[Path, Path], float]) -> float:
    """The largest ``difference`` of the files matching ``pattern`` under ``a`` and their
    namesakes under ``b``."""
    files = sorted(p.relative_to(a) for p in a.rglob(pattern))
    if not files:
        raise RuntimeError(f"no {pattern} written under {a}")
    return max(difference(a / rel, b / rel) for rel in files)


def _map_difference(x: Path, y: Path) -> float:
    """max |x - y| of two maps scaled by the larger of their peaks."""
    u, v = np.load(x).astype(np.float64), np.load(y).astype(np.float64)
    return float(np.abs(u - v).max() / max(np.abs(u).max(), np.abs(v).max(), 1e-12))


def _picture_difference(x: Path, y: Path) -> float:
    """mean |x - y| of two pictures in [0, 1] (inf when their sizes differ)."""
    u = np.asarray(Image.open(x).convert("RGB"), np.float64) / 255
    v = np.asarray(Image.open(y).convert("RGB"), np.float64) / 255
    return float(np.abs(u - v).mean()) if u.shape == v.shape else float("inf")


def _npy_difference(a: Path, b: Path) -> float:
    return _worst(a, b, "*.npy", _map_difference)


def _png_difference(a: Path, b: Path) -> float:
    return _worst(a, b, "*.png", _picture_difference)


def _training_difference(a: Path, b: Path) -> float | None:
    def initial(run: Path) -> float:
        state = torch.load(run / "last-state.pt", map_location="cpu", weights_only=True)
        if not all(np.isfinite(h["train_loss"]) for h in state["history"]):
            return float("nan")
        return state["initial"]["val_loss"]

    x, y = initial(a), initial(b)
    if not (np.isfinite(x) and np.isfinite(y)):
        return float("inf")
    return abs(x - y) / max(abs(x), abs(y), 1e-12)


def _results_difference(a: Path, b: Path) -> float | None:
    def means(run: Path) -> dict:
        methods = json.loads((run / "results.json").read_text())["methods"]
        return {(m, k): v["mean"] for m, metrics in methods.items() for k, v in metrics.items()
                if v["mean"] is not None}

    x, y = means(a), means(b)
    return max(abs(x[k] - y[k]) for k in x)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_inputs(root: Path, size: int) -> dict[str, Path]:
    """Photographs (the dashboard's samples) as a folder, a style image, training images
    for fast style, and an image folder with two classes for the transfer recipe."""
    photos = root / "photos"
    photos.mkdir(parents=True)
    for path in SAMPLES:
        Image.open(path).convert("RGB").resize((size, size)).save(photos / path.name)
    folder = root / "folder"
    for index, path in enumerate(SAMPLES * 3):
        target = folder / ("a" if index % 2 else "b")
        target.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("RGB").resize((48, 48)).rotate(index * 30).save(
            target / f"{index}.png")
    (root / "vit.py").write_text(VIT)
    return {"photos": photos, "first": photos / SAMPLES[0].name,
            "style": photos / SAMPLES[1].name, "folder": folder, "vit": root / "vit.py"}


#: legrad's model: a small random torchvision VisionTransformer, its head drawn too
#: (torchvision zeroes it: every map would be zero)
VIT = """
import torch
from torchvision.models import VisionTransformer


def build():
    torch.manual_seed(0)
    model = VisionTransformer(224, 16, num_layers=4, num_heads=4, hidden_dim=128,
                              mlp_dim=256, num_classes=10)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)
    return model
"""


def build_checks(inputs: dict[str, Path], quick: bool, gpus: int, cpu: bool) -> list[Check]:
    size = "64" if quick else "224"
    model = ["--model", "resnet18", "--weights", "none", "--input-size", size]
    first = str(inputs["first"])
    checks: list[Check] = []
    few = {"scorecam": ["--channels", "16"] if quick else [],  # a forward per channel
           "sscam": ["--channels", "16", "--option", "samples=8"],  # (and sample)
           "iscam": ["--channels", "16"],
           "sess": ["--option", "scales=3"] if quick else []}  # (a base map per window)
    vit = ["--model", f"{inputs['vit']}:build", "--input-size", "3,224,224"]  # (small, fixed)
    for method in CAM_METHODS:
        extra = few.get(method, [])
        checks.append(Check(f"cam {method}", lambda d, o, m=method, e=extra: [
            "gradcam", *(vit if m == "legrad" else model), "--method", m, *e, first,
            "--device", d, "--out", str(o)], _npy_difference, 2e-2))
    options = {"ig": ["--steps", "8"], "occlusion": ["--window", "16", "--stride", "16"]}
    for method in ATTRIBUTION_METHODS:
        checks.append(Check(f"attribute {method}", lambda d, o, m=method: [
            "attribute", *model, "--method", m, *options.get(m, []), first, "--device", d,
            "--out", str(o)], _npy_difference, 2e-2))
    steps = "8" if quick else "64"
    metrics = ["--metrics", "pointing_game,deletion_auc,road_morf_auc"] if quick else []
    checks += [
        Check("filters", lambda d, o: [
            "filters", *model, "--layer", "layer3", "--channels", "0-1" if quick else "0-7",
            "--size", "32" if quick else "128", "--steps", steps, "--device", d,
            "--out", str(o)], _png_difference, 0.1),
        Check("deepdream", lambda d, o: [
            "deepdream", *model, "--layer", "layer2", "--octaves", "2", "--steps",
            "3" if quick else "10", first, "--device", d, "--out", str(o)],
            _png_difference, 0.05),
        Check("style (Gatys, L-BFGS)", lambda d, o: [
            "style", "--weights", "none", "--size", "48" if quick else "256", "--steps",
            "5" if quick else "50", first, str(inputs["style"]), "--device", d,
            "--out", str(o)], _png_difference, 0.1),
        Check("evaluate", lambda d, o: [
            "evaluate", *model[:-2], "--input-size", "64", "--limit", "4", "--methods",
            "gradcam,saliency", *metrics, "--steps", "8", "--device", d, "--out", str(o)],
            _results_difference, 5e-2),
        Check("gradcam folder (streamed)", lambda d, o: [
            "gradcam", *model, str(inputs["photos"]), "--batch-size", "2", "--device", d,
            "--out", str(o)], _npy_difference, 2e-2),
    ]
    network = inputs["folder"].parent / "fast-style-network"

    def train_network() -> None:  # on the CPU, once
        _cli(["train", "fast-style", "--data", str(inputs["folder"]), "--style",
              str(inputs["style"]), "--image-size", "32", "--no-pretrained", "--epochs", "1",
              "--batch-size", "4", "--limit-batches", "2", "--quiet", "--device", "cpu",
              "--out", str(network)])

    checks.append(Check("style --fast (stylize)", lambda d, o: [
        "style", "--fast", str(network / "best.safetensors"), first, "--size",
        "64" if quick else "256", "--device", d, "--out", str(o)], _png_difference, 1e-2,
        prepare=train_network))
    processes = 1 if gpus == 1 else 2

    def torchrun(device: str, out: Path) -> None:
        proc = subprocess.run([
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "vistool",
            "gradcam", *model, str(inputs["photos"]), "--batch-size", "2", "--device",
            "cpu" if device == "cpu" else "auto", "--out", str(out)],
            capture_output=True, text=True, cwd=ROOT, timeout=600)
        if proc.returncode:
            raise RuntimeError(f"torchrun exit status {proc.returncode}: "
                               + proc.stderr.strip()[-500:])

    backend = "gloo" if gpus == 0 else "nccl" if processes > 1 else "one GPU: no group"
    checks.append(Check(f"torchrun x{processes} ({backend})", None, _npy_difference, 2e-2,
                        run=torchrun))
    checks += _recipe_checks(inputs, quick, dry=cpu)
    return checks


#: The recipes a CPU dry run also trains with ``--amp`` (one per kind of task: bf16
#: convolutions of the larger models take minutes on a CPU without bf16 units).
DRY_AMP = ("lenet-digits", "vae-mnist", "gan-mnist")


def _recipe_checks(inputs: dict[str, Path], quick: bool, dry: bool) -> list[Check]:
    """One epoch of every recipe, with and without ``--amp``: MNIST-sized ones on digits,
    the others on shapes (``--quick``: those that take an image folder on the small one)."""
    from trainers.recipes import GREY, RECIPES

    folder = ["--data", str(inputs["folder"]), "--no-pretrained"]
    checks = []
    for name, recipe in RECIPES.items():
        if recipe.task == "style":
            data = [*folder, "--style", str(inputs["style"]), "--image-size", "32"]
        elif recipe.dataset == "imagefolder":
            data = folder
        elif recipe.datasets == GREY:
            data = ["--dataset", "digits"]
        elif quick and "imagefolder" in recipe.datasets:
            data = ["--dataset", "imagefolder", *folder[:2]]
        else:
            data = ["--dataset", "shapes"]
        for amp in (False, True):
            if amp and dry and name not in DRY_AMP:
                continue
            checks.append(Check(
                f"train {name}{' --amp' if amp else ''}", lambda d, o, n=name, x=data, a=amp: [
                    "train", n, *x, "--epochs", "1", "--batch-size", "8",
                    "--limit-batches", "2" if quick else "20", *(["--amp"] if a else []),
                    "--quiet", "--device", d, "--out", str(o)],
                _training_difference, 5e-2 if amp else 1e-2))
    return checks


def _cli(argv: list[str]) -> None:
    """``vistool ARGV`` in this process, quietly; its error line raised if it fails."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(
            io.StringIO()) as err:
        status = vistool(argv)
    if status != 0:
        raise RuntimeError(err.getvalue().strip().splitlines()[-1] if err.getvalue()
                           else f"exit status {status}")


def _run(check: Check, device: str, out: Path) -> float:
    """Seconds of one run of ``check`` on ``device`` into ``out``."""
    synchronize(torch.device(device))
    start = time.perf_counter()
    if check.run is not None:
        check.run(device, out)
    else:
        _cli(check.argv(device, out))
    synchronize(torch.device(device))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto",
                        help="the device to check: auto (CUDA, then MPS), cuda, cuda:N, mps "
                             "or cpu (a dry run: each check once, nothing compared)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few steps (the dry run's)")
    parser.add_argument("--only", metavar="TEXT",
                        help="run only the checks whose name contains TEXT")
    parser.add_argument("--out", help="keep every run's output here (default: a temporary "
                                      "directory, removed) and write gpu-check.json")
    args = parser.parse_args(argv)
    device = str(resolve_device(args.device))
    dry = device == "cpu"
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    root = Path(args.out or tempfile.mkdtemp(prefix="vistool-gpu-check-")).resolve()
    if root.exists() and any(root.iterdir()):
        parser.error(f"--out {args.out} is not empty; give a new or empty directory")
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("VISTOOL_CACHE", str(root / "cache"))
    inputs = _write_inputs(root / "inputs", 64 if args.quick else 224)
    checks = [c for c in build_checks(inputs, args.quick, gpus, dry)
              if not args.only or args.only in c.name]
    print(f"vistool GPU check on {device}"
          f" ({torch.cuda.get_device_name(device) if gpus else 'dry run' if dry else device}),"
          f" torch {torch.__version__}; {len(checks)} checks; random weights throughout")
    print(f"| {'check':<34} | {'device s':>8} | {'cpu s':>7} | {'cpu/dev':>7} | "
          f"{'max diff':>9} | {'tol':>6} | ok   |")
    print(f"|{'-' * 36}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 11}|{'-' * 8}|------|")
    failed = 0
    for index, check in enumerate(checks):
        here = root / f"{index:02d}"
        row = check.result
        try:
            if check.prepare is not None:
                check.prepare()
            row["device_s"] = _run(check, device, here / "device")
            if not dry:
                row["cpu_s"] = _run(check, "cpu", here / "cpu")
                row["difference"] = check.compare(here / "device", here / "cpu")
            row["ok"] = dry or row["difference"] <= check.tolerance
        except Exception as error:  # a report of every check, the failures included
            row.update(ok=False, error=f"{type(error).__name__}: {error}")
        failed += not row["ok"]
        ratio = (f"{row['cpu_s'] / row['device_s']:6.2f}x" if "cpu_s" in row else "")
        diff = f"{row['difference']:.2e}" if row.get("difference") is not None else ""
        print(f"| {check.name:<34} | {row.get('device_s', float('nan')):8.2f} | "
              f"{row.get('cpu_s', float('nan')):7.2f} | {ratio:>7} | {diff:>9} | "
              f"{check.tolerance:6.0e} | {'yes' if row['ok'] else 'NO':<4} |"
              + (f" {row['error']}" if "error" in row else ""), flush=True)
    report = {"device": device, "torch": torch.__version__, "quick": args.quick,
              "checks": {c.name: {**c.result, "tolerance": c.tolerance} for c in checks}}
    if args.out:
        (root / "gpu-check.json").write_text(json.dumps(report, indent=1))
    else:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
