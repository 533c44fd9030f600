"""Runs over folders, globs, lists and datasets: one index row per image (unreadable ones
with their error), resuming after a kill, sharding over torchrun processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vistool.cli import main
from vistool.data.sources import collect, is_collection
from vistool.explainers.stats import map_statistics

NET = """import time

import torch
import torch.fx
from torch import nn


def pause(x, seconds):
    time.sleep(seconds)  # lets a test kill a run in the middle
    return x


torch.fx.wrap("pause")  # a call in the traced copy of the model that a folder run explains


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
        self.delay = float(__import__("os").environ.get("NET_DELAY", "0"))

    def forward(self, x):
        return self.head(self.features(pause(x, self.delay)))


def make():
    return Net()
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """200 images in nested folders, 10 of them unreadable (text, truncated, empty)."""
    root = tmp_path_factory.mktemp("many")
    (root / "net.py").write_text(NET)
    rng = np.random.default_rng(0)
    bad = set(range(7, 200, 20))
    for i in range(200):
        path = root / "images" / f"part{i % 3}" / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i in bad:
            path.write_bytes([b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00", b""][i % 3])
        else:
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
    return root, bad


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """The thread count of the run in this process and of its subprocesses
    (``OMP_NUM_THREADS``): the suite's one, and more as users have (tests/test_threads.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def argv(root: Path, out: Path, *inputs: str) -> list[str]:
    return ["gradcam", "--model", f"{root / 'net.py'}:make", "--input-size", "24",
            "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--workers", "0",
            "--out", str(out), *(inputs or [str(root / "images")])]


def index(out: Path) -> list[dict]:
    with (out / "index.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_folder_run_indexes_every_image_and_skips_unreadable_ones(folder, tmp_path, capsys):
    root, bad = folder
    out = tmp_path / "run"
    assert main(argv(root, out)) == 0
    assert "200 images" in capsys.readouterr().out
    rows = index(out)
    expected = sorted(str(p) for p in (root / "images").rglob("*.png"))
    assert [r["path"] for r in rows] == expected
    errors = [r for r in rows if r["status"] == "error"]
    assert sorted(int(Path(r["path"]).stem[3:]) for r in errors) == sorted(bad)
    assert all(r["error"] and not r["overlay"] for r in errors)
    for row in rows:
        if row["status"] == "ok":
            assert (out / row["overlay"]).is_file() and np.load(out / row["raw"]).shape == (12, 12)
            assert 0 <= float(row["peak_y"]) <= 1 and row["method"] == "gradcam"
    info = json.loads((out / "manifest.json").read_text())
    assert info["images"] == 200 and info["errors"] == len(bad)
    status = main([*argv(root, tmp_path / "strict"), "--strict"])
    assert status == 2 and "10 image(s) could not be read (--strict)" in capsys.readouterr().err


def test_streamed_maps_equal_explain_on_the_model(folder, tmp_path):
    """A folder run explains a fast copy of the model (BN folded, fused convolutions, the
    closed form): its maps and targets are explain()'s on the model itself."""
    import vistool
    from vistool.core.errors import RandomWeightsWarning
    from vistool.explainers.cam import explain

    root, _ = folder
    out = tmp_path / "run"
    assert main([*argv(root, out, str(root / "images" / "part2")), "--batch-size", "4"]) == 0
    rows = [r for r in index(out) if r["status"] == "ok"]
    assert len(rows) > 50
    with pytest.warns(RandomWeightsWarning):  # the factory's own initialisation
        loaded = vistool.load_model(f"{root / 'net.py'}:make", input_size=24, mean=[0.5] * 3,
                                    std=[0.25] * 3, device="cpu")
    x = torch.stack([loaded.transform(vistool.load_image(r["path"])) for r in rows])
    expected = explain(loaded, x, "gradcam")
    assert [int(r["target"]) for r in rows] == expected.targets.tolist()
    raw = expected.raw[loaded.default_layer]
    assert (raw.flatten(1).amax(1) > raw.flatten(1).amin(1)).all()  # no blank map
    streamed = torch.stack([torch.from_numpy(np.load(out / r["raw"])) for r in rows])
    torch.testing.assert_close(streamed, raw, rtol=1e-4, atol=1e-6)


def test_memory_budget_picks_the_batch_size(folder, tmp_path, capsys):
    root, _ = folder
    out = tmp_path / "budget"
    assert main([*argv(root, out), "--memory-budget", "1", "--no-images"]) == 0
    # one 24x24 image: conv 8x24x24, relu, pool 8x12x12, conv, relu, 8, 8, 3 floats
    per_image = 4 * (2 * 8 * 24 * 24 + 3 * 8 * 12 * 12 + 8 + 8 + 3)
    info = json.loads((out / "manifest.json").read_text())
    assert info["options"]["batch_size"] == 2**20 // per_image == 20
    assert len(index(out)) == 200
    assert main([*argv(root, tmp_path / "default"), "--no-images"]) == 0
    assert json.loads((tmp_path / "default" / "manifest.json").read_text())[
        "options"]["batch_size"] == 8  # --batch-size's default


def test_killed_run_resumes_with_each_image_once_and_the_same_maps(folder, tmp_path, threads):
    root, _ = folder
    reference = tmp_path / "whole"
    assert main([*argv(root, reference), "--batch-size", "4"]) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "NET_DELAY": "0.05", "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen([sys.executable, "-m", "vistool", *argv(root, out),
                                "--batch-size", "4"], env=env, stderr=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)
    part = out / ".index.part0.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
            not part.exists() or part.read_text().count("\n") < 40):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "index.csv").exists()  # it was killed in the middle
    done_before = part.read_text().count("\n") - 1
    assert 0 < done_before < 200
    assert main([*argv(root, out), "--batch-size", "8"]) == 0  # a different batching
    rows, whole = index(out), index(reference)
    assert [r["path"] for r in rows] == [r["path"] for r in whole]  # each image once
    for ours, theirs in zip(rows, whole):
        assert ours["status"] == theirs["status"] and ours["target"] == theirs["target"]
        if ours["status"] == "ok":
            np.testing.assert_allclose(np.load(out / ours["raw"]),
                                       np.load(reference / theirs["raw"]), atol=1e-6)


def test_torchrun_with_two_processes_gives_the_same_index_and_maps(folder, tmp_path, threads):
    root, _ = folder
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(argv(root, one, str(root / "images" / "part1"))) == 0
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                           "2", "--master-port", "29517", "-m", "vistool",
                           *argv(root, two, str(root / "images" / "part1"))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows, single = index(two), index(one)
    assert rows == single
    assert json.loads((two / "manifest.json").read_text())["processes"] == 2
    for row in rows:
        if row["status"] == "ok":
            np.testing.assert_allclose(np.load(two / row["raw"]), np.load(one / row["raw"]),
                                       atol=1e-6)  # other batches: float rounding only


def test_globs_lists_and_datasets_are_sources(folder, tmp_path, monkeypatch):
    root, _ = folder
    images = root / "images"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{images / 'part0' / 'img000.png'}\n# a comment\n\n"
                       f"{images / 'part1' / 'img001.png'}\n")
    assert [s.key for s in collect([f"@{listing}"])] == [
        str(images / "part0" / "img000.png"), str(images / "part1" / "img001.png")]
    found = collect([str(images / "part2" / "img0[0-2]*.png")])
    assert [Path(s.key).name for s in found] == [f"img{i:03d}.png" for i in (2, 5, 8, 11, 14,
                                                                          17, 20, 23, 26, 29)]
    shapes = collect(["shapes:5"])
    assert [s.key for s in shapes] == [f"shapes/{i:06d}" for i in range(5)]
    assert shapes[0].array.shape == (64, 64, 3)
    assert is_collection(["shapes:5"]) and is_collection([str(images)])
    assert not is_collection([str(images / "part0" / "img000.png")])
    (tmp_path / "cwd" / "shapes").mkdir(parents=True)  # a folder is a folder, whatever its name
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cwd" / "shapes" / "a.png")
    monkeypatch.chdir(tmp_path / "cwd")
    assert [s.key for s in collect(["shapes"])] == [str(Path("shapes") / "a.png")]
    out = tmp_path / "shapes"
    assert main([*argv(root, out, "shapes:6"), "--no-images"]) == 0
    assert [r["path"] for r in index(out)] == [f"shapes/{i:06d}" for i in range(6)]
    assert sorted(p.name for p in out.iterdir()) == ["index.csv", "index.parquet",
                                                     "manifest.json"]
    import pyarrow.parquet as pq  # streamlit brings pyarrow: the Parquet twin is written

    assert pq.read_table(out / "index.parquet").column("path").to_pylist() == [
        f"shapes/{i:06d}" for i in range(6)]


@pytest.mark.parametrize(("inputs", "message"), [
    (["missing-folder/"], "does not exist"),
    (["@missing.txt"], "cannot be read"),
    (["shapes:x"], "needs a count"),
])
def test_bad_sources_are_one_line(folder, tmp_path, capsys, inputs, message):
    root, _ = folder
    out = tmp_path / "out"
    assert main(argv(root, out, *inputs)) == 2
    assert message in capsys.readouterr().err


def test_an_out_that_holds_something_else_is_refused(folder, tmp_path, capsys):
    root, _ = folder
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    assert main(argv(root, tmp_path / "other")) == 2
    assert "holds no index.csv of an earlier run to resume" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "other").iterdir()] == ["keep.txt"]


def test_map_statistics_by_hand():
    maps = torch.zeros(3, 4, 4)
    maps[0, 1, 2] = 1.0  # one pixel inside the centre
    maps[1] = 1.0  # flat
    stats = map_statistics(maps)  # maps[2] is blank
    torch.testing.assert_close(stats["peak_y"], torch.tensor([0.375, 0.125, 0.125]))
    torch.testing.assert_close(stats["peak_x"], torch.tensor([0.625, 0.125, 0.125]))
    torch.testing.assert_close(stats["centre_energy"], torch.tensor([1.0, 0.25, 0.0]))
    torch.testing.assert_close(stats["entropy"], torch.tensor([0.0, 1.0, 1.0]))


def test_activations_folder_run_indexes_each_image_once_with_its_layers(folder, tmp_path):
    root, bad = folder
    out = tmp_path / "acts"
    argv_ = ["activations", "--model", f"{root / 'net.py'}:make", "--input-size", "24",
             "--layer", "features.0", "--layer", "features", "--workers", "1", "--out",
             str(out), str(root / "images" / "part0")]
    assert main(argv_) == 0
    rows = index(out)
    assert [r["path"] for r in rows] == sorted(str(p) for p in (root / "images" / "part0")
                                               .glob("*.png"))
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == len(rows) - sum(i % 3 == 0 for i in bad)
    assert ok[0]["layer"] == "features.0;features" and ok[0]["shape"] == "8x24x24;8x12x12"
    grid, array = ok[0]["grid"].split(";")[1], ok[0]["npy"].split(";")[1]
    assert (out / grid).is_file() and np.load(out / array).shape == (8, 12, 12)
