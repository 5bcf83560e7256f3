"""Shared helpers of the dax tests: device files, adapters, a served server, deterministic objects."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import lmcache_plugin_reconfigure.plugin as reconfigure_plugin
import msgspec
import torch

import lmcache_plugin_dax.plugin as dax_plugin
from lmcache_core.api import L2AdapterContext, ObjectKey
from lmcache_core.config import MPConfig, StorageManagerConfig
from lmcache_core.testing import free_port, parse_options
from lmcache_plugin_dax.adapter import DaxL2Adapter
from lmcache_plugin_dax.config import DaxAdapterConfig

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIMEOUT = 30.0
OBJ = 60 * KIB  # object payload in most tests
SLOT = 64 * KIB + 4 * KIB  # holds OBJ with or without the 4 KiB persistence header
PLUGINS = [("reconfigure", reconfigure_plugin), ("dax", dax_plugin)]


def device_file(directory: Path, name: str, size: int = MIB) -> str:
    """A regular file standing in for a DAX device (sparse, ``size`` bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def gb(nbytes: int) -> float:
    """``max_dax_size_gb`` for an exact byte count."""
    return nbytes / GIB


def key(n: int, salt: str = "") -> ObjectKey:
    return ObjectKey(n.to_bytes(4, "big") * 8, "dax/model", 0, 0, salt)


_PATTERN = bytes((i * 7) % 251 for i in range(251))


@functools.lru_cache(maxsize=4096)
def payload(n: int, size: int = OBJ) -> torch.Tensor:
    """Object ``n``'s bytes: distinct per object and per position (cached: callers only read it).

    Built from bytes, not torch arithmetic: torch's intra-op threads crawl on a busy machine."""
    shift = (n * 131) % 251
    period = _PATTERN[shift:] + _PATTERN[:shift]
    raw = (period * (size // 251 + 1))[:size]
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def make_config(**fields: Any) -> DaxAdapterConfig:
    return msgspec.convert({"slot_bytes": SLOT, **fields}, DaxAdapterConfig)


def make_adapter(index: int = 0, **fields: Any) -> DaxL2Adapter:
    adapter = DaxL2Adapter(make_config(**fields), L2AdapterContext(index, "dax"))
    adapter.start()
    return adapter


def store(adapter: DaxL2Adapter, ns: list[int], size: int = OBJ) -> list[bool]:
    return adapter.store([key(n) for n in ns], [payload(n, size) for n in ns]).result(TIMEOUT)


def load_equal(adapter: DaxL2Adapter, ns: list[int], size: int = OBJ) -> list[bool]:
    """Per object: loaded and byte-equal to what was stored."""
    outs = [torch.zeros(size, dtype=torch.uint8) for _ in ns]
    ok = adapter.load([key(n) for n in ns], outs).result(TIMEOUT)
    return [good and torch.equal(out, payload(n, size)) for n, good, out in zip(ns, ok, outs)]


@dataclass
class Live:
    """A started server with dax L2 adapters, served over HTTP."""

    server: Any
    url: str
    http: httpx.Client

    @property
    def dax(self) -> list[DaxL2Adapter]:
        return [a for a in self.server.storage.l2_adapters if isinstance(a, DaxL2Adapter)]

    def post(self, operation: str, body: Any) -> httpx.Response:
        return self.http.post(f"/reconfigure/dax/{operation}", content=json.dumps(body).encode(),
                              headers={"Content-Type": "application/json"})

    def status(self) -> dict[str, Any]:
        resp = self.http.get("/reconfigure/dax/status")
        assert resp.status_code == 200, resp.text
        return resp.json()


def options(*argv: str) -> Any:
    return parse_options(PLUGINS, list(argv))


def serve_live(factory: Any, serve: Any, l2: list[dict[str, Any]], *argv: str) -> Iterator[Live]:
    server = factory(PLUGINS, options=options(*argv), configs={
        "mp": MPConfig(host="127.0.0.1", port=free_port(), worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.05, l2_adapter=l2),
    })
    url = serve(server)
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        yield Live(server, url, http)
