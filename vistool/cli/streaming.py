"""Runs over folders, globs, lists and datasets (``gradcam``, ``attribute``): images streamed
through a DataLoader, one row per image in ``index.csv`` (unreadable ones with their
error), resumable, and sharded over the processes of ``torchrun``.

The run directory is written as the run goes: each batch's files, then its rows appended
(flushed) to this process's part of the index. Rerunning the same command skips the images
the index already holds, so a killed run loses at most the batch in flight; at the end the
first process merges the parts into ``index.csv`` and writes ``manifest.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from pathlib import Path

from ..core.errors import VistoolError
from .options import load, predictions, slug, status

BASE = ["path", "status", "error"]
#: The index columns of gradcam and attribute runs.
MAP_FIELDS = [*BASE, "predicted", "predicted_name", "predicted_prob", "target", "target_name",
              "target_prob", "method", "layer", "peak_y", "peak_x", "centre_energy", "entropy",
              "overlay", "raw"]
_PART = ".index.part{}.csv"
GALLERY = 32  # images of a run that its manifest lists for the gallery (index.csv has all)


def _done(out: Path, overwrite: bool) -> dict[str, dict]:
    """The rows already in ``out`` (index and parts of an interrupted run), by path."""
    from ..outputs import INDEX, read_index

    if overwrite:
        return {}
    rows = read_index(out / INDEX)
    for part in sorted(out.glob(_PART.format("*"))):
        rows += read_index(part)
    return {row["path"]: row for row in rows}


def _check_out(out: Path) -> None:
    from ..outputs import INDEX

    if out.exists() and not out.is_dir():
        raise VistoolError(f"--out {str(out)!r} is a file; give a new or empty directory")
    resumable = (out / INDEX).exists() or any(out.glob(_PART.format("*")))
    if out.is_dir() and any(out.iterdir()) and not resumable:
        raise VistoolError(f"output directory {str(out)!r} already exists and is not empty "
                           "(and holds no index.csv of an earlier run to resume); choose "
                           "another --out or remove it")


def _start(out: Path, overwrite: bool, rank: int, world: int) -> dict[str, dict]:
    """Every process reads what is done before any writes (``--overwrite``: the first one
    drops the old index first)."""
    from ..outputs import INDEX

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for stale in [out / INDEX, *out.glob(_PART.format("*"))]:
                stale.unlink()
    _barrier(world)
    done = _done(out, overwrite=False)
    _barrier(world)
    return done


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def map_rows(args, loaded, keys: list[str], batch, result, raw, layers, out: Path):
    """One index row per explained image of ``batch`` (``keys`` name them): prediction,
    target, map statistics, and the overlay and raw map written unless ``--no-images``."""
    from ..core.imageio import deprocess
    from ..drawing import enlarge, overlay
    from ..explainers.stats import map_statistics
    from ..outputs import save_npy, save_png

    stats = {k: v.tolist() for k, v in map_statistics(result.maps.float().cpu()).items()}
    top = predictions(loaded, result.logits, 1)
    views = deprocess(batch, loaded.mean, loaded.std)
    rows = []
    for j, key in enumerate(keys):
        cls = int(result.targets[j])
        row = {"path": key, "status": "ok", "error": "",
               "predicted": top[j][0]["index"], "predicted_name": top[j][0]["name"] or "",
               "predicted_prob": top[j][0]["prob"], "target": cls,
               "target_name": loaded.class_name(cls) or "",
               "target_prob": round(float(result.probs[j]), 6), "method": args.method,
               "layer": ",".join(layers), **{k: round(v[j], 6) for k, v in stats.items()}}
        if not args.no_images:
            base = f"{file_stem(key)}_{slug(args.method)}_c{cls}"
            save_png(out / f"{base}_overlay.png", enlarge(overlay(
                views[j], result.maps[j], args.alpha, args.colormap)))
            save_npy(out / f"{base}_raw.npy", next(iter(raw.values()))[j])
            row.update(overlay=f"{base}_overlay.png", raw=f"{base}_raw.npy")
        rows.append(row)
    return rows


def file_stem(key: str) -> str:
    """A file name for the image ``key``: its stem and a hash of the key (unique per path)."""
    return f"{slug(Path(key).stem)}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def _batch_size(args, loaded, stream) -> int:
    """``--batch-size``, or with ``--memory-budget`` the largest batch whose activations fit
    in it (measured on the first readable image of ``stream``)."""
    from ..explainers.inference import budget_batch

    budget = getattr(args, "memory_budget", None)
    if budget is None:
        return args.batch_size
    sample = next((image for _, image, _ in map(stream.__getitem__, range(len(stream)))
                   if image is not None), None)
    if sample is None:  # nothing readable: every image is an error row
        return args.batch_size
    batch, per_image = budget_batch(loaded.model, sample[None].to(loaded.device),
                                    budget * 2**20)
    status(f"batch size {batch}: {per_image / 2**20:.1f} MiB of activations per image, "
           f"--memory-budget {budget} MiB")
    return batch


def _stream(args, loaded, sources, todo, process, layers, target, out: Path, rank: int,
            fields: list[str]) -> int:
    """Process ``todo`` (positions in ``sources``), appending rows to this process's part;
    returns the batch size."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ..core.memory import HeapTrimmer
    from ..data.sources import ImageStream, collate
    from ..outputs import append_rows

    stream = ImageStream([sources[i] for i in todo], loaded.transform)
    batch_size = _batch_size(args, loaded, stream)
    loader = DataLoader(stream, batch_size=batch_size, num_workers=args.workers,
                        collate_fn=collate, pin_memory=loaded.device.type == "cuda")
    part = out / _PART.format(rank)
    bar = tqdm(total=len(todo), desc=args.command, unit="img", file=sys.stderr,
               disable=rank != 0 or getattr(args, "json", False) or not sys.stderr.isatty())
    trimmer = HeapTrimmer()  # memory flat however many images
    for positions, batch, errors in loader:
        rows = [{"path": sources[todo[p]].key, "status": "error", "error": e}
                for p, e in errors.items()]
        if batch is not None:
            keys = [sources[todo[p]].key for p in positions]
            rows += process(loaded, batch.to(loaded.device, non_blocking=True), keys, layers,
                            target, out)
        append_rows(part, rows, fields)
        bar.update(len(positions) + len(errors))
        trimmer()
    bar.close()
    return batch_size


def _finish(args, out: Path, sources, options, seconds: float, world: int, loaded,
            seed: int | None, fields: list[str]) -> dict:
    """Merge the parts into ``index.csv`` (in the sources' order) and write the manifest."""
    from ..outputs import INDEX, manifest, save_json, write_index

    rows = _done(out, overwrite=False)
    ordered = [rows[s.key] for s in sources if s.key in rows]
    written = write_index(out / INDEX, ordered, fields)
    for part in out.glob(_PART.format("*")):
        part.unlink()
    errors = sum(row["status"] != "ok" for row in ordered)
    shown = [{"png": (row.get("overlay") or row.get("grid", "")).split(";")[0],
              "caption": row["path"]} for row in ordered if row.get("overlay") or row.get("grid")]
    info = manifest(args.command, [str(i) for i in args.images], options,
                    shown[:GALLERY], index=[p.name for p in written], seed=seed,
                    timings={"seconds": round(seconds, 3)},
                    model=loaded.describe(), images=len(ordered), errors=errors,
                    processes=world)
    save_json(out / "manifest.json", info)
    return info


def run(args: argparse.Namespace, process, fields: list[str], options: dict,
        seed: int | None = None) -> int:
    """The streamed run: every image of ``args.images`` processed once, resumably, by
    ``process(loaded, batch, keys, layers, target, out) -> rows`` (``fields`` its columns)."""
    from ..core.layers import resolve_layers
    from ..data.sources import collect
    from ..outputs import resolve_run_dir

    if getattr(args, "topk", None):
        raise VistoolError("--topk explains several classes per image; a folder, list or "
                           "dataset run indexes one (the predicted or --target class)")
    out = resolve_run_dir(args.out, args.command)
    _check_out(out)
    sources = collect(args.images)
    from ..core.devices import start_processes

    # Under torchrun: this process's GPU (cuda:LOCAL_RANK, made current before the group
    # starts) or the CPU, and the backend that goes with it (nccl, gloo).
    rank, world, device = start_processes(args.device)
    args.device = str(device)
    loaded = load(args)
    layers = args.layer or [loaded.default_layer]
    resolve_layers(loaded.model, layers)
    given = getattr(args, "target", None)
    target = None if given is None else loaded.class_index(given)
    created = not out.exists()
    done = _start(out, args.overwrite, rank, world)
    todo = [i for i, s in enumerate(sources) if s.key not in done][rank::world]
    start = time.perf_counter()
    try:
        batch_size = _stream(args, loaded, sources, todo, process, layers, target, out, rank,
                             fields)
    except VistoolError:  # a mistake the first batch shows (--channels ...): leave nothing
        if created and world == 1 and not (out / _PART.format(0)).exists():
            shutil.rmtree(out, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    _barrier(world)
    if world > 1:  # every part is written; the merge below needs no collective
        import torch.distributed as dist

        dist.destroy_process_group()
    if rank != 0:
        return 0
    info = _finish(args, out, sources, {**options, "layer": layers, "target": given,
                                        "model": args.model, "batch_size": batch_size},
                   seconds, world, loaded, seed, fields)
    rate = len(todo) * world / seconds if seconds > 0 else 0.0
    print(f"{info['images']} images in {out}/index.csv: {info['images'] - info['errors']} "
          f"done, {info['errors']} unreadable; {len(done)} were done before, "
          f"{rate:.1f} images/s")
    if info["errors"] and args.strict:
        raise VistoolError(f"{info['errors']} image(s) could not be read (--strict); see the "
                           f"error column of {out / 'index.csv'}")
    return 0
