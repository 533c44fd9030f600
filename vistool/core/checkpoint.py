"""Safe checkpoint files: safetensors with JSON metadata, or ``torch.load(weights_only=True)``.

A vistool checkpoint is a ``.safetensors`` file whose metadata key ``"vistool"`` holds a
JSON object describing how to rebuild the model (``arch``, ``arch_kwargs``, ``classes``,
``input_size``, ``mean``, ``std``, metrics, training config ...). Pickled files are
never unpickled beyond tensors and plain containers.

Whether weights fit a model is torch's decision (``load_state_dict(strict=True)``, which
e.g. fills in the ``num_batches_tracked`` that BatchNorm checkpoints from before torch 0.4.1
lack); vistool only turns torch's verdict into one readable line and leaves the model as it
was when loading fails.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections import OrderedDict
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
    ``torch.load(weights_only=True)``, whose warnings are silenced: a file holding anything
    but tensors and plain containers (a whole pickled model, arbitrary objects) is refused
    with one line saying so. ``{"state_dict": ...}``/``{"model": ...}`` wrappers and
    ``module.``/``_orig_mod.`` prefixes (DataParallel, DDP, ``torch.compile``) are removed;
    torch's per-module version record (``state_dict._metadata``) is kept. Metadata is the
    ``vistool`` JSON object (safetensors) or the other plain entries of a wrapper dict
    (``{}`` if none).
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
        state, metadata = _unwrap(_torch_load(path), path)
    return _strip_prefixes(state), metadata


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` without torch's warnings; failures become one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4 ..."
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise _refusal(path, exc) from None


def _refusal(path: Path, exc: Exception) -> CheckpointError:
    """Why torch could not load ``path`` safely, in one line that says what to do."""
    names = _pickled_globals(path)
    where = f"checkpoint {str(path)!r}"
    if any(name.startswith("torch.nn.modules.") for name in names):
        return CheckpointError(
            f"{where} holds a whole pickled model (torch.save(model)), which could not be "
            "loaded safely, so it was not loaded; save the weights instead with "
            "torch.save(model.state_dict(), path) or use .safetensors"
        )
    if names:
        return CheckpointError(
            f"{where} holds objects other than tensors and plain containers "
            f"({_listing(names, 3)}), which could not be loaded safely, so it was not loaded; "
            "save model.state_dict() with torch.save or use .safetensors"
        )
    if isinstance(exc, pickle.UnpicklingError):
        detail = "torch cannot unpickle it"
    else:
        detail = f"{type(exc).__name__}: {_first_sentence(str(exc))}".rstrip(": ")
    return CheckpointError(
        f"{where} is not a checkpoint torch.save wrote, or it is damaged ({detail}); "
        "save a state dict with torch.save(model.state_dict(), path) or use .safetensors"
    )


def _first_sentence(text: str, limit: int = 160) -> str:
    sentence = text.strip().splitlines()[0] if text.strip() else ""
    sentence = re.split(r"(?<=[.!?])\s", sentence, maxsplit=1)[0]
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " …"
    return sentence


def _pickled_globals(path: Path) -> list[str]:
    """The classes and functions the pickle in ``path`` names beyond torch's own, read
    without unpickling anything (to explain a refusal, never to decide one)."""
    try:
        if zipfile.is_zipfile(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
                    return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(member)
        else:
            with open(path, "rb") as handle:
                data = handle.read(16 << 20)  # the pickles come before any tensor data
    except (OSError, StopIteration, ValueError, RuntimeError, zipfile.BadZipFile):
        return []
    return [name for name in _scan_globals(data)
            if name != "collections.OrderedDict"
            and not (name.startswith("torch.") and not name.startswith("torch.nn.modules."))]


def _scan_globals(data: bytes, pickles: int = 5) -> list[str]:
    """Global names in the first ``pickles`` pickles of ``data`` (a legacy torch file holds
    several in a row), found with ``pickletools`` (which never builds objects)."""
    stream, names = io.BytesIO(data), []
    for _ in range(pickles):
        memo: dict[int, Any] = {}
        pushed: list[Any] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(pushed) >= 2:
                    names.append(f"{pushed[-2]}.{pushed[-1]}")
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = pushed[-1] if pushed else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[int(arg)] = pushed[-1] if pushed else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(int(arg)))
                elif op.name not in ("PROTO", "FRAME", "STOP"):
                    pushed.append(arg if isinstance(arg, str) else None)
        except Exception:  # garbage, truncation or tensor bytes: nothing more to read
            break
    return names


def _is_state_dict(obj: Mapping) -> bool:
    """Every value a tensor, or a module's ``get_extra_state()`` (which torch loads too)."""
    return all(isinstance(v, torch.Tensor) or str(k).rsplit(".", 1)[-1] == "_extra_state"
               for k, v in obj.items())


def _as_state(obj: Mapping, keys=None) -> OrderedDict:
    """An ``OrderedDict`` of ``obj`` (only ``keys`` if given) that keeps torch's
    ``_metadata`` (module versions, which decide e.g. BatchNorm's backward compatibility)."""
    state = OrderedDict((k, v) for k, v in obj.items() if keys is None or k in keys)
    metadata = getattr(obj, "_metadata", None)
    if metadata is not None:
        state._metadata = OrderedDict(metadata)  # type: ignore[attr-defined]
    return state


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict"
        )
    metadata: dict[str, Any] = {}
    while not _is_state_dict(obj):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            tensors = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
            if tensors:
                return _as_state(obj, set(tensors)), metadata
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds no tensors at its top level nor under any of "
                f"{', '.join(_WRAPPER_KEYS)}; save the model's state_dict()"
            )
        metadata.update(
            {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool, list))}
        )
        obj = inner
    return _as_state(obj), metadata


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

    state = _as_state(state)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            consume_prefix_in_state_dict_if_present(state, prefix)  # keys and _metadata
    return state


def _align_prefixes(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Mapping:
    """Give ``state`` back the ``module.``/``_orig_mod.`` prefix that every key of ``model``
    has (a DataParallel or compiled model given as a module) when none of its keys has it."""
    own = list(model.state_dict())
    for prefix in _PREFIXES:
        if (own and state and all(k.startswith(prefix) for k in own)
                and not any(k.startswith(prefix) for k in state)):
            aligned = OrderedDict((prefix + k, v) for k, v in state.items())
            metadata = getattr(state, "_metadata", None)
            if metadata is not None:
                aligned._metadata = OrderedDict(  # type: ignore[attr-defined]
                    (prefix + k if k else prefix[:-1], v) for k, v in metadata.items())
            return aligned
    return state


def _listing(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … {len(keys) - limit} more" if len(keys) > limit else "")


def _snapshot(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(live tensor, CPU copy) for every entry of the model's state that holds data."""
    from torch.nn.parameter import is_lazy

    live = [t for t in model.state_dict(keep_vars=True).values()
            if isinstance(t, torch.Tensor) and not is_lazy(t) and not t.is_meta]
    return [(t, t.detach().to("cpu", copy=True)) for t in live]


def _restore(snapshot: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for live, saved in snapshot:
            live.copy_(saved)


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (?P<key>.+?): copying a param with shape torch\.Size\((?P<file>\[.*?\])\)"
    r" from checkpoint, the shape in current model is torch\.Size\((?P<own>\[.*?\])\)"
)


def _mismatch_message(model: nn.Module, source: str, keys: dict[str, list[str]],
                      error: RuntimeError) -> str:
    """torch's load_state_dict error as one line: counts and the first few names of each kind."""
    messages = str(error).split("\n\t")[1:]  # torch: a header, then one problem per line
    mismatched, other = [], []
    for text in messages:
        if text.startswith(("Missing key(s)", "Unexpected key(s)")):
            continue
        found = _SIZE_MISMATCH.search(text)
        if found:
            mismatched.append(f"{found['key']} {found['file']} vs model {found['own']}")
        else:
            other.append(" ".join(text.split()))
    parts = []
    if keys.get("missing"):
        parts.append(f"{len(keys['missing'])} missing keys ({_listing(keys['missing'])})")
    if keys.get("unexpected"):
        parts.append(f"{len(keys['unexpected'])} unexpected keys "
                     f"({_listing(keys['unexpected'])})")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches ({_listing(mismatched, 3)})")
    if other:
        parts.append(f"{len(other)} other problems ({other[0]})")
    if not parts:
        parts.append(" ".join(str(error).split()))
    return (f"{source} does not match {type(model).__name__}: " + "; ".join(parts)
            + "; check that the model and the weights belong together")


def apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor],
                     source: str = "checkpoint") -> None:
    """Load ``state`` into ``model`` as ``model.load_state_dict(state, strict=True)`` does,
    or raise one readable line naming the differences and leave ``model`` unchanged.

    torch decides what fits (it fills in BatchNorm's ``num_batches_tracked`` for old
    checkpoints, accepts ``get_extra_state`` entries, lazy parameters ...); the line counts
    the missing keys, unexpected keys and shape mismatches torch found and names the first
    few of each. torch copies the matching tensors before it raises, so the model's state is
    saved first and put back on failure. When every key of ``model`` starts with
    ``module.`` or ``_orig_mod.`` (a DataParallel or compiled model) and no key of ``state``
    does, the prefix is added.
    """
    state = _align_prefixes(model, state)
    snapshot = _snapshot(model)
    keys: dict[str, list[str]] = {}

    def record(_module: nn.Module, incompatible) -> None:
        """torch's post-load hook: the root sees every missing and unexpected key."""
        keys.update(missing=list(incompatible.missing_keys),
                    unexpected=list(incompatible.unexpected_keys))

    handle = model.register_load_state_dict_post_hook(record)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        _restore(snapshot)
        raise CheckpointError(_mismatch_message(model, source, keys, exc)) from None
    except BaseException:
        _restore(snapshot)
        raise
    finally:
        handle.remove()
