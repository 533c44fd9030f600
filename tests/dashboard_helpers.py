"""What the dashboard tests share: a small checkpoint and a served dashboard's health."""

from __future__ import annotations

import http.client
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from vistool.core.checkpoint import save_checkpoint
from vistool.core.registry import get_model


def small_checkpoint(path: Path, classes: list[str], size: int = 64) -> Path:
    """A small shapes_cnn checkpoint (random weights, given class names) at ``path``."""
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"num_classes": len(classes), "width": 4}
    save_checkpoint(path, get_model("shapes_cnn", **kwargs),
                    {"arch": "shapes_cnn", "arch_kwargs": kwargs, "classes": classes,
                     "input_size": [3, size, size]})
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/_stcore/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def wait_until_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60):
    """Until the server answers its health check; fails the test with its log if it exits
    or does not answer in ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the dashboard exited with {proc.returncode}:\n{log.read_text()}")
        if healthy(port):
            return
        time.sleep(0.25)
    pytest.fail(f"the dashboard did not answer on port {port} in {timeout} s:\n{log.read_text()}")
