"""The storage manager: L1, its eviction controller and the quota manager, wired from config.

It owns no thread of its own: :meth:`StorageManager.start` registers the
eviction loop with the server's periodic-thread registry, so it shows in
``/periodic-threads`` and stops with everything else. L2 adapters, the store
controller and the prefetch controller join here with the L2 tier, with the
registry of warm prefetch jobs (``POST /l2/prefetch``) and its sweep thread.
"""

from __future__ import annotations

import logging
from typing import Any

from lmcache_core.config import StorageManagerConfig
from lmcache_core.observability.periodic import PeriodicThreadRegistry, ThreadLevel
from lmcache_core.registry import PluginError, Registry
from lmcache_core.storage import metrics
from lmcache_core.storage.eviction import EvictionPolicy
from lmcache_core.storage.eviction_controller import EvictionController, PolicyFeeder
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.l2.base import L2Adapter, L2AdapterContext
from lmcache_core.storage.l2.eviction import AdapterTier, L2PolicyFeeder
from lmcache_core.storage.l2.prefetch_controller import PrefetchController, WarmPrefetchJobs
from lmcache_core.storage.l2.store_controller import StoreController
from lmcache_core.storage.quota import QuotaManager, gib_to_bytes

logger = logging.getLogger(__name__)

GIB = 1 << 30
L1_EVICTION_THREAD = "l1-eviction-controller"
L2_STORE_THREAD = "l2-store-controller"
L2_EVICTION_THREAD = "l2-eviction-controller"
L2_WARM_JOBS_THREAD = "l2-warm-prefetch-job-sweeper"
L2_WARM_JOBS_SWEEP_S = 5.0  # only frees memory: polls see expiry exactly (they sweep first)
L2_STORE_INTERVAL_S = 0.02
L1_EVICTION_INTERVAL_S = 0.05  # slices of a trigger's eviction; triggers at most once a second


class L2AdapterFailed(PluginError):
    """An ``--l2-adapter`` that could not be built or started, as one line naming the plugin, type and position.

    ``exit_code`` is what ``lmcache-server`` exits with: 2 (a configuration error) when the adapter refused
    its configuration with a ``ValueError`` (``msgspec.ValidationError`` included) or its ``eviction`` block
    names an unknown policy, 3 (a plugin fault) for anything else the factory or ``start()`` raised.
    """

    def __init__(self, index: int, type_name: str, plugin: str, stage: str, exc: BaseException) -> None:
        config_error = isinstance(exc, ValueError) or stage == "eviction"
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever the message holds
        super().__init__(f"--l2-adapter #{index} (type {type_name!r}, plugin {plugin!r}): {stage} failed: {reason}")
        self.index, self.type_name, self.plugin, self.stage = index, type_name, plugin, stage
        self.exit_code = 2 if config_error else 3


def parse_l2_configs(entries: list[dict[str, Any]], types: Registry) -> list[tuple[str, Any]]:
    """``--l2-adapter`` JSON objects → ``(type_name, config Struct)``; ValueError names the position."""
    import msgspec

    parsed = []
    for index, entry in enumerate(entries):
        type_name = entry.get("type")
        if type_name not in types:
            known = ", ".join(types.names()) or "none (install an L2 adapter plugin)"
            raise ValueError(f"--l2-adapter #{index}: unknown type {type_name!r}; known types: {known}")
        fields = {k: v for k, v in entry.items() if k != "type"}
        try:
            config = msgspec.convert(fields, types.get(type_name).config_type)
        except (msgspec.ValidationError, TypeError, ValueError) as exc:
            raise ValueError(f"--l2-adapter #{index} ({type_name}): invalid config: {exc}") from None
        parsed.append((type_name, config))
    return parsed


class StorageManager:
    """L1 + eviction + quotas for one server."""

    def __init__(
        self,
        config: StorageManagerConfig,
        policies: Registry,
        *,
        l2_types: Registry | None = None,
        shm_name: str | None = None,
        enable_metrics: bool = True,
    ) -> None:
        self.config = config
        l2_configs = parse_l2_configs(config.l2_adapter, l2_types) if l2_types is not None else []
        self.l1 = L1Manager(
            int(config.l1_size_gb * GIB),
            align_bytes=config.l1_align_bytes,
            write_ttl_seconds=config.l1_write_ttl_seconds,
            read_ttl_seconds=config.l1_read_ttl_seconds,
            shm_name=shm_name,
            enable_metrics=enable_metrics,
            prefault_ahead_bytes=int(config.l1_prefault_ahead_gb * GIB),
        )
        self.quotas = QuotaManager()
        for salt, gib in config.cache_salt_quota:  # --cache-salt-quota: in force before any eviction tick
            self.quotas.set_quota(salt, gib_to_bytes(gib))
        self.quotas.register_usage_provider("l1", self.l1.usage_by_salt)
        self.policy: EvictionPolicy = policies.get(config.eviction_policy)()
        self.l1.register_listener(PolicyFeeder(self.policy))
        self.l1_eviction = EvictionController(
            self.l1, self.policy, watermark=config.eviction_trigger_watermark,
            ratio=config.eviction_ratio, quotas=self.quotas, name="l1",
            on_tick=metrics.record_eviction_tick if enable_metrics else None,
        )
        self.l2_adapters: list[L2Adapter] = []
        self.l2_eviction: list[EvictionController] = []
        try:
            for index, (type_name, l2_config) in enumerate(l2_configs):
                stage = "construction"
                try:
                    adapter = l2_types.get(type_name).factory(l2_config, L2AdapterContext(index, type_name))  # type: ignore
                    self.l2_adapters.append(adapter)
                    stage = "eviction"
                    self._wire_l2_eviction(adapter, policies)  # before start(): recovered keys feed the policy
                    stage = "start"
                    adapter.start()
                except Exception as exc:
                    raise L2AdapterFailed(index, type_name, l2_types.plugin_of(type_name), stage,  # type: ignore
                                          exc) from exc
                self.quotas.register_usage_provider(f"l2:{index}", adapter.usage_by_salt)
        except BaseException:
            for adapter in self.l2_adapters:
                adapter.close()
            self.l1.close()
            raise
        self.store_controller = StoreController(self.l1, self.l2_adapters, policy=config.l2_store_policy)
        self.prefetch: PrefetchController | None = None
        self.warm_jobs: WarmPrefetchJobs | None = None
        if self.l2_adapters:
            self.prefetch = PrefetchController(self.l1, self.l2_adapters,
                                               max_in_flight=config.l2_prefetch_max_in_flight,
                                               retain=config.l2_prefetch_policy == "retain")
            self.warm_jobs = WarmPrefetchJobs(self.prefetch, enable_metrics=enable_metrics)
        self._threads: PeriodicThreadRegistry | None = None

    def _wire_l2_eviction(self, adapter: L2Adapter, policies: Registry) -> None:
        ev = getattr(adapter.config, "eviction", None)
        if ev is None:
            return
        policy: EvictionPolicy = policies.get(ev.eviction_policy)()
        if not policy.supports_isolation and adapter.max_capacity_bytes <= 0:
            logger.warning("L2 %s #%d: eviction policy %s needs max_capacity_gb > 0; not evicting",
                           adapter.type_name, adapter.index, ev.eviction_policy)
            return
        adapter.register_listener(L2PolicyFeeder(policy))
        self.l2_eviction.append(EvictionController(
            AdapterTier(adapter), policy, watermark=ev.trigger_watermark, ratio=ev.eviction_ratio,
            quotas=self.quotas, name=f"l2:{adapter.index}"))

    def find_l2_adapter(self, type_name: str | None = None) -> L2Adapter | None:
        """The first adapter of ``type_name`` (the primary, index 0, when None); None when there is none."""
        for adapter in self.l2_adapters:
            if type_name is None or adapter.type_name == type_name:
                return adapter
        return None

    def _l2_eviction_tick(self) -> dict[str, Any]:
        return {c.name: c.tick()["evicted"] for c in self.l2_eviction}

    def start(self, threads: PeriodicThreadRegistry) -> None:
        """Register and start the background loops."""
        self._threads = threads
        threads.create(L1_EVICTION_THREAD, L1_EVICTION_INTERVAL_S, self.l1_eviction.tick, level=ThreadLevel.HIGH)
        if self.l2_adapters:
            threads.create(L2_STORE_THREAD, L2_STORE_INTERVAL_S, self.store_controller.drain, level=ThreadLevel.HIGH)
        if self.l2_eviction:
            threads.create(L2_EVICTION_THREAD, L1_EVICTION_INTERVAL_S, self._l2_eviction_tick, level=ThreadLevel.HIGH)
        if self.warm_jobs is not None:
            threads.create(L2_WARM_JOBS_THREAD, L2_WARM_JOBS_SWEEP_S, self.warm_jobs.sweep, level=ThreadLevel.LOW)

    def report_status(self) -> dict[str, Any]:
        """The ``storage_manager`` section of ``/status``."""
        l1 = self.l1.report_status()
        eviction = self.l1_eviction.report_status()
        thread = self._threads.get(L1_EVICTION_THREAD) if self._threads else None
        eviction["thread_alive"] = bool(thread and thread.is_running)
        l2 = [a.report_status() for a in self.l2_adapters]
        return {
            "is_healthy": bool(l1.get("is_healthy", True)) and (thread is None or thread.is_running)
            and all(s.get("is_healthy", False) for s in l2),
            "l1_manager": l1,
            "l1_eviction_controller": eviction,
            "store_controller": self.store_controller.report_status(),
            "prefetch_controller": self.prefetch.report_status() if self.prefetch is not None else None,
            "warm_prefetch_jobs": self.warm_jobs.report_status() if self.warm_jobs is not None else None,
            "l2_eviction_controller": {"adapters": [
                {**c.report_status(), "adapter_index": c.tier.adapter.index,  # type: ignore[attr-defined]
                 "total_bytes_used": c.tier.get_memory_usage()[0],
                 "total_capacity_bytes": c.tier.get_memory_usage()[1]} for c in self.l2_eviction]},
            "l2_adapters": l2,
            "num_l2_adapters": len(l2),
        }

    def close(self) -> None:
        """Stop the loops (if this manager started them) and free L1."""
        if self._threads is not None:
            self._threads.unregister(L1_EVICTION_THREAD, stop=True)
            self._threads.unregister(L2_STORE_THREAD, stop=True)
            self._threads.unregister(L2_EVICTION_THREAD, stop=True)
            self._threads.unregister(L2_WARM_JOBS_THREAD, stop=True)
        if self.prefetch is not None:
            self.prefetch.close()
        for adapter in self.l2_adapters:
            adapter.close()
        self.l1.close()
