"""Safe checkpoint files: safetensors with JSON metadata, or ``torch.load(weights_only=True)``.

A vistool checkpoint is a ``.safetensors`` file whose metadata key ``"vistool"`` holds a
JSON object describing how to rebuild the model (``arch``, ``arch_kwargs``, ``classes``,
``input_size``, ``mean``, ``std``, metrics, training config ...). Pickled files are
never unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .files import atomic_path

__all__ = ["apply_state_dict", "load_checkpoint", "save_checkpoint"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
_PREFIXES = ("module.", "_orig_mod.")
METADATA_KEY = "vistool"


def save_checkpoint(path: str | os.PathLike, state: nn.Module | Mapping[str, torch.Tensor],
                    metadata: Mapping[str, Any] | None = None,
                    extra: Mapping[str, torch.Tensor] | None = None) -> Path:
    """Write tensors and JSON metadata to a ``.safetensors`` file atomically (temp + rename).

    ``state`` is a module (its ``state_dict()``) or a state dict; ``extra`` adds more
    named tensors (e.g. optimizer state flattened by the caller).
    """
    from safetensors.torch import save_file

    state_dict = state.state_dict() if isinstance(state, nn.Module) else dict(state)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    for key, value in (extra or {}).items():
        tensors[key] = value.detach().to("cpu").contiguous().clone()
    meta = {METADATA_KEY: json.dumps(dict(metadata or {}), sort_keys=True)}
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint safely: returns ``(state_dict, metadata)`` on the CPU.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. ``{"state_dict": ...}``/``{"model": ...}`` wrappers
    and ``module.``/``_orig_mod.`` prefixes (DataParallel, DDP, ``torch.compile``) are
    removed. Metadata is the ``vistool`` JSON object (safetensors) or the other plain
    entries of a wrapper dict (``{}`` if none).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path")
    metadata: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file, safe_open

        try:
            state = load_file(str(path), device="cpu")
            with safe_open(str(path), framework="pt") as handle:
                raw = (handle.metadata() or {}).get(METADATA_KEY)
            metadata = json.loads(raw) if raw else {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is not a readable safetensors file ({exc})"
            ) from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors come in many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"checkpoint {str(path)!r} could not be loaded safely ({first[:200]}); "
                "save a state dict with torch.save(model.state_dict(), path) or use .safetensors"
            ) from None
        state, metadata = _unwrap(obj, path)
    return _strip_prefixes(state), metadata


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict"
        )
    metadata: dict[str, Any] = {}
    while not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                obj = tensors
                break
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds no tensors at its top level nor under any of "
                f"{', '.join(_WRAPPER_KEYS)}; save the model's state_dict()"
            )
        metadata.update(
            {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool, list))}
        )
        obj = inner
    return dict(obj), metadata


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _listing(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … {len(keys) - limit} more" if len(keys) > limit else "")


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor],
                     source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` strictly, or raise one readable line naming the differences.

    The line counts missing keys, unexpected keys and shape mismatches and names the first
    few of each.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {list(state[k].shape)} vs model {list(own[k].shape)}"
        for k in own if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_listing(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches ({_listing(mismatched, 3)})")
        raise CheckpointError(
            f"{source} does not match {type(model).__name__}: " + "; ".join(parts)
            + "; check that the model and the weights belong together"
        )
    model.load_state_dict(dict(state), strict=True)
