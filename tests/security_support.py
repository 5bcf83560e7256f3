"""Helpers for the attack tests (tests/test_security_*.py): RSS from /proc, bounded polling, raw clients."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from lmcache_core.client import LMCacheClient
from lmcache_core.testing import wait_for  # noqa: F401  (re-exported for the security tests)


def rss_bytes(pid: int | None = None, field: str = "VmRSS") -> int:
    """Resident set size of process ``pid`` (default: this one), from ``/proc/<pid>/status``;
    ``field="VmHWM"``: its peak so far."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} line")


def healthy_client(url: str, timeout_s: float = 5.0) -> bool:
    """A fresh well-behaved client gets NOOP answered within ``timeout_s``."""
    with LMCacheClient(url, timeout_s=timeout_s) as client:
        return client.noop() == "OK"


def raw_dealer(url: str, **options: int) -> zmq.Socket:
    """A DEALER connected to ``url`` with the given socket options (``RCVHWM=1`` ...)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(url)
    return sock


ATTACKER = Path(__file__).with_name("security_attacker.py")


def run_as_nobody(port: int | str, steps: list[dict[str, Any]], timeout_s: float = 60.0) -> dict[str, Any]:
    """Run tests/security_attacker.py as the unprivileged user ``nobody`` against 127.0.0.1:``port``
    (or the Unix socket at ``port`` when it is a path)."""
    target = {"unix": port} if isinstance(port, str) else {"host": "127.0.0.1", "port": port}
    doc = json.dumps({**target, "steps": steps})
    # The script's source goes on the command line and the child starts in "/": nobody may not be
    # able to read a checkout under a private directory (a clone in a 0700 mktemp dir).
    out = subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", ATTACKER.read_text()],
                         input=doc, capture_output=True, text=True, timeout=timeout_s, check=True, cwd="/")
    return json.loads(out.stdout)


def hexed(frames: list[bytes]) -> list[str]:
    """Frames as the attacker script takes them."""
    return [f.hex() for f in frames]


@contextlib.contextmanager
def cli_server(log_dir: Path, *extra: str) -> Iterator[tuple[int, str, str]]:
    """A real ``lmcache-server`` process on free ports: ``(pid, zmq url, http base)``."""
    from lmcache_core.testing import free_port, server_process

    port, http_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(port),
           "--http-host", "127.0.0.1", "--http-port", str(http_port), "--l1-size-gb", "0.25",
           "--log-level", "WARNING", *extra]
    base = f"http://127.0.0.1:{http_port}"
    with server_process(cmd, f"{base}/healthcheck", log=log_dir / "server.log") as proc:
        yield proc.pid, f"tcp://127.0.0.1:{port}", base
