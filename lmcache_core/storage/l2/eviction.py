"""L2 eviction: the L1 machinery (policies, EvictionController) driving an adapter with a capacity.

An adapter configured with ``"eviction": {...}`` gets its own policy instance
(from the same plugin registry as L1's), fed by the adapter's listeners
(stored → created, accessed → touched, deleted → removed), and an
:class:`~lmcache_core.storage.eviction_controller.EvictionController` whose tier
is the adapter. Global policies need a known capacity (``max_capacity_gb`` > 0);
IsolatedLRU works from per-salt quotas and always applies. Deletes go through
the adapter, which skips keys a lookup or load holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.eviction import EvictionPolicy
from lmcache_core.storage.l1 import L1Result
from lmcache_core.storage.l2 import metrics
from lmcache_core.storage.l2.base import L2Adapter, L2Listener


class AdapterTier:
    """An L2 adapter seen as an eviction tier."""

    def __init__(self, adapter: L2Adapter) -> None:
        self.adapter = adapter

    def get_memory_usage(self) -> tuple[int, int]:
        usage = self.adapter.usage()
        return usage.total_bytes_used, usage.total_capacity_bytes

    def usage_by_salt(self) -> Mapping[str, int]:
        return self.adapter.usage_by_salt()

    def is_key_evictable(self, key: ObjectKey) -> bool:
        return self.adapter.is_key_evictable(key)

    def delete(self, keys: Sequence[ObjectKey], force: bool = False, *, evicted: bool = False) -> list[L1Result]:
        done = self.adapter.delete(keys).result()
        if evicted and any(done):
            metrics.L2_EVICTED.labels(self.adapter.l2_name).inc(sum(done))
        return [L1Result.SUCCESS if ok else L1Result.KEY_IS_LOCKED for ok in done]


class L2PolicyFeeder(L2Listener):
    """Keeps an eviction policy in step with one adapter's keys."""

    def __init__(self, policy: EvictionPolicy) -> None:
        self.policy = policy

    def on_l2_keys_stored(self, adapter: L2Adapter, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        self.policy.on_keys_created(list(keys))

    def on_l2_keys_accessed(self, adapter: L2Adapter, keys: Sequence[ObjectKey]) -> None:
        self.policy.on_keys_touched(list(keys))

    def on_l2_keys_deleted(self, adapter: L2Adapter, keys: Sequence[ObjectKey]) -> None:
        self.policy.on_keys_removed(list(keys))
