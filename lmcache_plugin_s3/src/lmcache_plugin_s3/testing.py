"""Real S3 endpoints for tests and benchmarks: moto's server mode in a subprocess, and a hung endpoint.

* :class:`MotoS3` runs ``python -m moto.server`` on 127.0.0.1 (a free port, or a
  given one so it can be stopped and started again where clients expect it).
  ``moto[server]`` is in this plugin's ``test`` extra.
* :class:`HungEndpoint` accepts TCP connections and never answers: S3 hanging.
* :func:`hosts_namespace_cmd` wraps a command so it runs in a private mount
  namespace whose ``/etc/hosts`` maps ``<bucket>.localhost`` to 127.0.0.1: how a
  virtual-hosted client (LMCache's adapter, or ours with the default style) reaches
  a local server without DNS. Needs ``unshare`` and root.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from lmcache_core.testing import free_port, stop_process_group, wait_http

ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"


class MotoS3:
    """moto's S3 in server mode on 127.0.0.1:``port``; ``start()``/``stop()`` may repeat (state is lost on stop)."""

    def __init__(self, port: int | None = None, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> MotoS3:
        out: Any = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if self.log is not None:
                out.close()
        wait_http(f"{self.url}/moto-api/", self.proc, timeout_s=timeout_s)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc)
            self.proc = None

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> Any:
        """A plain boto3 client (path style) with the test credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY,
                            config=Config(s3={"addressing_style": "path"}, max_pool_connections=64,
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def adapter_config(self, bucket: str, *, style: str = "path", **extra: Any) -> dict[str, Any]:
        """An ``--l2-adapter`` object for this server (``style`` ``virtual`` needs ``<bucket>.localhost``)."""
        if style == "path":
            cfg = {"s3_endpoint": f"127.0.0.1:{self.port}", "s3_addressing_style": "path", "s3_bucket": bucket}
        else:
            cfg = {"s3_endpoint": f"{bucket}.localhost:{self.port}"}
        return {"type": "s3", **cfg, "s3_region": REGION, "disable_tls": True, "aws_access_key_id": ACCESS_KEY,
                "aws_secret_access_key": SECRET_KEY, **extra}


class HungEndpoint:
    """A TCP listener on 127.0.0.1:``port`` that accepts every connection and never sends a byte."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(256)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="hung-s3", daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._held.append(conn)

    @property
    def accepted(self) -> int:
        return len(self._held)

    def __enter__(self) -> HungEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._thread.join(timeout=10)
        for conn in self._held:
            conn.close()


def hosts_namespace_cmd(cmd: list[str], hosts_file: Path, names: list[str]) -> list[str]:
    """``cmd`` in a private mount namespace whose ``/etc/hosts`` also maps each of ``names`` to 127.0.0.1."""
    base = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
    hosts_file.write_text(base + "".join(f"127.0.0.1 {name}\n" for name in names))
    inner = f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts && exec {shlex.join(cmd)}"
    return ["unshare", "-m", "sh", "-c", inner]


def namespaces_available() -> bool:
    """Whether :func:`hosts_namespace_cmd` can work here (root and ``unshare``)."""
    return os.geteuid() == 0 and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


__all__ = ["ACCESS_KEY", "REGION", "SECRET_KEY", "HungEndpoint", "MotoS3", "hosts_namespace_cmd",
           "namespaces_available"]
