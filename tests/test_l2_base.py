"""The L2 adapter base class with a small real in-memory adapter: futures, locks, accounting, listeners."""

from __future__ import annotations

import msgspec
import pytest
import torch

from lmcache_core.keys import ObjectKey
from support import MemoryAdapter

from lmcache_core.storage.l2.base import (
    L2AdapterConfig,
    L2AdapterContext,
    L2Listener,
    ListingNotSupported,
)


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(bytes([i]) * 32, "m", 0x01000100, 0, salt)


class Recorder(L2Listener):
    def __init__(self):
        self.events = []

    def on_l2_keys_stored(self, adapter, keys, sizes):
        self.events.append(("stored", list(keys), list(sizes)))

    def on_l2_keys_accessed(self, adapter, keys):
        self.events.append(("accessed", list(keys)))

    def on_l2_keys_deleted(self, adapter, keys):
        self.events.append(("deleted", list(keys)))


@pytest.fixture
def adapter():
    a = MemoryAdapter(L2AdapterConfig(max_capacity_gb=1.0), L2AdapterContext(0, "memory", io_workers=2))
    a.start()
    yield a
    a.close()


def test_store_lookup_load_round_trip_bytes_equal(adapter):
    objs = [torch.arange(i, i + 64, dtype=torch.uint8) for i in range(3)]
    assert adapter.store([key(i) for i in range(3)], objs).result(10) == [True] * 3
    assert adapter.lookup_and_lock([key(0), key(9), key(2)]).result(10) == [True, False, True]
    bufs = [torch.zeros(64, dtype=torch.uint8) for _ in range(2)]
    assert adapter.load([key(0), key(2)], bufs).result(10) == [True, True]
    assert torch.equal(bufs[0], objs[0]) and torch.equal(bufs[1], objs[2])
    assert adapter.load([key(9)], [torch.zeros(64, dtype=torch.uint8)]).result(10) == [False]


def test_locked_keys_survive_delete_until_unlocked(adapter):
    adapter.store([key(1), key(2)], [torch.ones(8, dtype=torch.uint8)] * 2).result(10)
    adapter.lookup_and_lock([key(1)]).result(10)
    assert not adapter.is_key_evictable(key(1))
    assert adapter.delete([key(1), key(2)]).result(10) == [False, True]
    assert adapter.lookup_and_lock([key(2)]).result(10) == [False]
    adapter.unlock([key(1)])
    assert adapter.delete([key(1)]).result(10) == [True]
    assert adapter.report_status()["stored_object_count"] == 0


def test_accounting_per_salt_and_listeners(adapter):
    rec = Recorder()
    adapter.register_listener(rec)
    adapter.store([key(1, "a"), key(2, "a"), key(3, "b")], [torch.ones(100, dtype=torch.uint8)] * 3).result(10)
    usage = adapter.usage()
    assert (usage.total_bytes_used, dict(usage.bytes_by_cache_salt)) == (300, {"a": 200, "b": 100})
    assert usage.usage_fraction == 300 / (1 << 30)
    adapter.delete([key(1, "a")]).result(10)
    assert adapter.usage_by_salt() == {"a": 100, "b": 100}
    assert rec.events[0] == ("stored", [key(1, "a"), key(2, "a"), key(3, "b")], [100, 100, 100])
    assert rec.events[-1] == ("deleted", [key(1, "a")])


def test_failed_store_is_counted_and_reported_not_raised(adapter):
    adapter.fail_puts = True
    assert adapter.store([key(1)], [torch.ones(4, dtype=torch.uint8)]).result(10) == [False]
    assert adapter.report_status()["failures"]["store"] == 1
    assert adapter.usage().total_bytes_used == 0


def test_recovery_rebuilds_accounting():
    a = MemoryAdapter(L2AdapterConfig(), L2AdapterContext(1, "memory"), preloaded={key(5, "s"): b"x" * 10})
    a.start()
    try:
        assert a.usage().bytes_by_cache_salt == {"s": 10}
        assert a.usage().usage_fraction == -1.0  # capacity unknown
    finally:
        a.close()


def test_listing_is_optional_and_says_so(adapter):
    with pytest.raises(ListingNotSupported):
        adapter.list_keys("m")


def test_config_validation():
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"max_capacity_gb": -1}, L2AdapterConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"eviction": {"trigger_watermark": 2}}, L2AdapterConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"unknown": 1}, L2AdapterConfig)


def test_lmcache_common_keys_load_and_serde_is_refused_clearly():
    cfg = msgspec.convert({"persist_enabled": False, "affinity_tag": "x", "shared": True}, L2AdapterConfig)
    assert (cfg.persist_enabled, cfg.affinity_tag, cfg.shared) == (False, "x", True)
    with pytest.raises(msgspec.ValidationError, match="serde"):
        msgspec.convert({"serde": {"type": "fp8"}}, L2AdapterConfig)


def test_every_adapter_gets_prometheus_metrics(adapter):
    from prometheus_client import REGISTRY

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, {"l2_name": "memory:0", **labels}) or 0.0

    before = (value("lmcache_mp_l2_store_completed_objects_total"), value("lmcache_mp_l2_load_completed_objects_total"),
              value("lmcache_mp_l2_failures_total", op="store"))
    adapter.store([key(1), key(2)], [torch.ones(16, dtype=torch.uint8)] * 2).result(10)
    adapter.load([key(1)], [torch.zeros(16, dtype=torch.uint8)]).result(10)
    adapter.fail_puts = True
    adapter.store([key(3)], [torch.ones(16, dtype=torch.uint8)]).result(10)
    after = (value("lmcache_mp_l2_store_completed_objects_total"), value("lmcache_mp_l2_load_completed_objects_total"),
             value("lmcache_mp_l2_failures_total", op="store"))
    assert tuple(a - b for a, b in zip(after, before)) == (2.0, 1.0, 1.0)
    assert value("lmcache_mp_l2_usage_bytes") == 32.0
    assert adapter.reconfigurable is False


def test_store_and_load_tasks_observe_their_bandwidth_and_loads_in_flight_return_to_zero(adapter):
    from prometheus_client import REGISTRY

    def value(name):
        return REGISTRY.get_sample_value(name, {"l2_name": "memory:0"}) or 0.0

    stores, loads = (value("lmcache_mp_l2_store_throughput_GB_per_second_count"),
                     value("lmcache_mp_l2_load_throughput_GB_per_second_count"))
    adapter.store([key(1), key(2)], [torch.ones(4096, dtype=torch.uint8)] * 2).result(10)
    adapter.load([key(1), key(2)], [torch.zeros(4096, dtype=torch.uint8) for _ in range(2)]).result(10)
    adapter.load([key(7)], [torch.zeros(4096, dtype=torch.uint8)]).result(10)  # a miss observes nothing
    assert value("lmcache_mp_l2_store_throughput_GB_per_second_count") == stores + 1
    assert value("lmcache_mp_l2_load_throughput_GB_per_second_count") == loads + 1
    assert value("lmcache_mp_l2_store_throughput_GB_per_second_sum") > 0
    assert value("lmcache_mp_num_inflight_l2_loads") == 0
