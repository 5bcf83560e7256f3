"""LOOKUP reading from L2 through a live server: store, clear L1, lookup hits from L2, retrieve bytes equal."""

from __future__ import annotations

import time

import pytest
import torch
from support import MemoryPlugin, memory_l2_worker

from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.config import MPConfig, StorageManagerConfig
from lmcache_core.testing import free_port
from lmcache_core.transfer.client_kv import WorkerKVCache
from lmcache_core.transport.wire import Op

MODEL = "m"
BPC = 16




@pytest.fixture
def live(lmcache_server_factory):
    with memory_l2_worker(lmcache_server_factory, MODEL) as (server, client, kv, adapter):
        gen = torch.Generator().manual_seed(3)
        for layer in kv.layers:
            layer.copy_(torch.randn(layer.shape, generator=gen).to(layer.dtype))
        yield server, client, kv, adapter


def store_and_flush(server, client, adapter, tokens, rid):
    assert client.store(make_key(tokens, rid, model_name=MODEL, worker_id=0), 1, [list(range(32))]) == (b"", True)
    client.end_session(rid)
    deadline = time.monotonic() + 10
    while server.storage.store_controller.pending() and time.monotonic() < deadline:
        time.sleep(0.01)  # the write-behind thread drains every 20 ms
    while len(adapter.objects) < len(tokens) // 256 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(adapter.objects) >= len(tokens) // 256


def test_after_clearing_l1_lookup_hits_from_l2_and_retrieve_is_byte_equal(live):
    server, client, kv, adapter = live
    from prometheus_client import REGISTRY

    def metric(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    names = ("lmcache_mp_l2_prefetch_lookup_objects_total", "lmcache_mp_l2_prefetch_load_submitted_objects_total",
             "lmcache_mp_l2_prefetch_load_completed_objects_total")
    tokens = list(range(512))
    store_and_flush(server, client, adapter, tokens, "w")
    expected = [layer[:, :32].clone() for layer in kv.layers]
    client.clear(True)
    assert server.storage.l1.report_status()["total_object_count"] == 0
    before = [metric(n) for n in names]
    assert client.lookup(make_key(tokens, "r", model_name=MODEL)) == 2
    assert [metric(n) - b for n, b in zip(names, before)] == [2, 2, 2]
    for layer in kv.layers:
        layer[:, 32:].zero_()
    assert client.retrieve(make_key(tokens, "r", model_name=MODEL, worker_id=0), 1, [list(range(32, 64))]) == \
        (b"", True)
    assert all(torch.equal(layer[:, 32:64], e) for layer, e in zip(kv.layers, expected))
    client.end_session("r")
    status = server.status()
    assert status["lookup_locked_objects"] == 0
    assert status["storage_manager"]["l1_manager"]["read_locked_count"] == 0
    assert status["storage_manager"]["l1_manager"]["total_object_count"] == 0  # temporaries freed after the read
    assert status["storage_manager"]["l2_adapters"][0]["locked_key_count"] == 0


def test_l2_hits_are_trimmed_to_the_contiguous_prefix(live):
    server, client, kv, adapter = live
    tokens = list(range(768))
    assert client.store(make_key(tokens, "w", model_name=MODEL, worker_id=0), 1, [list(range(48))]) == (b"", True)
    client.end_session("w")
    deadline = time.monotonic() + 10
    while len(adapter.objects) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stored = list(adapter.objects)
    client.clear(True)
    # drop the second chunk from L2: find it by hashing as the server does
    from lmcache_core.hashing import TokenHasher

    second = TokenHasher(256).hash_chunks(tokens)[1]
    gone = [k for k in stored if k.chunk_hash == second]
    assert len(gone) == 1
    adapter.objects.pop(gone[0])
    assert client.lookup(make_key(tokens, "r", model_name=MODEL)) == 1
    client.end_session("r")
    assert server.status()["storage_manager"]["l2_adapters"][0]["locked_key_count"] == 0
    assert server.status()["storage_manager"]["l1_manager"]["read_locked_count"] == 0


def test_wait_prefetch_status_and_misses(live):
    server, client, kv, adapter = live
    tokens = list(range(512))
    client.call(Op.LOOKUP, make_key(tokens, "nothing", model_name=MODEL), 1)
    assert client.call(Op.WAIT_PREFETCH_STATUS, "nothing", 5.0) == 0
    assert client.call(Op.WAIT_PREFETCH_STATUS, "nothing", 0.1) == 0  # consumed: unknown now
    store_and_flush(server, client, adapter, tokens, "w")
    client.clear(True)
    client.call(Op.LOOKUP, make_key(tokens, "x", model_name=MODEL), 1)
    assert client.call(Op.WAIT_PREFETCH_STATUS, "x", 10.0) == 2
    client.end_session("x")
    assert server.status()["storage_manager"]["l1_manager"]["read_locked_count"] == 0


def test_with_skip_l1_stored_chunks_leave_l1_and_still_hit(lmcache_server_factory):
    port = free_port()
    server = lmcache_server_factory([("memory-l2", MemoryPlugin())], configs={
        "mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.1, l2_adapter=[{"type": "memory"}],
                                                l2_store_policy="skip_l1"),
    })
    kv = WorkerKVCache(2, (2, 64, 16, 2, 8))
    client = LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=20)
    try:
        kv.layers[1].fill_(5)
        client.register_kv_cache(1, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
        tokens = list(range(512))
        client.store(make_key(tokens, "w", model_name=MODEL, worker_id=0), 1, [list(range(32))])
        client.end_session("w")
        deadline = time.monotonic() + 10
        while server.storage.l1.report_status()["total_object_count"] and time.monotonic() < deadline:
            time.sleep(0.01)  # written behind, then dropped from L1
        assert server.storage.l1.report_status()["total_object_count"] == 0
        assert client.lookup(make_key(tokens, "r", model_name=MODEL)) == 2
        kv.layers[1][:, 32:].zero_()
        assert client.retrieve(make_key(tokens, "r", model_name=MODEL, worker_id=0), 1,
                               [list(range(32, 64))])[1] is True
        assert torch.equal(kv.layers[1][:, 32:64], kv.layers[1][:, :32])
        client.end_session("r")
    finally:
        client.close()
        kv.close()


def test_warm_prefetch_loads_retained_objects_without_locks(live):
    import threading

    server, client, kv, adapter = live
    tokens = list(range(768))
    assert client.store(make_key(tokens, "w", model_name=MODEL, worker_id=0), 1, [list(range(48))])[1]
    client.end_session("w")
    deadline = time.monotonic() + 10
    while len(adapter.objects) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    keys = list(adapter.objects)
    client.clear(True)
    adapter.objects.pop(keys[1])  # a gap: a warm prefetch loads what is there anyway
    done = threading.Event()
    result = {}

    def on_done(found, total):
        result.update(found=found, total=total)
        done.set()

    server.storage.prefetch.submit_warm(keys, server.datapath.object_nbytes_for(MODEL, 1), on_done)
    assert done.wait(10)
    assert result == {"found": 2, "total": 3}
    l1 = server.storage.l1.report_status()
    assert l1["total_object_count"] == 2 and l1["read_locked_count"] == 0 and l1["temporary_count"] == 0
    assert server.storage.store_controller.pending() == 0  # not offered back to L2
    assert server.status()["storage_manager"]["l2_adapters"][0]["locked_key_count"] == 0


def test_a_prefetch_that_finds_no_l1_room_counts_l1_oom_and_returns_the_prefix_that_fit():
    import queue

    from prometheus_client import REGISTRY

    from lmcache_core.keys import ObjectKey
    from lmcache_core.storage.l1 import L1Manager
    from lmcache_core.storage.l2.base import L2AdapterConfig, L2AdapterContext
    from lmcache_core.storage.l2.prefetch_controller import PrefetchController
    from support import MemoryAdapter

    obj = 4096
    l1 = L1Manager(2 * obj, enable_metrics=False)  # room for 2 of the 4 chunks
    adapter = MemoryAdapter(L2AdapterConfig(), L2AdapterContext(0, "memory", io_workers=1))
    adapter.start()
    chunks = [[ObjectKey(bytes([i]) * 32, "m", 0x01000100)] for i in range(4)]
    assert adapter.store([c[0] for c in chunks], [torch.full((obj,), i, dtype=torch.uint8) for i in range(4)]) \
        .result(10) == [True] * 4
    controller = PrefetchController(l1, [adapter])
    oom_before = REGISTRY.get_sample_value("lmcache_mp_l2_prefetch_failure_total", {"reason": "l1_oom"}) or 0.0
    done: queue.Queue = queue.Queue()
    try:
        controller.submit(chunks, obj, 1, done.put)
        loaded = done.get(timeout=10)
        assert loaded == chunks[:2]
        assert REGISTRY.get_sample_value("lmcache_mp_l2_prefetch_failure_total", {"reason": "l1_oom"}) == \
            oom_before + 2
    finally:
        controller.close()
        adapter.close()
        l1.close()
