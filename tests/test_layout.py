"""The shape of the code: small functions, one-way imports, a cheap CLI start, the public API."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

import vistool
from vistool.core import registry

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
# The public names of vistool 0.1 before the layout changed: users' code must keep working.
PUBLIC_API_0_1 = {
    "ATTRIBUTION_METHODS", "CAM_METHODS", "ActivationResult", "AttributionResult", "CamResult",
    "CheckpointError", "ConstantMapWarning", "ImageError", "LayerError", "LayerInfo",
    "LoadedModel", "ModelError", "Recording", "TargetError", "VistoolError", "WeightsError",
    "__version__", "activations", "apply_state_dict", "attribute", "channel_stats",
    "default_layer", "deprocess", "expand_inputs", "explain", "layer_table", "list_models",
    "load_checkpoint", "load_image", "load_model", "preprocess", "preserved_state", "record",
    "resolve_device", "save_checkpoint",
}


def _functions(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield f"{path.relative_to(ROOT)}:{node.lineno} {node.name}", (
                    node.end_lineno - node.lineno + 1)


@pytest.mark.parametrize("folder", ["vistool", "trainers", "dashboard"])
def test_no_function_is_longer_than_sixty_lines(folder):
    long = {name: n for name, n in _functions(folder) if n > MAX_FUNCTION_LINES}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_public_api_is_explicit_and_keeps_every_old_name():
    assert set(vistool.__all__) == set(vistool._EXPORTS) | {"__version__"}
    assert set(vistool.__all__) >= PUBLIC_API_0_1
    for name in vistool.__all__:
        assert getattr(vistool, name) is not None
    assert callable(vistool.explain) and callable(vistool.activations)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = vistool.nope


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_help_and_argument_errors_do_not_import_torch():
    done = _run_python(
        "import sys\n"
        "from vistool.cli import main\n"
        "try:\n"
        "    main(['gradcam', '--model', 'resnet18', '--topk', '0', 'x.png'])\n"
        "except SystemExit as exc:\n"
        "    print('status', exc.code)\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch imported:', 'torch' in sys.modules)\n")
    assert "status 2" in done.stdout
    assert "--topk: must be at least 1, got 0" in done.stderr
    assert "attribute" in done.stdout and "gradcam" in done.stdout  # --help lists commands
    assert "torch imported: False" in done.stdout


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(tree), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
                          capture_output=True, text=True, cwd=tree, env=env, timeout=300)


def test_import_contracts_hold_and_a_library_import_of_trainers_breaks_them(tmp_path):
    for name in ("vistool", "trainers", "dashboard"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    kept = _lint_imports(tmp_path)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "0 broken" in kept.stdout
    errors = tmp_path / "vistool" / "core" / "errors.py"
    errors.write_text(errors.read_text() + "\nimport trainers.recipes  # noqa\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "The library never imports trainers or the dashboard" in broken.stdout
    assert "BROKEN" in broken.stdout


def test_models_come_from_entry_points_and_plugins_can_add_their_own(tmp_path, monkeypatch):
    declared = {ep.value for ep in importlib.metadata.entry_points(
        group=registry.ENTRY_POINT_GROUP)}
    assert "trainers.models" in declared
    (tmp_path / "toy_plugin.py").write_text(
        "from torch import nn\n"
        "from vistool import register_model\n\n"
        "@register_model('toy_net', input_size=(1, 8, 8), mean=(0.5,), std=(0.5,))\n"
        "def toy_net(num_classes=3):\n"
        "    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(2, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = EntryPoint(name="toy", value="toy_plugin", group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [plugin])
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    assert "toy_net" in vistool.list_models()["book"]
    loaded = vistool.load_model("toy_net", weights="none", device="cpu")
    assert loaded.input_size == (1, 8, 8) and loaded.random_weights is True
    assert loaded.default_layer == "0"


def test_a_broken_plugin_is_one_clear_error(tmp_path, monkeypatch):
    plugin = EntryPoint(name="broken", value="no_such_plugin_module",
                        group=registry.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry, "entry_points", lambda group: [plugin])
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.raises(vistool.ModelError, match=r"model plugin 'broken'.*failed to import"):
        registry.list_models()
