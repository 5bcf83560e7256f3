"""L2 eviction through the storage manager: LRU by capacity, IsolatedLRU by quotas, locked keys kept."""

from __future__ import annotations

import pytest
import torch
from support import MemoryPlugin

from lmcache_core.config import StorageManagerConfig
from lmcache_core.keys import ObjectKey
from lmcache_core.plugins import PluginHost
from lmcache_core.storage.l1 import L1Result
from lmcache_core.storage.manager import StorageManager

OBJ = 4096
GIB = 1 << 30




def manager(eviction: dict, capacity_objects: int = 0) -> StorageManager:
    host = PluginHost(load_entry_points=False, extra_plugins=[("memory-l2", MemoryPlugin())])
    entry = {"type": "memory", "eviction": eviction, "max_capacity_gb": capacity_objects * OBJ / GIB}
    config = StorageManagerConfig(l1_size_gb=0.01, l2_adapter=[entry])
    return StorageManager(config, host.eviction_policies(), l2_types=host.l2_adapter_types(), enable_metrics=False)


def keys(prefix: str, n: int, salt: str = "") -> list[ObjectKey]:
    return [ObjectKey(f"{prefix}{i}".encode().ljust(32, b"."), "m", 0x01000100, 0, salt) for i in range(n)]


def push(sm: StorageManager, ks: list[ObjectKey]) -> None:
    res = sm.l1.reserve_write(ks, OBJ)
    assert all(r == L1Result.SUCCESS for r in res.results)
    for v in res.views:
        v.fill_(1)
    sm.l1.finish_write(ks)
    sm.store_controller.drain()


def tick_all(sm: StorageManager, n: int = 5) -> None:
    for _ in range(n):
        sm._l2_eviction_tick()


def test_lru_evicts_from_l2_over_its_watermark_tail_first():
    sm = manager({"eviction_policy": "LRU", "trigger_watermark": 0.8, "eviction_ratio": 0.25}, capacity_objects=10)
    adapter = sm.l2_adapters[0]
    try:
        from prometheus_client import REGISTRY

        def evicted_metric() -> float:
            return REGISTRY.get_sample_value("lmcache_mp_l2_evicted_objects_total", {"l2_name": "memory:0"}) or 0.0

        evicted_before = evicted_metric()
        a, b = keys("a", 4), keys("b", 5)
        push(sm, a)
        push(sm, b)  # 9 of 10 objects: over 0.8
        tick_all(sm, 1)
        assert set(adapter.objects) == set(a[:2] + b)  # int(0.25 * 9) = 2, the oldest request's tail first
        status = sm.report_status()["l2_eviction_controller"]["adapters"][0]
        assert status["eviction_policy"] == "LRU" and status["evicted_total"] == 2
        assert evicted_metric() == evicted_before + 2
    finally:
        sm.close()


def test_locked_l2_keys_survive_eviction():
    sm = manager({"eviction_policy": "LRU", "trigger_watermark": 0.5, "eviction_ratio": 1.0}, capacity_objects=4)
    adapter = sm.l2_adapters[0]
    try:
        ks = keys("k", 3)
        push(sm, ks)
        adapter.lookup_and_lock(ks[:1]).result(10)
        tick_all(sm, 1)
        assert set(adapter.objects) == {ks[0]}
        adapter.unlock(ks[:1])
    finally:
        sm.close()


def test_isolated_lru_on_l2_enforces_quotas_and_allowlist():
    sm = manager({"eviction_policy": "IsolatedLRU", "trigger_watermark": 0.8, "eviction_ratio": 0.5})
    adapter = sm.l2_adapters[0]
    try:
        sm.quotas.set_quota("alice", 2 * OBJ)
        alice, eve = keys("a", 4, "alice"), keys("e", 2, "eve")
        push(sm, alice)
        push(sm, eve)
        tick_all(sm, 3)
        assert [k for k in adapter.objects if k.cache_salt == "eve"] == []  # no quota: limit 0
        left = [k for k in adapter.objects if k.cache_salt == "alice"]
        assert 0 < len(left) < 4 and set(left) == set(alice[: len(left)])  # prefixes survive
        assert adapter.usage_by_salt() == {"alice": len(left) * OBJ}
    finally:
        sm.close()


def test_a_global_policy_without_capacity_is_not_wired():
    sm = manager({"eviction_policy": "LRU"}, capacity_objects=0)
    try:
        assert sm.l2_eviction == []
    finally:
        sm.close()


@pytest.mark.parametrize("checksum", ["none", "crc32"])
def test_fs_usage_per_salt_matches_the_files(tmp_path, checksum):
    import os

    from lmcache_core.storage.l2.base import L2AdapterContext
    from lmcache_plugin_fs.adapter import FSAdapterConfig, FSL2Adapter

    a = FSL2Adapter(FSAdapterConfig(base_path=str(tmp_path), checksum=checksum), L2AdapterContext(0, "fs"))
    a.start()
    try:
        ks = keys("x", 3, "s1") + keys("y", 2, "s2")
        a.store(ks, [torch.ones(OBJ, dtype=torch.uint8)] * 5).result(10)
        a.delete(ks[:1]).result(10)
        on_disk: dict[str, int] = {}
        trailer = 8 if checksum == "crc32" else 0
        for name in os.listdir(tmp_path):
            path = tmp_path / name
            if path.is_file() and name.endswith(".data"):
                salt = name[: -len(".data")].split("@")[4] if name.count("@") == 4 else ""
                on_disk[salt] = on_disk.get(salt, 0) + path.stat().st_size - trailer
        assert a.usage_by_salt() == on_disk == {"s1": 2 * OBJ, "s2": 2 * OBJ}
    finally:
        a.close()
