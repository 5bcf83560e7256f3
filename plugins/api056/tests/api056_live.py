"""Helpers for the api056 route tests: the plugins a test server loads (the routes, the FS adapter, a
``memory`` adapter that cannot list, a reconfigurable ``knob`` adapter) and :class:`Live`, a served server
with our own client playing the vLLM worker over ZMQ. ``conftest.py`` builds them (``make_live``)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import lmcache_plugin_fs.plugin as fs_plugin
import torch
from support import MemoryAdapter, MemoryPlugin

import lmcache_plugin_api056.plugin as api056
from lmcache_core import hookimpl
from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.hashing import TokenHasher
from lmcache_core.keys import ObjectKey, kv_rank_for_worker
from lmcache_core.server import CacheServer
from lmcache_core.storage.l2.base import L2AdapterConfig, Reconfigurable, ReconfigureError
from lmcache_core.testing import wait_for as testing_wait_for
from lmcache_core.transfer.client_kv import WorkerKVCache

MODEL = "api056-model"
CHUNK, BLOCK = 256, 16
BPC = CHUNK // BLOCK
SHAPE = (2, 64, BLOCK, 2, 8)  # NHD: (K/V, blocks, block size, heads, head size)
TIMEOUT_S = 30.0


class KnobAdapter(MemoryAdapter, Reconfigurable):
    """A memory adapter with one runtime knob: ``set {"value": int}`` (``busy`` refuses with 409)."""

    def __init__(self, config: Any, context: Any) -> None:
        self.value = 0
        super().__init__(config, context)

    def reconfigure_operations(self) -> list[str]:
        return ["set", "explode"]

    def reconfigure(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        if operation == "explode":
            raise ReconfigureError(507, "no room", payload={"error": "no room", "needed": 1})
        value = params.get("value")
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("value must be an integer")
        if params.get("busy"):
            raise RuntimeError("busy")
        self.value = value
        return {"value": value}

    def reconfigure_status(self) -> dict[str, Any]:
        return {"value": self.value}


class KnobPlugin:
    class Config(L2AdapterConfig, kw_only=True, forbid_unknown_fields=True):
        pass

    @staticmethod
    @hookimpl
    def lmcache_register_l2_adapters(register: Any) -> None:
        register("knob", KnobPlugin.Config, lambda config, context: KnobAdapter(config, context))


def plugin_specs() -> list[tuple[str, Any]]:
    return [("api056", api056), ("fs", fs_plugin), ("memory-l2", MemoryPlugin()), ("knob-l2", KnobPlugin())]


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = TIMEOUT_S) -> Any:
    """Poll ``condition`` until truthy (bounded); its value."""
    return testing_wait_for(condition, timeout_s=timeout_s, what=what)


def encoded(key: ObjectKey) -> dict[str, Any]:
    return {"chunk_hash_hex": key.chunk_hash.hex(), "model_name": key.model_name, "kv_rank": key.kv_rank,
            "object_group_id": key.object_group_id, "cache_salt": key.cache_salt}


def chunk_keys(tokens: Sequence[int], model: str = MODEL) -> list[ObjectKey]:
    """The keys the data path gives ``tokens``' full chunks (world size 1, rank 0)."""
    return [ObjectKey(h, model, kv_rank_for_worker(1, 0), 0, "") for h in TokenHasher(CHUNK).hash_chunks(list(tokens))]


@dataclass
class Live:
    server: CacheServer
    url: str
    base: Path
    stack: contextlib.ExitStack
    client: LMCacheClient | None = None

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                **kw: Any) -> httpx.Response:
        content = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", content=content, headers=headers, timeout=TIMEOUT_S, **kw)

    def worker(self, iid: int = 1, model: str = MODEL) -> WorkerKVCache:
        """A registered shared-memory KV cache with random values (closed at teardown)."""
        assert self.client is not None
        kv = WorkerKVCache(2, SHAPE)
        self.stack.callback(kv.close)
        g = torch.Generator().manual_seed(iid)
        for layer in kv.layers:
            layer.copy_(torch.randn(layer.shape, generator=g).to(layer.dtype))
        self.client.register_kv_cache(iid, kv.descriptors(), model, 1, {"kv_layout": "NHD"})
        return kv

    def store(self, tokens: Sequence[int], *, iid: int = 1, request_id: str = "store") -> None:
        assert self.client is not None
        n = len(tokens) // CHUNK * BPC
        key = make_key(list(tokens), request_id, model_name=MODEL, world_size=1, worker_id=0)
        assert self.client.store(key, iid, [list(range(n))]) == (b"", True)
        self.client.end_session(request_id)

    def l1_count(self) -> int:
        assert self.server.storage is not None
        return int(self.server.storage.l1.report_status()["total_object_count"])

    def fs_files(self) -> int:
        return sum(1 for p in self.base.iterdir() if p.name.endswith(".data")) if self.base.exists() else 0


