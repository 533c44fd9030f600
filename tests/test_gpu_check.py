"""``scripts/gpu_check.py`` as a CPU dry run: every capability it checks on a GPU runs here
(small), so the script cannot rot between the runs on a GPU machine; its comparisons are
checked on the outputs the dry run keeps."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainers.recipes import RECIPES
from vistool.explainers.names import ATTRIBUTION_METHODS, CAM_METHODS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out",
                           str(out)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    return out, report, proc.stdout


@functools.cache
def _script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_the_dry_run_runs_every_capability(dry_run):
    _, report, stdout = dry_run
    names = list(report["checks"])
    expected = ([f"cam {m}" for m in CAM_METHODS] + [f"attribute {m}" for m in
                                                     ATTRIBUTION_METHODS]
                + ["filters", "deepdream", "style (Gatys, L-BFGS)", "style --fast (stylize)",
                   "evaluate", "gradcam folder (streamed)", "torchrun x2 (gloo)"]
                + [f"train {r}" for r in RECIPES]
                + [f"train {r} --amp" for r in _script().DRY_AMP])
    assert sorted(names) == sorted(expected)
    assert all(row["ok"] and row["device_s"] > 0 for row in report["checks"].values())
    assert report["device"] == "cpu" and f"{len(expected)} passed, 0 failed" in stdout


def _kept(out: Path, report: dict, name: str) -> Path:
    return out / f"{list(report['checks']).index(name):02d}" / "device"


def test_the_comparisons_see_a_difference(dry_run, tmp_path):
    out, report, _ = dry_run
    check = _script()

    maps = _kept(out, report, "cam gradcam")
    changed = tmp_path / "maps"
    shutil.copytree(maps, changed)
    (npy,) = changed.rglob("*.npy")
    np.save(npy, np.load(npy) * 0.5)
    assert check._npy_difference(maps, maps) == 0
    assert check._npy_difference(maps, changed) == pytest.approx(0.5, rel=1e-6)

    pictures = _kept(out, report, "deepdream")
    changed = tmp_path / "pictures"
    shutil.copytree(pictures, changed)
    for png in changed.rglob("*.png"):
        Image.fromarray(255 - np.asarray(Image.open(png).convert("RGB"))).save(png)
    assert check._png_difference(pictures, pictures) == 0
    assert check._png_difference(pictures, changed) > 0.05

    run = _kept(out, report, "train lenet-digits")
    changed = tmp_path / "run"
    shutil.copytree(run, changed)
    state = torch.load(changed / "last-state.pt", weights_only=True)
    state["initial"]["val_loss"] *= 1.5
    torch.save(state, changed / "last-state.pt")
    assert check._training_difference(run, run) == 0
    assert check._training_difference(run, changed) == pytest.approx(1 / 3)
    state["history"][-1]["train_loss"] = float("nan")  # a diverged run differs by inf
    torch.save(state, changed / "last-state.pt")
    assert check._training_difference(run, changed) == float("inf")

    evaluation = _kept(out, report, "evaluate")
    assert check._results_difference(evaluation, evaluation) == 0
