"""Writing outputs: atomic files, per-run directories, manifests and the HTML gallery.

Nothing half-written is left behind: files are written to a temporary name and renamed,
and a run directory is assembled under a hidden temporary name and renamed into place
only when the run succeeded.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import html
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .core.files import atomic_path

__all__ = [
    "manifest",
    "resolve_run_dir",
    "run_directory",
    "save_json",
    "save_npy",
    "save_png",
    "versions",
    "write_gallery",
]


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_npy(path: str | os.PathLike, array) -> Path:
    """Write a tensor or array to ``.npy``, atomically."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(array))
    return Path(path)


def save_png(path: str | os.PathLike, image) -> Path:
    """Write an RGB image (uint8 HWC array, or float CHW tensor in [0, 1]) as PNG, atomically."""
    from PIL import Image

    from .drawing import to_uint8_hwc

    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8_hwc(image)).save(tmp, format="PNG")
    return Path(path)


def versions() -> dict[str, str]:
    """Versions of Python, vistool and the main libraries, for manifests."""
    import torch
    import torchvision

    from . import __version__

    return {
        "python": platform.python_version(),
        "vistool": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def default_run_name(kind: str) -> str:
    """``<timestamp>-<kind>``, e.g. ``20261123-190405-activations``."""
    return f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{kind}"


def resolve_run_dir(out: str | os.PathLike | None, kind: str) -> Path:
    """``out``, or a new ``vistool-out/<timestamp>-<kind>`` when it is None (``-2``, ``-3``
    ... appended when runs start within the same second)."""
    if out is not None:
        return Path(out)
    base = Path("vistool-out") / default_run_name(kind)
    candidate, number = base, 1
    while candidate.exists() or any(candidate.parent.glob(f".{candidate.name}.*.partial")):
        number += 1
        candidate = base.with_name(f"{base.name}-{number}")
    return candidate


@contextlib.contextmanager
def run_directory(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging directory that becomes ``final`` only if the block succeeds.

    Files are written into a hidden sibling directory that is renamed to ``final`` at
    the end; on error it is removed, so a failed run leaves nothing behind. An existing
    non-empty ``final`` is refused.
    """
    final = Path(final)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        from .core.errors import VistoolError

        raise VistoolError(
            f"output directory {str(final)!r} already exists and is not empty; "
            "choose another directory (`final`) or remove it"
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial",
                                    dir=final.parent))
    try:
        yield staging
        if final.exists():
            final.rmdir()
        os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def manifest(kind: str, inputs: list[str], options: Mapping[str, Any], outputs: list[Any],
             seed: int | None = None, timings: Mapping[str, float] | None = None,
             **extra: Any) -> dict[str, Any]:
    """The ``manifest.json`` content common to every command."""
    return {
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "inputs": inputs,
        "options": dict(options),
        "seed": seed,
        "timings": dict(timings or {}),
        "versions": versions(),
        **extra,
        "outputs": outputs,
    }


INDEX = "index.csv"


def read_index(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of an index table (CSV with a header), or [] when it does not exist."""
    import csv

    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def append_rows(path: str | os.PathLike, rows: list[Mapping[str, Any]],
                fields: list[str]) -> None:
    """Append ``rows`` to the CSV at ``path`` (header first when new), flushed to disk
    before returning, so a killed process loses at most the rows it had not appended."""
    import csv

    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fields, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())


def write_index(path: str | os.PathLike, rows: list[Mapping[str, Any]],
                fields: list[str]) -> list[Path]:
    """Write ``rows`` as CSV atomically, and as Parquet next to it when pyarrow is
    installed; returns the files written."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())
    written = [path]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    table = pa.table({f: [str(r.get(f, "")) for r in rows] for f in fields})
    with atomic_path(path.with_suffix(".parquet")) as tmp:
        pq.write_table(table, str(tmp))
    return [*written, path.with_suffix(".parquet")]


_GALLERY_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;background:#fafafa;color:#222}
section{margin-bottom:2.5em} figure{display:inline-block;margin:.5em;vertical-align:top}
img{max-width:320px;image-rendering:pixelated;border:1px solid #ccc;background:#fff}
figcaption{font-size:.8em;max-width:320px;word-break:break-all} code{background:#eee}
.random{color:#b00;font-weight:bold}
figure.chart img{max-width:520px;image-rendering:auto}
figure.chart figcaption{max-width:520px}
table.results{border-collapse:collapse;margin:.5em 0 1em;background:#fff;font-size:.9em}
table.results td,table.results th{border:1px solid #ccc;padding:.3em .6em;text-align:left;
white-space:nowrap} .scroll{overflow-x:auto;max-width:100%}
table.results caption{caption-side:bottom;font-size:.8em;text-align:left;padding-top:.3em}
"""


def _table_html(path: Path, caption: str | None) -> str:
    """A Markdown pipe table (``| a | b |`` rows, the second one the ``---`` rule) as an
    HTML table with its caption."""
    rows = [[html.escape(cell.strip()) for cell in line.strip().strip("|").split("|")]
            for line in path.read_text().splitlines() if line.strip().startswith("|")]
    head, body = rows[0], rows[2:]
    cells = "".join(f"<th>{c}</th>" for c in head)
    lines = [f"<tr>{cells}</tr>"] + ["<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
                                     for row in body]
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<div class='scroll'><table class='results'>{title}{''.join(lines)}</table></div>"


def write_gallery(root: str | os.PathLike, title: str = "vistool outputs") -> Path:
    """Write ``root/index.html`` listing the PNGs of every run directory under ``root``.

    Each subdirectory with a ``manifest.json`` becomes a section (its ``kind`` and
    options); each PNG listed in the manifest's ``outputs`` (entries with a ``png`` key,
    an optional ``caption`` and ``chart`` (shown larger, not pixelated)) becomes a figure;
    an entry with a ``table`` key (a Markdown pipe table file) becomes an HTML table. A
    ``root`` that is itself a run (it holds a ``manifest.json``) gets a page of its own
    figures.
    """
    root = Path(root)
    sections = []
    own = (root / "manifest.json").is_file()
    runs = [root] if own else sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())
    for run in runs:
        meta = json.loads((run / "manifest.json").read_text())
        figures = []
        for item in meta.get("outputs", []):
            if isinstance(item, Mapping) and "table" in item:
                figures.append(_table_html(run / item["table"], item.get("caption")))
            if not isinstance(item, Mapping) or "png" not in item:
                continue
            src = html.escape(item["png"] if own else f"{run.name}/{item['png']}")
            caption = html.escape(str(item.get("caption", item["png"])))
            kind = " class='chart'" if item.get("chart") else ""
            figures.append(
                f'<figure{kind}><a href="{src}"><img src="{src}" alt="{caption}"></a>'
                f"<figcaption>{caption}</figcaption></figure>"
            )
        options = html.escape(json.dumps(meta.get("options", {})))
        model = meta.get("model") or {}
        badge = (f"<p class='random'>RANDOM WEIGHTS ({html.escape(str(model.get('weights')))})"
                 ": these pictures show an untrained model</p>"
                 if model.get("random_weights") else "")
        sections.append(
            f"<section><h2>{html.escape(str(meta.get('kind', run.name)))} "
            f"<small><code>{html.escape(run.name)}</code></small></h2>"
            f"{badge}<p><code>{options}</code></p>{''.join(figures)}</section>"
        )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_GALLERY_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "".join(sections) + "</body></html>\n"
    )
    path = root / "index.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path
