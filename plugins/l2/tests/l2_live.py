"""Helpers for the l2 route tests: a real server (ZMQ data path + uvicorn) with the FS adapter on
real directories under ``tmp_path``, and our own client playing the vLLM worker over ZMQ.

``conftest.py`` puts this folder on ``sys.path`` and provides the ``make_live`` fixture."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import lmcache_plugin_fs.plugin as fs_plugin
import lmcache_plugin_l2.plugin as l2_plugin
import torch
from support import MemoryPlugin

from lmcache_core import testing
from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.hashing import TokenHasher
from lmcache_core.keys import ObjectKey, kv_rank_for_worker
from lmcache_core.server import CacheServer
from lmcache_core.transfer.client_kv import WorkerKVCache

JSON = "application/json"
HTTP_TIMEOUT = 30.0
DEADLINE_S = 30.0
MODEL = "l2-routes-model"
CHUNK = 256
BLOCK = 16
BPC = CHUNK // BLOCK  # blocks per chunk
SHAPE = (2, 128, BLOCK, 2, 8)  # NHD: (K/V, blocks, block size, heads, head size)


def plugin_specs() -> list[tuple[str, Any]]:
    """The plugins every test server loads: the l2 routes, the fs adapter, the memory adapter."""
    return [("l2", l2_plugin), ("fs", fs_plugin), ("memory-l2", MemoryPlugin())]


def parse_options(argv: Sequence[str]) -> argparse.Namespace:
    """``lmcache-server`` options as the command line gives them (with these plugins' options)."""
    return testing.parse_options(plugin_specs(), list(argv))


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """Poll ``condition`` until it is truthy (bounded); its value."""
    return testing.wait_for(condition, timeout_s, what=what)


def encoded(key: ObjectKey) -> dict[str, Any]:
    """The EncodedObjectKey JSON of ``key``."""
    return {"chunk_hash_hex": key.chunk_hash.hex(), "model_name": key.model_name, "kv_rank": key.kv_rank,
            "object_group_id": key.object_group_id, "cache_salt": key.cache_salt}


def chunk_keys(tokens: Sequence[int], model: str = MODEL, world_size: int = 1, salt: str = "") -> list[ObjectKey]:
    """The object keys the data path gives ``tokens``' full chunks (chunk-major, rank-minor)."""
    hashes = TokenHasher(CHUNK).hash_chunks(list(tokens))
    return [ObjectKey(h, model, kv_rank_for_worker(world_size, w), 0, salt)
            for h in hashes for w in range(world_size)]


@dataclass
class L2Live:
    """A started server with the l2 plugin, its URL, its FS directory and a ZMQ client."""

    server: CacheServer
    url: str
    base: Path | None
    client: LMCacheClient
    stack: contextlib.ExitStack
    workers: dict[int, WorkerKVCache] = field(default_factory=dict)

    # -- HTTP --------------------------------------------------------------------------------

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=HTTP_TIMEOUT, **kw)

    def delete(self, body: Any, *, adapter: str | None = None, raw: bytes | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
        params = {"adapter": adapter} if adapter is not None else None
        content = raw if raw is not None else json.dumps(body).encode()
        return httpx.request("DELETE", f"{self.url}/l2", params=params, content=content,
                             headers={"Content-Type": JSON, **(headers or {})}, timeout=HTTP_TIMEOUT)

    def prefetch(self, body: Any, *, raw: bytes | None = None,
                 headers: dict[str, str] | None = None) -> httpx.Response:
        content = raw if raw is not None else json.dumps(body).encode()
        return httpx.post(f"{self.url}/l2/prefetch", content=content,
                          headers={"Content-Type": JSON, **(headers or {})}, timeout=HTTP_TIMEOUT)

    def poll(self, request_id: str) -> httpx.Response:
        return self.get(f"/l2/prefetch/{request_id}")

    def wait_completed(self, request_id: str) -> dict[str, Any]:
        """Poll until the job reports completion (bounded); the completion body."""
        def done() -> dict[str, Any] | None:
            resp = self.poll(request_id)
            assert resp.status_code == 200, resp.text
            body = resp.json()
            return body if body["status"] == "completed" else None
        return wait_for(done, f"prefetch {request_id} to complete")

    def list_all(self, page_size: int = 500, **params: Any) -> list[dict[str, Any]]:
        """Every entry of ``GET /l2/keys``, following ``next_page_token`` to the end."""
        entries: list[dict[str, Any]] = []
        token = ""  # the seed's loop starts with an empty token
        for _ in range(10_000):
            resp = self.get("/l2/keys", params={**params, "page_size": page_size, "page_token": token})
            assert resp.status_code == 200, resp.text
            body = resp.json()
            entries.extend(body["entries"])
            if body["next_page_token"] is None:
                return entries
            token = body["next_page_token"]
        raise AssertionError("listing did not end")

    # -- the worker side (ZMQ) ----------------------------------------------------------------

    def worker(self, iid: int = 1, model: str = MODEL, world_size: int = 1, seed: int = 1) -> WorkerKVCache:
        """A registered shared-memory KV cache filled with random values (closed at teardown)."""
        kv = WorkerKVCache(2, SHAPE)
        self.stack.callback(kv.close)
        g = torch.Generator().manual_seed(seed)
        for layer in kv.layers:
            layer.copy_(torch.randn(layer.shape, generator=g).to(layer.dtype))
        self.client.register_kv_cache(iid, kv.descriptors(), model, world_size, {"kv_layout": "NHD"})
        self.workers[iid] = kv
        return kv

    def store(self, tokens: Sequence[int], *, iid: int = 1, model: str = MODEL, world_size: int = 1,
              worker_id: int = 0, salt: str = "", first_block: int = 0, request_id: str = "store") -> None:
        """STORE ``tokens``' chunks from blocks ``first_block...`` of worker ``iid``."""
        n = len(tokens) // CHUNK * BPC
        key = make_key(tokens, request_id, model_name=model, world_size=world_size, worker_id=worker_id,
                       cache_salt=salt)
        assert self.client.store(key, iid, [list(range(first_block, first_block + n))]) == (b"", True)
        self.client.end_session(request_id)

    def lookup(self, tokens: Sequence[int], *, model: str = MODEL, world_size: int = 1, salt: str = "",
               request_id: str = "lookup") -> int:
        """LOOKUP over ZMQ (waits for any L2 part); the hit chunk count. The session stays open."""
        return self.client.lookup(make_key(tokens, request_id, model_name=model, world_size=world_size,
                                           cache_salt=salt))

    # -- state -------------------------------------------------------------------------------

    def data_files(self) -> set[str]:
        assert self.base is not None
        return {p.name for p in self.base.iterdir() if p.name.endswith(".data")}

    def wait_files(self, n: int) -> set[str]:
        """Wait until the write-behind put at least ``n`` objects in the FS directory."""
        return wait_for(lambda: len(self.data_files()) >= n and self.data_files(), f"{n} files in L2")

    def l1_count(self) -> int:
        assert self.server.storage is not None
        return int(self.server.storage.l1.report_status()["total_object_count"])

    def warm_status(self) -> dict[str, Any]:
        return self.server.status()["storage_manager"]["warm_prefetch_jobs"]
