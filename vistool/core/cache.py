"""Where trained book models are found: the vistool cache and the ``runs/`` folder.

``make demo`` caches its trained checkpoints under :func:`cache_dir`; ``vistool train``
writes ``runs/<recipe>/best.safetensors``. A book model asked for by name with the
default weights resolves to the newest such checkpoint of its architecture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["cache_dir", "checkpoint_catalogue", "trained_checkpoints"]


def cache_dir() -> Path:
    """The user cache directory of vistool (``$VISTOOL_CACHE``, ``$XDG_CACHE_HOME/vistool``
    or ``~/.cache/vistool``)."""
    root = os.environ.get("VISTOOL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vistool")
    return Path(root)


def _metadata(path: Path) -> dict:
    """What a vistool checkpoint records about itself (reads only the safetensors header);
    empty for any other file."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 0 < size < 100_000_000:
                return {}
            header = json.loads(fh.read(size))
        found = json.loads(header.get("__metadata__", {}).get("vistool", "{}"))
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def _best_files(roots: list[Path] | None) -> list[Path]:
    roots = roots if roots is not None else [cache_dir(), Path("runs")]
    found = [path for root in roots if root.is_dir() for path in root.glob("*/best.safetensors")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def trained_checkpoints(arch: str, roots: list[Path] | None = None) -> list[Path]:
    """``best.safetensors`` files of architecture ``arch`` one folder below each root
    (default: the cache directory and ``./runs``), newest first."""
    return [path for path in _best_files(roots) if _metadata(path).get("arch") == arch]


def checkpoint_catalogue(roots: list[Path] | None = None) -> list[dict]:
    """Every vistool ``best.safetensors`` one folder below the roots (as
    :func:`trained_checkpoints`), newest first, as ``{"path", "arch", "recipe", "metrics"}``."""
    items = []
    for path in _best_files(roots):
        meta = _metadata(path)
        if meta.get("arch"):
            items.append({"path": path, "arch": meta["arch"], "recipe": meta.get("recipe"),
                          "metrics": meta.get("metrics") or {}})
    return items
