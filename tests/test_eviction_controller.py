"""Eviction against a real L1: watermark, ratio, tail-first order, locked keys, quotas, the thread."""

from __future__ import annotations

import pytest

from lmcache_core.keys import ObjectKey
from lmcache_core.observability.periodic import PeriodicThreadRegistry
from lmcache_core.storage.eviction import IsolatedLRUPolicy, LRUPolicy
from lmcache_core.storage.eviction_controller import EvictionController, PolicyFeeder
from lmcache_core.storage.l1 import L1Manager, L1Result
from lmcache_core.storage.quota import QuotaManager

OBJ = 64 * 1024
SIZE = 16 * OBJ  # room for 16 objects


def keys(prefix: str, n: int, salt: str = "") -> list[ObjectKey]:
    return [ObjectKey(f"{prefix}{i}".encode().ljust(32, b"."), "m", 0x01000100, 0, salt) for i in range(n)]


@pytest.fixture
def l1():
    manager = L1Manager(SIZE, align_bytes=4096, slab_bytes=SIZE, enable_metrics=False)
    yield manager
    manager.close()


def store(l1: L1Manager, ks: list[ObjectKey]) -> None:
    results, _ = l1.reserve_write(ks, OBJ)
    assert all(r == L1Result.SUCCESS for r in results)
    assert all(r == L1Result.SUCCESS for r in l1.finish_write(ks))


def controller(l1, policy, **kw) -> EvictionController:
    l1.register_listener(PolicyFeeder(policy))
    return EvictionController(l1, policy, **kw)


def resident(l1, ks):
    return [k for k in ks if l1.contains(k)]


def test_below_the_watermark_nothing_is_evicted(l1):
    ctl = controller(l1, LRUPolicy(), watermark=0.8, ratio=0.2)
    store(l1, keys("a", 12))  # 12/16 = 0.75
    assert ctl.tick()["evicted"] == 0
    assert len(l1) == 12


def test_trigger_evicts_the_oldest_request_tail_first(l1):
    ctl = controller(l1, LRUPolicy(), watermark=0.8, ratio=0.2)
    a, b, c = keys("a", 4), keys("b", 4), keys("c", 6)
    for ks in (a, b, c):
        store(l1, ks)  # 14/16 = 0.875 >= 0.8
    summary = ctl.tick()
    assert summary["evicted"] == 2  # max(1, int(0.2 * 14))
    assert resident(l1, a) == a[:2]  # a3 then a2 went first: the prefix survives
    assert resident(l1, b) == b and resident(l1, c) == c
    assert l1.get_memory_usage()[0] == 12 * OBJ


def test_touch_moves_a_request_to_the_recent_end(l1):
    ctl = controller(l1, LRUPolicy(), watermark=0.8, ratio=0.2)
    a, b, c = keys("a", 4), keys("b", 4), keys("c", 6)
    for ks in (a, b, c):
        store(l1, ks)
    l1.touch(a)
    ctl.tick()
    assert resident(l1, a) == a and resident(l1, b) == b[:2]


def test_read_locked_keys_are_skipped(l1):
    ctl = controller(l1, LRUPolicy(), watermark=0.8, ratio=0.2)
    a, b, c = keys("a", 4), keys("b", 4), keys("c", 6)
    for ks in (a, b, c):
        store(l1, ks)
    assert l1.reserve_read(a[3:], 1) == [L1Result.SUCCESS]
    assert ctl.tick()["evicted"] == 2
    assert l1.contains(a[3])
    l1.finish_read(a[3:], 1)
    assert len(l1) == 12


def test_write_locked_keys_are_never_evicted(l1):
    ctl = controller(l1, LRUPolicy(), watermark=0.5, ratio=1.0)
    pending = keys("p", 4)
    results, _ = l1.reserve_write(pending, OBJ)
    assert all(r == L1Result.SUCCESS for r in results)
    store(l1, keys("d", 6))
    ctl.tick()
    assert resident(l1, pending) == pending
    assert resident(l1, keys("d", 6)) == []


def test_isolated_lru_allowlist_and_quota(l1):
    quotas = QuotaManager()
    quotas.register_usage_provider("l1", l1.usage_by_salt)
    quotas.set_quota("alice", 4 * OBJ)
    ctl = controller(l1, IsolatedLRUPolicy(), watermark=0.8, ratio=0.5, quotas=quotas)
    alice, mallory, ok = keys("a", 4, "alice"), keys("m", 3, "mallory"), keys("o", 2, "alice2")
    quotas.set_quota("alice2", 10 * OBJ)
    for ks in (alice, mallory, ok):
        store(l1, ks)
    ctl.tick()
    assert resident(l1, mallory) == []  # no quota: limit 0, evicted whole
    assert resident(l1, alice) == alice[:2]  # 4 >= 0.8 * 4: half of its keys, tail first
    assert resident(l1, ok) == ok  # under its quota
    assert quotas.usage_bytes("alice") == 2 * OBJ


def test_the_registered_thread_ticks_and_reports(l1):
    threads = PeriodicThreadRegistry()
    ctl = controller(l1, LRUPolicy(), watermark=0.5, ratio=0.5)
    store(l1, keys("a", 10))
    thread = threads.create("l1-eviction-controller", 0.01, ctl.tick)
    try:
        assert thread.wait_for_runs(1, timeout=10)
    finally:
        threads.stop_all()
    assert len(l1) <= 5
    status = ctl.report_status()
    assert status["eviction_policy"] == "LRU" and status["trigger_watermark"] == 0.5
    assert status["evicted_total"] >= 5 and thread.last_summary.success


def test_invalid_watermark_or_ratio_is_refused(l1):
    with pytest.raises(ValueError):
        EvictionController(l1, LRUPolicy(), watermark=0.0)
    with pytest.raises(ValueError):
        EvictionController(l1, LRUPolicy(), ratio=1.5)


def test_ticks_are_counted_in_prometheus(l1):
    from prometheus_client import REGISTRY

    from lmcache_core.storage import metrics

    def value(name):
        return REGISTRY.get_sample_value(name) or 0.0

    before = (value("lmcache_mp_l1_eviction_loop_ticks_total"), value("lmcache_mp_l1_eviction_loop_triggered_total"))
    ctl = controller(l1, LRUPolicy(), watermark=0.5, ratio=0.5, on_tick=metrics.record_eviction_tick)
    ctl.tick()
    store(l1, keys("a", 10))
    ctl.tick()
    after = (value("lmcache_mp_l1_eviction_loop_ticks_total"), value("lmcache_mp_l1_eviction_loop_triggered_total"))
    assert (after[0] - before[0], after[1] - before[1]) == (2.0, 1.0)


def test_a_large_eviction_is_paid_in_bounded_slices_in_lru_order(l1):
    now = [0.0]
    ctl = controller(l1, LRUPolicy(), watermark=0.8, ratio=0.5, max_victims_per_tick=2, clock=lambda: now[0])
    a, b, c = keys("a", 4), keys("b", 4), keys("c", 6)
    for ks in (a, b, c):
        store(l1, ks)  # 14 objects: a trigger owes max(1, int(0.5 * 14)) = 7 evictions
    slices = []
    for _ in range(6):
        summary = ctl.tick()
        slices.append((summary["evicted"], summary["left_to_evict"]))
    assert slices == [(2, 5), (2, 3), (2, 1), (1, 0), (0, 0), (0, 0)]
    assert resident(l1, a) == [] and resident(l1, b) == b[:1] and resident(l1, c) == c
    assert ctl.report_status()["triggered_ticks"] == 1


def test_a_new_trigger_waits_for_the_trigger_interval(l1):
    now = [0.0]
    ctl = controller(l1, LRUPolicy(), watermark=0.5, ratio=0.1, trigger_interval_s=1.0, clock=lambda: now[0])
    store(l1, keys("a", 14))
    assert ctl.tick()["evicted"] == 1  # 13/16 still over 0.5
    now[0] = 0.5
    assert ctl.tick()["evicted"] == 0
    now[0] = 1.0
    assert ctl.tick()["evicted"] == 1
