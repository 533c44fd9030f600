"""Run directories: a fresh one per run, also for runs that start within the same second."""

from __future__ import annotations

from vistool import outputs


def test_default_run_directories_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(outputs, "default_run_name", lambda kind: f"20260101-000000-{kind}")
    first = outputs.resolve_run_dir(None, "gradcam")
    assert first == tmp_path.joinpath("vistool-out", "20260101-000000-gradcam").relative_to(
        tmp_path)
    with outputs.run_directory(first) as staging:
        (staging / "a.txt").write_text("a")
        # a run in flight (its staging directory) also reserves the name
        assert outputs.resolve_run_dir(None, "gradcam").name == "20260101-000000-gradcam-2"
    assert outputs.resolve_run_dir(None, "gradcam").name == "20260101-000000-gradcam-2"
    (tmp_path / "vistool-out" / "20260101-000000-gradcam-2").mkdir()
    assert outputs.resolve_run_dir(None, "gradcam").name == "20260101-000000-gradcam-3"
    assert outputs.resolve_run_dir("mine", "gradcam").name == "mine"
