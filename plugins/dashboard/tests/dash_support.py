"""Helpers of the dashboard tests: a live server with the dashboard, a memory L2 (or none, or
several) and a worker driven over ZMQ by our client; what ``/status`` and ``/metrics`` say.

``conftest.py`` puts this folder on ``sys.path``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import lmcache_plugin_dashboard.plugin as dashboard_plugin
import lmcache_plugin_inspect.plugin as inspect_plugin
import lmcache_plugin_metrics.plugin as metrics_plugin
import torch
from prometheus_client.parser import text_string_to_metric_families
from support import MemoryPlugin

from lmcache_core import testing
from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.config import MPConfig, StorageManagerConfig
from lmcache_core.testing import free_port
from lmcache_core.transfer.client_kv import WorkerKVCache

HTTP_TIMEOUT = 30.0
DEADLINE_S = 30.0
MODEL = "dashboard-model"
CHUNK = 256
BLOCK = 16
BPC = CHUNK // BLOCK
SHAPE = (2, 256, BLOCK, 2, 8)  # NHD: (K/V, blocks, block size, heads, head size)


def plugin_specs() -> list[tuple[str, Any]]:
    """The dashboard, and the routes it is compared with (``/status``, ``/conf``, ``/metrics``)."""
    return [("dashboard", dashboard_plugin), ("inspect", inspect_plugin), ("metrics", metrics_plugin),
            ("memory-l2", MemoryPlugin())]


def parse_options(argv: Sequence[str]) -> argparse.Namespace:
    """``lmcache-server`` options as the command line gives them (with the dashboard's)."""
    return testing.parse_options(plugin_specs(), list(argv))


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    """Poll ``condition`` until it is truthy (bounded); its value."""
    return testing.wait_for(condition, timeout_s, what=what)


def make_live(factory: Any, *, l2: int = 1, argv: Sequence[str] = (), start: bool = True,
              storage: dict[str, Any] | None = None, **mp: Any) -> tuple[Any, int]:
    """A server with the dashboard and ``l2`` memory adapters; ``(server, zmq port)``."""
    port = free_port()
    return factory(plugin_specs(), options=parse_options(argv), start=start, configs={
        "mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0, **mp),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.05, l2_adapter=[{"type": "memory"}] * l2,
                                                **(storage or {})),
    }), port


class Worker:
    """A vLLM worker played by our client: one registered shared-memory KV cache."""

    def __init__(self, zmq_port: int, iid: int = 1, model: str = MODEL) -> None:
        self.client = LMCacheClient(f"tcp://127.0.0.1:{zmq_port}", timeout_s=20)
        self.kv = WorkerKVCache(2, SHAPE)
        self.model = model
        self.iid = iid
        g = torch.Generator().manual_seed(iid)
        for layer in self.kv.layers:
            layer.copy_(torch.randn(layer.shape, generator=g).to(layer.dtype))
        self.client.register_kv_cache(iid, self.kv.descriptors(), model, 1, {"kv_layout": "NHD"})
        self._n = 0

    def close(self) -> None:
        self.client.close()
        self.kv.close()

    def _rid(self, kind: str) -> str:
        self._n += 1
        return f"{kind}-{self._n}"

    def store(self, tokens: Sequence[int], salt: str = "") -> None:
        rid = self._rid("store")
        n = len(tokens) // CHUNK * BPC
        key = make_key(tokens, rid, model_name=self.model, worker_id=0, cache_salt=salt)
        assert self.client.store(key, self.iid, [list(range(n))]) == (b"", True)
        self.client.end_session(rid)

    def retrieve(self, tokens: Sequence[int], salt: str = "") -> None:
        rid = self._rid("retrieve")
        n = len(tokens) // CHUNK * BPC
        key = make_key(tokens, rid, model_name=self.model, worker_id=0, cache_salt=salt)
        assert self.client.lookup(key) == len(tokens) // CHUNK
        assert self.client.retrieve(key, self.iid, [list(range(n, 2 * n))]) == (b"", True)
        self.client.end_session(rid)

    def lookup(self, tokens: Sequence[int], salt: str = "") -> int:
        rid = self._rid("lookup")
        key = make_key(tokens, rid, model_name=self.model, worker_id=0, cache_salt=salt)
        hits = self.client.lookup(key)
        self.client.free_lookup_locks(key)
        self.client.end_session(rid)
        return hits


def tokens(seed: int, chunks: int) -> list[int]:
    return [(seed * 7919 + i) % 50_000 for i in range(chunks * CHUNK)]


def workload(worker: Worker, rounds: int = 4, chunks: int = 4, first: int = 0) -> None:
    """Stores, retrieves (each a lookup that hits), lookups that miss; rounds ``first...`` use new tokens."""
    for r in range(first, first + rounds):
        stored = tokens(1000 + r, chunks)
        worker.store(stored)
        worker.retrieve(stored)
        assert worker.lookup(tokens(100_000 + r, chunks)) == 0  # never stored: a miss


def get_json(url: str, path: str) -> Any:
    resp = httpx.get(f"{url}{path}", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, (path, resp.status_code, resp.text)
    return resp.json()


def metrics(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``GET /metrics`` parsed: sample name → ``[(labels, value)]``."""
    resp = httpx.get(f"{url}/metrics", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def metric_sum(parsed: dict[str, list[tuple[dict[str, str], float]]], metric: str, **labels: str) -> float:
    """The samples of ``metric`` whose labels include ``labels``, summed."""
    return sum(v for lab, v in parsed.get(metric, []) if all(lab.get(k) == val for k, val in labels.items()))


def expected_numbers(url: str) -> dict[str, float]:
    """What ``/status`` and ``/metrics`` say of the numbers the page shows."""
    status = get_json(url, "/status")
    l1 = status["storage_manager"]["l1_manager"]
    m = metrics(url)
    requested = metric_sum(m, "lmcache_mp_lookup_requested_tokens_total")
    hit_l1 = metric_sum(m, "lmcache_mp_lookup_hit_tokens_total", tier="l1")
    hit_l2 = metric_sum(m, "lmcache_mp_lookup_hit_tokens_total", tier="l2")
    return {
        "l1-used": l1["memory_used_bytes"],
        "l1-capacity": l1["memory_total_bytes"],
        "l1-objects": l1["total_object_count"],
        "hit-l1": hit_l1 / requested,
        "hit-l2": hit_l2 / requested,
        "hit-miss": max(0.0, 1 - (hit_l1 + hit_l2) / requested),
        "store-ops": metric_sum(m, "lmcache_mp_zmq_requests_total", op="store"),
        "retrieve-ops": metric_sum(m, "lmcache_mp_zmq_requests_total", op="retrieve"),
        "lookup-ops": metric_sum(m, "lmcache_mp_zmq_requests_total", op="lookup"),
        "lookups-total": metric_sum(m, "lmcache_mp_lookups_total"),
        "workers-registered": len(status["registered_gpu_ids"]),
        "sessions-active": status["active_sessions"],
    }
