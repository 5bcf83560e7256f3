"""Prometheus metrics of the L2 tier: every adapter's (from the base class, labelled by ``l2_name``,
``<type>:<index>``), the write-behind's (store controller) and the prefetches' (lookup-driven and
warm). They live together so ``POST /metrics/reset`` has one :func:`reset` to call."""

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

# Spec §5.2 l2_store_submitted_objects and num_inflight_l2_stores, plus what an operator needs to see
# write-behind falling behind: the queue depth and what it dropped or skipped.
L2_STORE_SUBMITTED = Counter("lmcache_mp_l2_store_submitted_objects",
                             "Objects handed to the L2 adapters by the write-behind")
L2_STORE_DROPPED = Counter("lmcache_mp_l2_store_dropped_objects",
                           "Objects dropped from a full write-behind queue (never stored in L2)")
L2_STORE_SKIPPED = Counter("lmcache_mp_l2_store_skipped_objects",
                           "Objects that left L1 before the write-behind reached them")
L2_STORE_QUEUE = Gauge("lmcache_mp_l2_store_queue_objects", "Objects waiting for the write-behind")
L2_STORES_IN_FLIGHT = Gauge("lmcache_mp_num_inflight_l2_stores", "Objects being written to L2 now")

WARM_JOBS_SUBMITTED = Counter("lmcache_mp_l2_warm_prefetch_jobs_submitted",
                              "Warm prefetch jobs submitted (POST /l2/prefetch)")
WARM_JOBS_COMPLETED = Counter("lmcache_mp_l2_warm_prefetch_jobs_completed",
                              "Warm prefetch jobs whose load finished")
WARM_JOBS_EXPIRED = Counter("lmcache_mp_l2_warm_prefetch_jobs_expired",
                            "Completed warm prefetch jobs dropped unpolled (past the TTL or the count cap)")
WARM_KEYS_LOADED = Counter("lmcache_mp_l2_warm_prefetch_loaded_keys",
                           "Objects loaded from L2 into L1 by warm prefetch jobs")
WARM_JOBS_IN_FLIGHT = Gauge("lmcache_mp_l2_warm_prefetch_jobs_in_flight",
                            "Warm prefetch jobs submitted and not yet completed")

# Lookup-driven prefetch (spec §5.2 l2_prefetch_lookup_objects, l2_prefetch_load_submitted_objects,
# l2_prefetch_failure{reason}): what a LOOKUP (or a warm job) asked L2 for, what it loaded, and why not.
PREFETCH_LOOKUP_OBJECTS = Counter("lmcache_mp_l2_prefetch_lookup_objects", "Objects looked up in L2 by prefetches")
PREFETCH_LOAD_SUBMITTED = Counter("lmcache_mp_l2_prefetch_load_submitted_objects",
                                  "Objects a prefetch reserved in L1 and started loading from L2")
PREFETCH_LOAD_COMPLETED = Counter("lmcache_mp_l2_prefetch_load_completed_objects",
                                  "Objects a prefetch loaded from L2 and handed to L1")
PREFETCH_FAILURE = Counter("lmcache_mp_l2_prefetch_failure",
                           "Objects a prefetch found in L2 but could not bring to L1: l1_oom (no L1 room), "
                           "load_failed (the adapter's read failed or the object vanished)", ["reason"])


def reset() -> None:
    """Zero the L2 counters and histograms (``POST /metrics/reset``); gauges are live."""
    for labelled in (L2_STORED, L2_LOADED, L2_DELETED, L2_EVICTED, L2_FAILURES, L2_STORE_GBPS, L2_LOAD_GBPS,
                     PREFETCH_FAILURE):
        labelled.clear()
    for counter in (L2_STORE_SUBMITTED, L2_STORE_DROPPED, L2_STORE_SKIPPED, WARM_JOBS_SUBMITTED, WARM_JOBS_COMPLETED,
                    WARM_JOBS_EXPIRED, WARM_KEYS_LOADED, PREFETCH_LOOKUP_OBJECTS, PREFETCH_LOAD_SUBMITTED,
                    PREFETCH_LOAD_COMPLETED):
        counter.reset()
