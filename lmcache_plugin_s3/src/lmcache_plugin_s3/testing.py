"""Real S3 endpoints for tests and benchmarks: moto's server mode in a subprocess, and a hung endpoint.

* :class:`MotoS3` runs ``python -m moto.server`` on 127.0.0.1 (a free port, or a
  given one so it can be stopped and started again where clients expect it).
  ``moto[server]`` is in this plugin's ``test`` extra.
* :class:`HungEndpoint` accepts TCP connections and never answers: S3 hanging.
* :class:`Worker` plays a vLLM worker against a server (ours or LMCache's): a small
  CPU KV cache, deterministic contents per sequence, STORE / LOOKUP / RETRIEVE.
* :func:`serve_cmd` is the ``lmcache-server`` command line with an s3 L2.
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


def stable_port() -> int:
    """A free 127.0.0.1 port *below* the ephemeral range, for a server that is stopped and started again.

    A port :func:`~lmcache_core.testing.free_port` hands out is ephemeral: while the server
    is down, the kernel may give that very port to an outgoing connection (any process's,
    or a client's own connect to it: a TCP self-connect), and "S3 is down" stops being
    true. Ports under the range are never picked by the kernel.
    """
    import random

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]) \
        if Path("/proc/sys/net/ipv4/ip_local_port_range").exists() else 32768
    for port in random.Random().sample(range(max(1024, low - 12000), low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


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


CHUNK, BLOCK = 256, 16
BPC = CHUNK // BLOCK
KV_SHAPE = (2, 128, BLOCK, 2, 8)  # NHD: (K/V, blocks, block size, heads, head size): 2 KiB fp16 per block
KV_LAYERS = 2


def tokens_for(seq: int, chunks: int) -> list[int]:
    """``chunks`` full chunks of token ids that differ from every other ``seq``'s."""
    return [(seq * 100_003 + i * 7) % 50_000 for i in range(chunks * CHUNK)]


class Worker:
    """A vLLM worker stand-in speaking the real wire protocol (our client drives either server)."""

    def __init__(self, zmq_url: str, instance_id: int, model: str, *, timeout_s: float = 30.0,
                 cache_salt: str = "") -> None:
        import torch

        from lmcache_core.testing import LMCacheClient
        from lmcache_core.testing import WorkerKVCache

        self._torch = torch
        self.model = model
        self.salt = cache_salt
        self.instance_id = instance_id
        self.kv = WorkerKVCache(KV_LAYERS, KV_SHAPE)
        self.client = LMCacheClient(zmq_url, timeout_s=timeout_s)
        self.client.register_kv_cache(instance_id, self.kv.descriptors(), model, 1, {"kv_layout": "NHD"})
        self._n = 0

    def _request(self, what: str) -> str:
        self._n += 1
        return f"{what}-{self.instance_id}-{self._n}"

    def fill(self, seq: int, chunks: int) -> list[Any]:
        """Seeded KV for ``seq`` in blocks ``[0, chunks*BPC)``; the bytes it wrote (as int16, NaN-safe)."""
        gen = self._torch.Generator().manual_seed(seq)
        out = []
        for layer in self.kv.layers:
            part = layer[:, :chunks * BPC].view(self._torch.int16)
            part.random_(generator=gen)
            out.append(part.clone())
        return out

    def store(self, seq: int, chunks: int) -> tuple[bool, list[Any]]:
        from lmcache_core.testing import make_key

        stored = self.fill(seq, chunks)
        rid = self._request("store")
        _, ok = self.client.store(make_key(tokens_for(seq, chunks), rid, model_name=self.model, worker_id=0,
                                           cache_salt=self.salt), self.instance_id, [list(range(chunks * BPC))])
        self.client.end_session(rid)
        return bool(ok), stored

    def lookup(self, seq: int, chunks: int) -> int:
        """LOOKUP hits (chunks), prefetching from L2 what L1 lacks; the session is ended."""
        from lmcache_core.testing import make_key

        rid = self._request("lookup")
        hits = self.client.lookup(make_key(tokens_for(seq, chunks), rid, model_name=self.model, cache_salt=self.salt))
        self.client.end_session(rid)
        return hits

    def lookup_retrieve(self, seq: int, chunks: int) -> tuple[int, bool, list[Any]]:
        """LOOKUP then RETRIEVE into zeroed blocks: (hits, ok, the retrieved bytes as int16)."""
        from lmcache_core.testing import make_key

        for layer in self.kv.layers:
            layer.zero_()
        rid = self._request("read")
        hits = self.client.lookup(make_key(tokens_for(seq, chunks), rid, model_name=self.model, cache_salt=self.salt))
        ok = False
        if hits == chunks:
            _, ok = self.client.retrieve(make_key(tokens_for(seq, chunks), rid, model_name=self.model, worker_id=0,
                                                  cache_salt=self.salt), self.instance_id, [list(range(chunks * BPC))])
        self.client.end_session(rid)
        got = [layer[:, :chunks * BPC].view(self._torch.int16).clone() for layer in self.kv.layers]
        return hits, bool(ok), got

    def close(self) -> None:
        try:
            self.client.unregister_kv_cache(self.instance_id)
        finally:
            self.client.close()
            self.kv.close()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without ``LMCACHE_*`` (a developer's shell must not change what is tested)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env.update(extra)
    return env


def serve_cmd(zmq_port: int, http_port: int, adapter: dict[str, Any], *extra: str) -> list[str]:
    """``lmcache-server`` on 127.0.0.1 with one L2 adapter (as JSON) and ``extra`` flags."""
    import json

    return [sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zmq_port),
            "--http-port", str(http_port), "--l1-size-gb", "1", "--log-level", "WARNING",
            "--l2-adapter", json.dumps(adapter), *extra]


def hosts_namespace_cmd(cmd: list[str], hosts_file: Path, names: list[str]) -> list[str]:
    """``cmd`` in a private mount namespace whose ``/etc/hosts`` also maps each of ``names`` to 127.0.0.1."""
    base = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
    hosts_file.write_text(base + "".join(f"127.0.0.1 {name}\n" for name in names))
    inner = f"mount --bind {shlex.quote(str(hosts_file))} /etc/hosts && exec {shlex.join(cmd)}"
    return ["unshare", "-m", "sh", "-c", inner]


def namespaces_available() -> bool:
    """Whether :func:`hosts_namespace_cmd` can work here (root and ``unshare``)."""
    return os.geteuid() == 0 and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


__all__ = ["stable_port", "ACCESS_KEY", "REGION", "SECRET_KEY", "HungEndpoint", "MotoS3", "Worker", "clean_env",
           "hosts_namespace_cmd", "namespaces_available", "serve_cmd", "tokens_for"]
