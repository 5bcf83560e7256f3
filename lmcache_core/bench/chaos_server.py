"""The chaos harness's server side: one real ``lmcache-server`` process, killed and restarted on the same ports.

Also what the harness reads from outside the process (``/proc``): resident memory,
open file descriptors, threads, and the worker shared-memory segments it has mapped.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from lmcache_core.testing import free_port


class ServerProc:
    """``python -m lmcache_core.cli`` with ``args``; ZMQ and HTTP ports fixed across restarts."""

    def __init__(self, args: list[str], log: Path, *, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log = log
        self.env = env
        self.port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 60.0) -> None:
        cmd = [sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(self.port),
               "--http-host", "127.0.0.1", "--http-port", str(self.http_port), *self.args]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.starts += 1
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"lmcache-server exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                if self.get("/healthcheck", timeout=1.0)[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass  # not listening yet, or the port answered with something that is not HTTP (not ours yet)
            time.sleep(0.05)  # a process starting up: nothing to wait on but its port
        raise RuntimeError(f"lmcache-server not healthy within {timeout_s} s\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (no drain, no cleanup: a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL if it outlives ``timeout_s``. The exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return int(self.proc.returncode)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # -- HTTP --------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.http + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback)
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        code, raw = self.request("GET", path, timeout=timeout)
        try:
            return code, json.loads(raw)
        except ValueError:
            return code, raw

    # -- /proc ----------------------------------------------------------------------------

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def mapped_worker_segments(self, own_prefix: str = "lmcache_srv_") -> list[str]:
        """Distinct ``/dev/shm`` files mapped by the server, its own L1 arena excluded."""
        names = set()
        for line in Path(f"/proc/{self.pid}/maps").read_text().splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/dev/shm/"):
                name = parts[5].removeprefix("/dev/shm/").removesuffix(" (deleted)")
                if not name.startswith(own_prefix):
                    names.add(name)
        return sorted(names)


__all__ = ["ServerProc"]
