"""The engine wired by CacheServer.start(): storage, sessions, periodic threads, status, shutdown."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

import lmcache_plugin_inspect.plugin as inspect_plugin
from lmcache_core.config import MPConfig, StorageManagerConfig
from lmcache_core.server import SESSION_CLEANUP_THREAD
from lmcache_core.storage.manager import L1_EVICTION_THREAD


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_status_carries_storage_sessions_and_controller_sections(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory([("inspect", inspect_plugin)])
    body = httpx.get(f"{lmcache_http(server)}/status").json()
    assert body["is_healthy"] is True
    assert body["active_sessions"] == 0
    sm = body["storage_manager"]
    assert sm["is_healthy"] is True and sm["num_l2_adapters"] == 0
    for field in ("total_object_count", "write_locked_count", "read_locked_count", "temporary_count",
                  "memory_used_bytes", "memory_total_bytes", "memory_usage_ratio"):
        assert field in sm["l1_manager"], field
    assert sm["l1_manager"]["memory_total_bytes"] == 1 << 30
    ctl = sm["l1_eviction_controller"]
    assert (ctl["eviction_policy"], ctl["trigger_watermark"], ctl["eviction_ratio"]) == ("LRU", 0.8, 0.2)
    assert ctl["thread_alive"] is True


def test_background_loops_are_registered_periodic_threads_and_stop(lmcache_server_factory):
    server = lmcache_server_factory()
    threads = server.threads
    assert {SESSION_CLEANUP_THREAD, L1_EVICTION_THREAD} <= {t.name for t in threads.get_all()}
    eviction = threads.get(L1_EVICTION_THREAD)
    assert eviction.wait_for_runs(1, timeout=10)
    server.stop()
    assert not any(t.is_running for t in threads.get_all())
    assert not server.ready


def test_a_huge_l1_is_reserved_lazily(lmcache_server_factory):
    before = rss_bytes()
    server = lmcache_server_factory(configs={"storage_manager": StorageManagerConfig(l1_size_gb=64)})
    assert server.storage.l1.get_memory_usage() == (0, 64 << 30)
    assert rss_bytes() - before < 256 << 20


def test_sessions_use_the_configured_hasher(lmcache_server_factory):
    server = lmcache_server_factory(configs={"mp": MPConfig(chunk_size=256)})
    session = server.sessions.get_or_create("req-1")
    session.set_tokens(list(range(512)))
    assert [h.hex()[:16] for h in session.get_hashes(0, 512)] == ["084547b6c40ed5b0", "e5ffee45c2b9db32"]


def test_an_algorithm_we_cannot_compute_deterministically_is_a_config_error(lmcache_server_factory):
    with pytest.raises(ValueError, match="sha256_cbor"):
        lmcache_server_factory(configs={"mp": MPConfig(hash_algorithm="sha256_cbor")}, start=False)
