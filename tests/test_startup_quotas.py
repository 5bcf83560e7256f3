"""--cache-salt-quota: per-salt quotas in force from startup, so a restart keeps a salt's recovered L2 objects.

Without it quotas live in memory only (as in LMCache): after a restart with a recovering L2 and
IsolatedLRU, every salt counts as one without a quota (limit 0) until an operator sets the quotas
again, and its recovered objects are evicted at the first tick.
"""

from __future__ import annotations

import pytest
from support import MemoryAdapter

from lmcache_core import hookimpl
from lmcache_core.config import StorageManagerConfig, build_configs
from lmcache_core.keys import ObjectKey
from lmcache_core.plugins import PluginHost
from lmcache_core.storage.l2.base import L2AdapterConfig
from lmcache_core.storage.manager import StorageManager
from lmcache_core.testing import parse_options

OBJ = 4096


def keys(prefix: str, n: int, salt: str) -> list[ObjectKey]:
    return [ObjectKey(f"{prefix}{i}".encode().ljust(32, b"."), "m", 0x01000100, 0, salt) for i in range(n)]


class Recovering:
    """A 'memory' L2 whose store outlives the server: what a restart recovers."""

    def __init__(self, objects: dict) -> None:
        self.objects = objects

    @hookimpl
    def lmcache_register_l2_adapters(self, register):
        class Config(L2AdapterConfig, kw_only=True, forbid_unknown_fields=True):
            pass

        register("memory", Config, lambda config, context: MemoryAdapter(config, context, preloaded=self.objects))


def restarted_manager(objects: dict, quotas: list[tuple[str, float]]) -> StorageManager:
    host = PluginHost(load_entry_points=False, extra_plugins=[("recovering", Recovering(objects))])
    entry = {"type": "memory", "eviction": {"eviction_policy": "IsolatedLRU", "trigger_watermark": 0.8,
                                            "eviction_ratio": 0.5}}
    config = StorageManagerConfig(l1_size_gb=0.01, l2_adapter=[entry], cache_salt_quota=quotas)
    return StorageManager(config, host.eviction_policies(), l2_types=host.l2_adapter_types(), enable_metrics=False)


def test_a_restart_keeps_recovered_objects_of_salts_with_a_startup_quota():
    keep, drop = keys("k", 4, "keep"), keys("d", 4, "drop")
    objects = {k: b"\1" * OBJ for k in keep + drop}
    sm = restarted_manager(objects, [("keep", 1.0)])
    try:
        adapter = sm.l2_adapters[0]
        assert sm.quotas.get_quota("keep") == 1 << 30
        assert adapter.usage_by_salt() == {"keep": 4 * OBJ, "drop": 4 * OBJ}  # recovered
        for _ in range(5):
            sm._l2_eviction_tick()
        assert [k for k in adapter.objects if k.cache_salt == "drop"] == []  # no quota: limit 0, as before
        assert {k for k in adapter.objects if k.cache_salt == "keep"} == set(keep)  # within its quota: all kept
    finally:
        sm.close()


def test_the_flag_the_variable_and_bad_values():
    args = parse_options([], ["--cache-salt-quota", "alice=1.5", "--cache-salt-quota", "=0.25"])
    assert build_configs(args)["storage_manager"].cache_salt_quota == [("alice", 1.5), ("", 0.25)]
    env = parse_options([], [], environ={"LMCACHE_CACHE_SALT_QUOTA": "a=1,b=2"})
    assert build_configs(env)["storage_manager"].cache_salt_quota == [("a", 1.0), ("b", 2.0)]
    for bad in ("alice", "alice=-1", "alice=x", "a/b=1", "a@b=1"):
        with pytest.raises(SystemExit):
            parse_options([], ["--cache-salt-quota", bad])
