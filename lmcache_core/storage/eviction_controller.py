"""The eviction controller: one tier's eviction tick, run once a second by a periodic thread.

A tier is anything with the :class:`EvictionTier` surface: the L1 manager now,
L2 adapters with a capacity later. The policy is fed by the tier's listeners
(:class:`PolicyFeeder` for L1), so a tick only decides and deletes:

1. read ``(used, capacity)`` (and usage per salt for isolation policies);
2. :func:`~lmcache_core.storage.eviction.plan_eviction` picks victims, skipping
   keys the tier reports as locked (``is_key_evictable``);
3. delete them through the tier, which refuses any key that got locked in the
   meantime; the tier's delete listener then removes them from the policy.

The cost of a tick is proportional to what it examines and evicts, not to
what is stored (the policy bounds its scan past locked keys), and bounded:
a trigger decides how much to evict (LMCache's ``ratio x tracked``: 200,000
keys out of a million), but each tick evicts at most ``max_victims_per_tick``
of that debt. The thread ticks every 50 ms, so a large eviction is paid in
slices of a few tens of milliseconds (STOREs interleave) and finishes within
about a second, while a new trigger is considered at most once per
``trigger_interval_s`` (1 s, LMCache's cadence).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.eviction import EvictionPolicy, plan_eviction
from lmcache_core.storage.l1 import L1Listener, L1Result
from lmcache_core.storage.quota import QuotaManager

logger = logging.getLogger(__name__)

DELETE_BATCH = 8192
"""Victims deleted per tier call: keeps each hold of the tier's lock short (a few ms)."""

MAX_VICTIMS_PER_TICK = 12288
"""Victims per tick (about 40 ms of policy + L1 work here): the bound on one tick's cost."""


class EvictionTier(Protocol):
    """What an eviction controller needs from a tier."""

    def get_memory_usage(self) -> tuple[int, int]: ...

    def usage_by_salt(self) -> Mapping[str, int]: ...

    def is_key_evictable(self, key: ObjectKey) -> bool: ...

    def delete(self, keys: Sequence[ObjectKey], force: bool = False, *, evicted: bool = False) -> list[L1Result]: ...


class PolicyFeeder(L1Listener):
    """Feeds an eviction policy from L1 events.

    created → created (an abandoned reservation is still tracked, hence evictable
    once its write TTL passes); accessed → touched; deleted → removed. Releasing a
    read lock is not a use, so it is not forwarded.
    """

    def __init__(self, policy: EvictionPolicy) -> None:
        self.policy = policy

    def on_keys_created(self, keys: list[ObjectKey]) -> None:
        self.policy.on_keys_created(keys)

    def on_keys_accessed(self, keys: list[ObjectKey]) -> None:
        self.policy.on_keys_touched(keys)

    def on_keys_deleted(self, keys: list[ObjectKey]) -> None:
        self.policy.on_keys_removed(keys)


class EvictionController:
    """Decides and performs eviction for one tier; :meth:`tick` is the periodic thread's body."""

    def __init__(
        self,
        tier: EvictionTier,
        policy: EvictionPolicy,
        *,
        watermark: float = 0.8,
        ratio: float = 0.2,
        quotas: QuotaManager | None = None,
        name: str = "l1",
        on_tick: Callable[[bool], None] | None = None,
        max_victims_per_tick: int = MAX_VICTIMS_PER_TICK,
        trigger_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_tick(triggered)`` is called after every tick (the tier's metrics)."""
        if not 0 < watermark <= 1 or not 0 < ratio <= 1:
            raise ValueError("watermark and ratio must be in (0, 1]")
        self.tier = tier
        self.policy = policy
        self.watermark = watermark
        self.ratio = ratio
        self.quotas = quotas
        self.name = name
        self._on_tick = on_tick
        self.max_victims_per_tick = max(1, max_victims_per_tick)
        self.trigger_interval_s = trigger_interval_s
        self._clock = clock
        self._last_trigger = float("-inf")
        self._debt = 0  # global policies: keys still to evict for the last trigger
        self._pending: list[ObjectKey] = []  # isolation policies: planned victims not yet deleted
        self._lock = threading.Lock()  # one tick at a time (the thread, or a manual tick)
        self.ticks = 0
        self.triggered_ticks = 0
        self.evicted_total = 0
        self.refused_total = 0
        self.last_tick_ms = 0.0
        self.pressure_triggers = 0
        self.backstop_triggers = 0  # isolation policies: triggers past the global watermark  # triggers caused by failed allocations below the watermark
        self._seen_failures = self._allocation_failures()

    def tick(self) -> dict[str, Any]:
        """One eviction slice; returns a summary (it becomes the periodic thread's extra info)."""
        with self._lock:
            t0 = time.perf_counter()
            used, capacity = self.tier.get_memory_usage()
            triggered = False
            if not self._debt and not self._pending and self._clock() - self._last_trigger >= self.trigger_interval_s:
                failures = self._allocation_failures()
                pressured = failures > self._seen_failures and capacity > 0 and used < self.watermark * capacity
                self._seen_failures = failures
                # An allocation failed below the watermark (no free slot of its size: slabs held by
                # other sizes): evict as if at the watermark, so the failing size gets room back.
                triggered = self._plan(max(used, int(self.watermark * capacity) + 1) if pressured else used,
                                       capacity)
                self.pressure_triggers += pressured and triggered
            victims = self._take_slice()
            evicted = 0
            for start in range(0, len(victims), DELETE_BATCH):
                results = self.tier.delete(victims[start:start + DELETE_BATCH], evicted=True)
                evicted += sum(1 for r in results if r == L1Result.SUCCESS)
            self.refused_total += len(victims) - evicted
            self.triggered_ticks += triggered
            self.ticks += 1
            self.evicted_total += evicted
            self.last_tick_ms = (time.perf_counter() - t0) * 1000
            if self._on_tick is not None:
                self._on_tick(triggered)
            return {"evicted": evicted, "candidates": len(victims), "left_to_evict": self.left_to_evict,
                    "used_bytes": used, "capacity_bytes": capacity}

    def _allocation_failures(self) -> int:
        failures = getattr(self.tier, "allocation_failures", None)
        return int(failures()) if callable(failures) else 0

    @property
    def left_to_evict(self) -> int:
        return self._debt + len(self._pending)

    def _plan(self, used: int, capacity: int) -> bool:
        """Decide a trigger's eviction (stored as debt or pending victims); whether it triggered."""
        if self.policy.supports_isolation:
            usage_by_salt = dict(self.tier.usage_by_salt())
            limits = {salt: self.quotas.get_limit_bytes(salt) for salt in usage_by_salt} if self.quotas else {}
            self._pending = plan_eviction(self.policy, used, capacity, self.watermark, self.ratio,
                                          self.tier.is_key_evictable, usage_by_salt, limits)
            self.backstop_triggers += bool(self._pending) and capacity > 0 and used >= self.watermark * capacity
            triggered = bool(self._pending)
        elif capacity > 0 and used / capacity >= self.watermark:
            tracked = self.policy.tracked_count()
            self._debt = min(tracked, max(1, int(self.ratio * tracked))) if tracked else 0
            triggered = self._debt > 0
        else:
            triggered = False
        if triggered:
            self._last_trigger = self._clock()
        return triggered

    def _take_slice(self) -> list[ObjectKey]:
        budget = self.max_victims_per_tick
        if self._pending:
            victims, self._pending = self._pending[:budget], self._pending[budget:]
            return victims
        if self._debt:
            victims = self.policy.select_victims(min(self._debt, budget), self.tier.is_key_evictable)
            # Nothing selectable (all locked): drop the debt; the next trigger decides afresh.
            self._debt = self._debt - len(victims) if victims else 0
            return victims
        return []

    def report_status(self) -> dict[str, Any]:
        """Status section (the reference's field names plus counters)."""
        return {
            "eviction_policy": self.policy.name,
            "trigger_watermark": self.watermark,
            "eviction_ratio": self.ratio,
            "tracked_keys": self.policy.tracked_count(),
            "ticks": self.ticks,
            "triggered_ticks": self.triggered_ticks,
            "evicted_total": self.evicted_total,
            "refused_total": self.refused_total,
            "last_tick_ms": round(self.last_tick_ms, 3),
            "left_to_evict": self.left_to_evict,
            "pressure_triggers": self.pressure_triggers,
            "backstop_triggers": self.backstop_triggers,
        }
