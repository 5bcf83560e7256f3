"""Issue 13, finding 7: ``POST /cache/checksums`` must not amplify a small body into gigabytes."""

from __future__ import annotations

import httpx
import torch

from lmcache_core.client import LMCacheClient
from lmcache_core.config import MPConfig
from lmcache_core.testing import free_port
from lmcache_core.transfer.client_kv import WorkerKVCache
from lmcache_plugin_cache import plugin as cache_plugin
from security_support import cli_server, rss_bytes

MiB = 1 << 20
IID = 808
SHAPE = (2, 1024, 16, 8, 64)  # NHD, fp16: 32 MiB per layer


def test_checksums_hash_in_bounded_memory_and_refuse_repeated_ids(tmp_path):
    kv = WorkerKVCache(4, SHAPE)
    try:
        for i, layer in enumerate(kv.layers):
            layer.copy_(torch.full(SHAPE, float(i), dtype=torch.float16))
        with cli_server(tmp_path) as (pid, url, base):
            with LMCacheClient(url, timeout_s=30) as client:
                client.register_kv_cache(IID, kv.descriptors(), "m", 1, {"kv_layout": "NHD"})
            every = {"instance_id": IID, "block_ids": list(range(1024)), "chunk_size": 64}
            # The attack: 20,000 copies of block 0 in a 59 KiB body.
            bomb = httpx.post(f"{base}/cache/checksums", json={"instance_id": IID, "block_ids": [0] * 20_000,
                                                               "chunk_size": 20_000}, timeout=60)
            assert bomb.status_code == 400 and "at most one id per block" in bomb.json()["detail"]
            warm = httpx.post(f"{base}/cache/checksums", json=every, timeout=120)  # maps the segments once
            assert warm.status_code == 200
            before = rss_bytes(pid, "VmHWM")
            # One chunk of every block: the old code gathered all four layers (128 MiB) at once.
            whole = httpx.post(f"{base}/cache/checksums", json={**every, "chunk_size": 1024}, timeout=120)
            assert whole.status_code == 200 and len(whole.json()["chunk_checksums"]) == 1
            assert rss_bytes(pid, "VmHWM") - before < 48 * MiB
            assert httpx.get(f"{base}/healthcheck", timeout=10).status_code == 200
    finally:
        kv.close()


def test_checksums_beyond_the_concurrency_bound_answer_429(lmcache_server_factory, lmcache_http):
    port = free_port()
    server = lmcache_server_factory([("cache", cache_plugin)], configs={"mp": MPConfig(host="127.0.0.1", port=port)})
    base = lmcache_http(server)
    kv = WorkerKVCache(1, (2, 8, 16, 2, 8))
    held = 0
    try:
        with LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=20) as client:
            client.register_kv_cache(IID, kv.descriptors(), "m", 1, {"kv_layout": "NHD"})
        body = {"instance_id": IID, "block_ids": [0, 1], "chunk_size": 1}
        for _ in range(cache_plugin.MAX_CONCURRENT_CHECKSUMS):  # as if that many were running
            assert cache_plugin._CHECKSUM_SLOTS.acquire(blocking=False)
            held += 1
        busy = httpx.post(f"{base}/cache/checksums", json=body, timeout=30)
        assert busy.status_code == 429 and "already running" in busy.json()["detail"]
        check = httpx.get(f"{base}/kvcache/check", params={"instance_id": IID, "block_ids": "0,1", "chunk_size": 1},
                          timeout=30)
        assert check.status_code == 429 and "already running" in check.json()["error"]
        while held:
            cache_plugin._CHECKSUM_SLOTS.release()
            held -= 1
        assert httpx.post(f"{base}/cache/checksums", json=body, timeout=30).status_code == 200
    finally:
        while held:
            cache_plugin._CHECKSUM_SLOTS.release()
            held -= 1
        kv.close()
