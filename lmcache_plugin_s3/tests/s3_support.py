"""HTTP and process helpers shared by the s3 server-level tests."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lmcache_plugin_s3.testing import MotoS3, clean_env, serve_cmd

from lmcache_core.testing import free_port, server_process

DEADLINE_S = 60.0


def http_json(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback)
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def s3_status(http: str) -> dict[str, Any]:
    return http_json("GET", f"{http}/status")[1]["storage_manager"]["l2_adapters"][0]


def until(what: str, fn: Any, deadline_s: float = DEADLINE_S, context: Any = None) -> Any:
    """Poll ``fn`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {context() if context else ''}"
        time.sleep(0.05)


def flushed(http: str, stored: int) -> bool:
    sc = http_json("GET", f"{http}/status")[1]["storage_manager"]["store_controller"]
    return sc["pending_keys_count"] == 0 and sc["in_flight_key_count"] == 0 and sc["stored_keys"] >= stored


@contextlib.contextmanager
def our_server(adapter: dict[str, Any], log: Path, *, wrap: Any = None, extra: tuple[str, ...] = ()) -> Iterator[
        tuple[str, str, subprocess.Popen]]:
    zp, hp = free_port(), free_port()
    cmd = serve_cmd(zp, hp, adapter, *extra)
    with server_process(wrap(cmd) if wrap else cmd, f"http://127.0.0.1:{hp}/healthcheck", env=clean_env(),
                        log=log) as proc:
        yield f"tcp://127.0.0.1:{zp}", f"http://127.0.0.1:{hp}", proc


def bucket_objects(moto: MotoS3, bucket: str) -> list[str]:
    return [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
