"""Data-path metrics through a live server: lookups by tier, early exits, STORE/RETRIEVE traffic."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY
from support import memory_l2_worker

from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.config import MPConfig
from lmcache_core.testing import free_port

MODEL = "metrics-model"
CHUNK = 256


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def live(lmcache_server_factory):
    with memory_l2_worker(lmcache_server_factory, MODEL) as handles:
        yield handles


def test_lookup_hits_are_counted_by_tier_and_transfers_by_bytes(live):
    server, client, kv, adapter = live
    salt = "_default"
    tokens = list(range(2 * CHUNK))
    before = {name: value(name, model_name=MODEL, cache_salt=salt) for name in (
        "lmcache_mp_store_chunks_total", "lmcache_mp_store_bytes_total", "lmcache_mp_retrieve_chunks_total",
        "lmcache_mp_retrieve_bytes_total", "lmcache_mp_lookups_total", "lmcache_mp_lookup_requested_tokens_total")}
    l1_before = value("lmcache_mp_lookup_hit_tokens_total", model_name=MODEL, cache_salt=salt, tier="l1")
    l2_before = value("lmcache_mp_lookup_hit_tokens_total", model_name=MODEL, cache_salt=salt, tier="l2")
    l2_keys_before = value("lmcache_mp_lookup_hit_keys_total", model_name=MODEL, cache_salt=salt, tier="l2")
    gbps_before = value("lmcache_mp_store_throughput_GB_per_second_count", device="cpu")

    assert client.store(make_key(tokens, "w", model_name=MODEL, worker_id=0), 1, [list(range(32))]) == (b"", True)
    client.end_session("w")
    object_bytes = kv.layers[0][:, :16].numel() * kv.layers[0].element_size() * len(kv.layers)
    assert value("lmcache_mp_store_chunks_total", model_name=MODEL, cache_salt=salt) == \
        before["lmcache_mp_store_chunks_total"] + 2
    assert value("lmcache_mp_store_bytes_total", model_name=MODEL, cache_salt=salt) == \
        before["lmcache_mp_store_bytes_total"] + 2 * object_bytes
    assert value("lmcache_mp_store_throughput_GB_per_second_count", device="cpu") == gbps_before + 1

    # From L1: 2 chunks = 512 tokens.
    assert client.lookup(make_key(tokens, "r1", model_name=MODEL)) == 2
    assert value("lmcache_mp_lookup_hit_tokens_total", model_name=MODEL, cache_salt=salt, tier="l1") == \
        l1_before + 2 * CHUNK
    assert client.retrieve(make_key(tokens, "r1", model_name=MODEL, worker_id=0), 1, [list(range(32, 64))]) == \
        (b"", True)
    client.end_session("r1")
    assert value("lmcache_mp_retrieve_chunks_total", model_name=MODEL, cache_salt=salt) == \
        before["lmcache_mp_retrieve_chunks_total"] + 2
    assert value("lmcache_mp_retrieve_bytes_total", model_name=MODEL, cache_salt=salt) == \
        before["lmcache_mp_retrieve_bytes_total"] + 2 * object_bytes

    # From L2, once the write-behind has flushed and L1 is cleared.
    deadline = time.monotonic() + 10
    while len(adapter.objects) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(adapter.objects) == 2
    client.clear(True)
    assert client.lookup(make_key(tokens, "r2", model_name=MODEL)) == 2
    client.end_session("r2")
    assert value("lmcache_mp_lookup_hit_tokens_total", model_name=MODEL, cache_salt=salt, tier="l2") == \
        l2_before + 2 * CHUNK
    assert value("lmcache_mp_lookup_hit_keys_total", model_name=MODEL, cache_salt=salt, tier="l2") == \
        l2_keys_before + 2
    assert value("lmcache_mp_lookup_hit_tokens_total", model_name=MODEL, cache_salt=salt, tier="l1") == \
        l1_before + 2 * CHUNK
    assert value("lmcache_mp_lookups_total", model_name=MODEL, cache_salt=salt) == \
        before["lmcache_mp_lookups_total"] + 2
    assert value("lmcache_mp_lookup_requested_tokens_total", model_name=MODEL, cache_salt=salt) == \
        before["lmcache_mp_lookup_requested_tokens_total"] + 4 * CHUNK


def test_lookups_that_cannot_look_count_as_early_exits(live):
    server, client, kv, adapter = live
    reasons = ("no_gpu_context", "empty_chunk_hashes", "rejected")
    before = {r: value("lmcache_mp_lookup_early_exit_total", reason=r) for r in reasons}
    assert client.lookup(make_key(list(range(CHUNK)), "u", model_name="not-registered")) == 0
    assert client.lookup(make_key(list(range(CHUNK - 1)), "s", model_name=MODEL)) == 0
    assert client.lookup(make_key(list(range(CHUNK)), "bad", model_name=MODEL, num_kv_readers=0)) == 0
    after = {r: value("lmcache_mp_lookup_early_exit_total", reason=r) for r in reasons}
    assert after == {r: before[r] + 1 for r in reasons}


def test_disable_metrics_leaves_data_path_counters_alone(lmcache_server_factory):
    from lmcache_core.config import ObservabilityConfig

    port = free_port()
    lmcache_server_factory(configs={"mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0),
                                    "observability": ObservabilityConfig(disable_metrics=True)})
    before = value("lmcache_mp_lookup_early_exit_total", reason="no_gpu_context")
    with LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=20) as client:
        assert client.lookup(make_key(list(range(CHUNK)), "u", model_name="not-registered")) == 0
    assert value("lmcache_mp_lookup_early_exit_total", reason="no_gpu_context") == before


def test_active_prefetch_jobs_gauge_reads_the_live_lookup_table(live):
    server, client, kv, adapter = live
    assert value("lmcache_mp_active_prefetch_jobs") == server.status()["active_prefetch_jobs"] == 0
    server.datapath.lookups.complete("unqueried", 0, [], 1)  # a finished lookup nobody has queried yet
    assert value("lmcache_mp_active_prefetch_jobs") == server.status()["active_prefetch_jobs"] == 1
    assert server.datapath.lookups.take_result("unqueried") == 0
    assert value("lmcache_mp_active_prefetch_jobs") == 0
