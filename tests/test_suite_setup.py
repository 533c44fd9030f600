"""The test suite's own machinery (tests/conftest.py): the trained shapes model's cache
follows the sources it was trained from, and a missing peer or browser skips with its reason,
or fails under ``CI=true``."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
from conftest import PEERS, ROOT, SHAPES_SOURCES, missing, require_peer, shapes_cache_key


@pytest.fixture
def sources(tmp_path):
    """A copy of the sources the trained shapes model depends on, and one it does not."""
    for source in SHAPES_SOURCES:
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, tmp_path / source,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / source, tmp_path / source)
    shutil.copy(ROOT / "vistool" / "drawing.py", tmp_path / "vistool" / "drawing.py")
    return tmp_path


@pytest.mark.parametrize("changed", ["trainers/loop.py", "trainers/recipes.py",
                                     "trainers/models/__init__.py", "vistool/data/shapes.py",
                                     "vistool/core/checkpoint.py"])
def test_the_trained_model_cache_key_follows_the_trainers_and_the_data(sources, changed):
    key = shapes_cache_key(sources)
    assert key == shapes_cache_key(sources)
    assert key == shapes_cache_key(ROOT)  # the path of the checkout does not matter
    (sources / "vistool" / "drawing.py").write_text("# not something the model depends on\n")
    assert shapes_cache_key(sources) == key
    path = sources / changed
    path.write_text(path.read_text() + "\n# changed\n")
    assert shapes_cache_key(sources) != key


def test_the_trained_model_is_cached_under_its_key(trained_shapes):
    checkpoint, _ = trained_shapes
    assert checkpoint.parent.parent.name == f"trained-shapes-cnn-{shapes_cache_key()}"


def test_a_missing_peer_skips_with_its_reason_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="'no_such_peer' cannot be imported"):
        require_peer("no_such_peer")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no_such_peer.*CI=true: this test must"):
        require_peer("no_such_peer")
    with pytest.raises(pytest.fail.Exception, match="no chromium"):
        missing("no chromium")


def test_the_peers_are_there():
    """`make test` installs them where the tests find them, each its pinned version (their
    tests compare with them: tests/test_cam_peers.py, tests/test_cam.py, tests/test_quality.py)."""
    from importlib.metadata import version

    require_peer("ttach")  # puts .venv/peers on sys.path (a quick import)
    for module, dist, pinned in (("pytorch_grad_cam", "grad-cam", "1.5.7"),
                                 ("torchcam", "torchcam", "0.5.0"),
                                 ("quantus", "quantus", "0.6.0"), ("ttach", "ttach", "0.0.3")):
        spec = importlib.util.find_spec(module)
        assert spec is not None and str(PEERS) in spec.origin, module
        assert version(dist) == pinned
