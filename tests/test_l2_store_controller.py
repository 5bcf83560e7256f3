"""Write-behind from a real L1 to real adapters: bytes, temporaries, skip_l1, failures, the server wiring."""

from __future__ import annotations

import time

import pytest
from support import MemoryAdapter, MemoryPlugin

from lmcache_core.config import MPConfig, StorageManagerConfig
from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager, L1Result
from lmcache_core.storage.l2.base import L2AdapterConfig, L2AdapterContext
from lmcache_core.storage.l2.store_controller import StoreController

OBJ = 4096


@pytest.fixture
def l1():
    m = L1Manager(64 * OBJ, enable_metrics=False)
    yield m
    m.close()


def adapter(index=0):
    a = MemoryAdapter(L2AdapterConfig(), L2AdapterContext(index, "memory", io_workers=1))
    a.start()
    return a


def write(l1, keys, temporary=False, fill=7):
    res = l1.reserve_write(keys, OBJ, temporary=temporary)
    for view in res.views:
        view.fill_(fill)
    assert all(r == L1Result.SUCCESS for r in res.results)
    l1.finish_write(keys)


def keys(n, tag=b"k"):
    return [ObjectKey(tag + bytes([i]) * 31, "m", 0x01000100) for i in range(n)]


def test_new_objects_reach_every_adapter_with_equal_bytes_and_locks_are_released(l1):
    a, b = adapter(0), adapter(1)
    ctl = StoreController(l1, [a, b])
    ks = keys(3)
    write(l1, ks, fill=9)
    assert ctl.pending() == 3
    assert ctl.drain()["pushed"] == 3
    for adp in (a, b):
        assert [adp.objects[k] for k in ks] == [bytes([9]) * OBJ] * 3
        adp.close()
    assert l1.report_status()["read_locked_count"] == 0
    assert ctl.report_status()["stored_keys"] == 3 and ctl.pending() == 0


def test_temporary_objects_are_never_offered(l1):
    a = adapter()
    ctl = StoreController(l1, [a])
    write(l1, keys(2), temporary=True)
    assert ctl.pending() == 0 and ctl.drain()["pushed"] == 0 and a.objects == {}
    a.close()


def test_skip_l1_moves_stored_objects_out_of_l1(l1):
    a = adapter()
    ctl = StoreController(l1, [a], policy="skip_l1")
    ks = keys(2)
    write(l1, ks)
    ctl.drain()
    assert not any(l1.contains(k) for k in ks) and set(a.objects) == set(ks)
    a.close()


def test_a_failing_adapter_is_counted_and_never_blocks(l1):
    a = adapter()
    a.fail_puts = True
    ctl = StoreController(l1, [a], policy="skip_l1")
    ks = keys(2)
    write(l1, ks)
    ctl.drain()
    assert ctl.report_status()["failed_keys"] == 2
    assert all(l1.contains(k) for k in ks)  # not stored anywhere: stays in L1
    assert l1.report_status()["read_locked_count"] == 0
    a.close()


def test_keys_evicted_before_the_push_are_skipped(l1):
    a = adapter()
    ctl = StoreController(l1, [a])
    ks = keys(2)
    write(l1, ks)
    l1.delete(ks[:1])
    ctl.drain()
    assert set(a.objects) == {ks[1]} and ctl.report_status()["skipped_keys"] == 1
    a.close()


def test_a_bounded_queue_drops_the_oldest(l1):
    a = adapter()
    ctl = StoreController(l1, [a], max_queued_keys=2)
    ks = keys(3)
    write(l1, ks)
    ctl.drain()
    assert set(a.objects) == set(ks[1:]) and ctl.report_status()["dropped_keys"] == 1
    a.close()




def test_the_server_wires_adapters_from_l2_adapter_config(lmcache_server_factory):
    from lmcache_core.client import LMCacheClient, make_key
    from lmcache_core.testing import free_port
    from lmcache_core.transfer.client_kv import WorkerKVCache

    port = free_port()
    server = lmcache_server_factory([("memory-l2", MemoryPlugin())], configs={
        "mp": MPConfig(host="127.0.0.1", port=port),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.1, l2_adapter=[{"type": "memory", "note": "x"}]),
    })
    adapter_obj = server.storage.l2_adapters[0]
    kv = WorkerKVCache(2, (2, 64, 16, 2, 8))
    client = LMCacheClient(f"tcp://127.0.0.1:{port}")
    try:
        kv.layers[0].fill_(3)
        client.register_kv_cache(1, kv.descriptors(), "m", 1, {"kv_layout": "NHD"})
        assert client.store(make_key(list(range(512)), "r", model_name="m", worker_id=0), 1,
                            [list(range(32))]) == (b"", True)
        deadline = time.monotonic() + 10
        while len(adapter_obj.objects) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # the write-behind thread runs every 20 ms
        assert len(adapter_obj.objects) == 2
        status = server.status()["storage_manager"]
        assert status["num_l2_adapters"] == 1 and status["l2_adapters"][0]["stored_object_count"] == 2
        object_nbytes = 2 * 2 * 256 * 16 * 2  # [K/V, layers, tokens, hidden] fp16
        # 2 in L1 and 2 in L2: the usage compared with a quota is the largest tier's (issue 18), not the sum
        assert server.storage.quotas.usage_bytes("") == 2 * object_nbytes
        assert server.storage.quotas.usage_by_tier() == {"l1": {"": 2 * object_nbytes}, "l2:0": {"": 2 * object_nbytes}}
    finally:
        client.close()
        kv.close()


def test_an_invalid_adapter_config_fails_startup_naming_its_position(lmcache_server_factory):
    with pytest.raises(ValueError, match=r"--l2-adapter #0 \(memory\): invalid config"):
        lmcache_server_factory([("memory-l2", MemoryPlugin())], configs={
            "storage_manager": StorageManagerConfig(l2_adapter=[{"type": "memory", "bogus": 1}])}, start=False)


def test_objects_admitted_from_l2_are_not_offered_back(l1):
    a = adapter()
    ctl = StoreController(l1, [a])
    ks = keys(2)
    res = l1.reserve_write(ks, OBJ)
    assert all(r == L1Result.SUCCESS for r in res.results)
    l1.finish_write(ks, from_l2=True)
    assert ctl.pending() == 0 and all(l1.contains(k) for k in ks)
    a.close()


def test_a_slow_l2_never_delays_store(l1):
    import threading

    a = adapter()
    gate = threading.Event()
    original = a._put

    def slow_put(key, data):
        gate.wait(10)
        original(key, data)

    a._put = slow_put
    ctl = StoreController(l1, [a])
    drainer = threading.Thread(target=ctl.drain)
    write(l1, keys(2))
    drainer.start()
    # While L2 is stuck, more stores complete at once: nothing on the write path waits for L2.
    write(l1, keys(2, b"z"))
    assert all(l1.contains(k) for k in keys(2, b"z"))
    gate.set()
    drainer.join(10)
    ctl.drain()
    assert len(a.objects) == 4
    a.close()


def test_write_behind_metrics_count_submitted_skipped_and_dropped(l1):
    from prometheus_client import REGISTRY

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    names = ("lmcache_mp_l2_store_submitted_objects_total", "lmcache_mp_l2_store_dropped_objects_total",
             "lmcache_mp_l2_store_skipped_objects_total")
    a = adapter()
    ctl = StoreController(l1, [a], max_queued_keys=3)
    before = {n: value(n) for n in names}
    ks = keys(5)
    write(l1, ks)  # 5 finished writes into a queue of 3: the 2 oldest are dropped
    assert value("lmcache_mp_l2_store_queue_objects") == 3
    l1.delete([ks[2]])  # gone from L1 before the write-behind reaches it
    ctl.drain()
    dropped, skipped, submitted = (value(n) - before[n] for n in (names[1], names[2], names[0]))
    assert (dropped, skipped, submitted) == (2, 1, 2)
    assert value("lmcache_mp_l2_store_queue_objects") == 0
    assert value("lmcache_mp_num_inflight_l2_stores") == 0
    from lmcache_core.observability.metrics import reset_all

    reset_all()  # what POST /metrics/reset does
    assert [value(n) for n in names] == [0.0, 0.0, 0.0]
    a.close()
