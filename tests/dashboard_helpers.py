"""What the dashboard tests share: a small checkpoint, a served dashboard's health, its
start-up line, the addresses it listens on, and stopping it."""

from __future__ import annotations

import http.client
import os
import signal
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


def listening_addresses(pid: int, port: int) -> set[str]:
    """The local addresses on which process ``pid`` listens on TCP ``port``, read from
    ``/proc``: its sockets' inodes (``/proc/PID/fd``) matched with the LISTEN rows of
    ``/proc/PID/net/tcp`` and ``tcp6``."""
    import ipaddress

    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] != "0A" or int(hex_port, 16) != port or fields[9] not in inodes:
                continue
            raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(packed)))
    return found


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM, as a service manager would; kill after 30 s. Returns the exit status."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def start_line(log: Path, timeout: float = 30) -> str:
    """The ``vistool dashboard: listening on …`` line of a server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("vistool dashboard: listening on "):
                return line
        time.sleep(0.2)
    pytest.fail(f"no start-up line in the dashboard's log:\n{log.read_text()}")
