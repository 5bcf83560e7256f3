"""Prometheus metrics every L2 adapter gets from the base class, labelled by ``l2_name`` (``<type>:<index>``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

L2_STORED = Counter("lmcache_mp_l2_store_completed_objects", "Objects stored in an L2 adapter", ["l2_name"])
L2_LOADED = Counter("lmcache_mp_l2_load_completed_objects", "Objects loaded from an L2 adapter", ["l2_name"])
L2_EVICTED = Counter("lmcache_mp_l2_evicted_objects", "Objects evicted from an L2 adapter by its eviction policy",
                     ["l2_name"])
L2_DELETED = Counter("lmcache_mp_l2_deleted_objects", "Objects deleted from an L2 adapter", ["l2_name"])
L2_FAILURES = Counter("lmcache_mp_l2_failures", "Failed L2 operations", ["l2_name", "op"])
L2_USAGE_BYTES = Gauge("lmcache_mp_l2_usage_bytes", "Bytes stored in an L2 adapter", ["l2_name"])
_GBPS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16)
# Spec §5.2 l2_store_throughput / l2_load_throughput: one observation per store or load task (a batch).
L2_STORE_GBPS = Histogram("lmcache_mp_l2_store_throughput_GB_per_second", "Bandwidth of one L2 store task",
                          ["l2_name"], buckets=_GBPS_BUCKETS)
L2_LOAD_GBPS = Histogram("lmcache_mp_l2_load_throughput_GB_per_second", "Bandwidth of one L2 load task",
                         ["l2_name"], buckets=_GBPS_BUCKETS)
L2_LOADS_IN_FLIGHT = Gauge("lmcache_mp_num_inflight_l2_loads", "Objects being read from an L2 adapter now",
                           ["l2_name"])


def reset() -> None:
    """Zero the L2 counters (``POST /metrics/reset``)."""
    for counter in (L2_STORED, L2_LOADED, L2_DELETED, L2_EVICTED, L2_FAILURES, L2_STORE_GBPS, L2_LOAD_GBPS):
        counter.clear()
