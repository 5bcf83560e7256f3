"""Prometheus metrics every L2 adapter gets from the base class, labelled by ``l2_name`` (``<type>:<index>``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

L2_STORED = Counter("lmcache_mp_l2_store_completed_objects", "Objects stored in an L2 adapter", ["l2_name"])
L2_LOADED = Counter("lmcache_mp_l2_load_completed_objects", "Objects loaded from an L2 adapter", ["l2_name"])
L2_DELETED = Counter("lmcache_mp_l2_deleted_objects", "Objects deleted from an L2 adapter", ["l2_name"])
L2_FAILURES = Counter("lmcache_mp_l2_failures", "Failed L2 operations", ["l2_name", "op"])
L2_USAGE_BYTES = Gauge("lmcache_mp_l2_usage_bytes", "Bytes stored in an L2 adapter", ["l2_name"])


def reset() -> None:
    """Zero the L2 counters (``POST /metrics/reset``)."""
    for counter in (L2_STORED, L2_LOADED, L2_DELETED, L2_FAILURES):
        counter.clear()
