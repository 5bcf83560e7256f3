"""Issue 13, finding 5: with an admin token set, the open ``GET /status`` does not reveal worker instance ids."""

from __future__ import annotations

import httpx

from lmcache_core.client import LMCacheClient
from lmcache_core.config import HTTPConfig, MPConfig
from lmcache_core.testing import free_port
from lmcache_core.transfer.client_kv import WorkerKVCache

IID = 31337


def _served(factory, serve, token):
    port = free_port()
    server = factory(entry_points=True, allow="inspect", configs={
        "mp": MPConfig(host="127.0.0.1", port=port), "http": HTTPConfig(http_admin_token=token)})
    return server, serve(server), f"tcp://127.0.0.1:{port}"


def test_status_hides_instance_ids_from_requests_without_the_token(lmcache_server_factory, lmcache_http):
    server, base, url = _served(lmcache_server_factory, lmcache_http, "t0k3n")
    kv = WorkerKVCache(1, (2, 8, 16, 2, 8))
    try:
        with LMCacheClient(url, timeout_s=20) as client:
            client.register_kv_cache(IID, kv.descriptors(), "secret-model", 1, {"kv_layout": "NHD"})
        anonymous = httpx.get(f"{base}/status", timeout=10)
        assert anonymous.status_code == 200
        doc = anonymous.json()
        assert doc["registered_gpu_ids"] == [] and doc["cache_context_meta"] == {}
        assert doc["registered_instance_count"] == 1 and doc["instance_ids_hidden"] is True
        assert str(IID) not in anonymous.text
        wrong = httpx.get(f"{base}/status", headers={"Authorization": "Bearer nope"}, timeout=10)
        assert str(IID) not in wrong.text
        admin = httpx.get(f"{base}/status", headers={"Authorization": "Bearer t0k3n"}, timeout=10).json()
        assert admin["registered_gpu_ids"] == [IID] and str(IID) in admin["cache_context_meta"]
        assert "instance_ids_hidden" not in admin
    finally:
        kv.close()


def test_status_without_a_token_configured_is_unchanged(lmcache_server_factory, lmcache_http):
    server, base, url = _served(lmcache_server_factory, lmcache_http, None)
    kv = WorkerKVCache(1, (2, 8, 16, 2, 8))
    try:
        with LMCacheClient(url, timeout_s=20) as client:
            client.register_kv_cache(IID, kv.descriptors(), "m", 1, {"kv_layout": "NHD"})
        doc = httpx.get(f"{base}/status", timeout=10).json()
        assert doc["registered_gpu_ids"] == [IID] and "instance_ids_hidden" not in doc
    finally:
        kv.close()
