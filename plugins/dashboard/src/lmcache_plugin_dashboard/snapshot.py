"""``GET /dashboard/data``: one compact snapshot of a server, from in-process counters only.

The numbers come from the same places ``GET /status`` and ``GET /metrics`` take theirs:

* L1: the allocator's ``(used, capacity)`` (``/status`` ``l1_manager.memory_used_bytes`` /
  ``memory_total_bytes``) and the object index's length (``total_object_count``); evictions are
  ``lmcache_mp_l1_evicted_chunks_total``.
* L2: each adapter's in-process accounting (:meth:`L2Adapter.usage`, its ``failures``), never its
  ``report_status`` — the FS adapter's checks the base directory on disk, and this snapshot must
  not touch storage. The breaker state is whatever the adapter reports as ``breaker_state``
  (a method or attribute) or ``breaker.state``; ``null`` for an adapter without a breaker.
* lookups, STORE/RETRIEVE traffic, ZMQ requests, failures: the data path's Prometheus counters
  (``lmcache_mp_lookup_*``, ``lmcache_mp_{store,retrieve}_{bytes,chunks}_total``,
  ``lmcache_mp_zmq_requests_total``, ...), summed over their labels. Counters are cumulative:
  the page turns two snapshots into rates, and Prometheus does the same with ``rate()``.
* LOOKUP latency: the plugin times the LOOKUP handler (see :mod:`lmcache_plugin_dashboard.latency`).
* workers, sessions, quotas, periodic threads: the data path's registration tables, the session
  manager's count, the quota manager's limits and usage providers (the tiers' per-salt byte maps),
  the periodic-thread registry — the same sources as ``/status``, ``/quota`` and
  ``/periodic-threads``.

Everything here is a copy of counters taken under the components' own short locks; the cost is
O(label sets + salts + threads + adapters), independent of how many objects are stored.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from lmcache_core.api import ZMQ_REQUESTS, full_version, http_metrics, l1_metrics, l2_metrics
from lmcache_core.api import datapath_metrics as dp_metrics

if TYPE_CHECKING:
    from lmcache_core.api import CacheServer

MAX_QUOTA_ROWS = 64
"""Salts shown (those with a quota first, then by usage); ``/quota`` has the full list."""

DEFAULT_SALT = "_default"
"""How the empty ``cache_salt`` is written, as in the quota API and the metrics' labels."""


class L1Section(msgspec.Struct):
    used_bytes: int
    capacity_bytes: int
    object_count: int
    evicted_objects_total: float
    allocation_failures_total: float


class L2AdapterSection(msgspec.Struct):
    name: str
    type_name: str
    index: int
    healthy: bool
    used_bytes: int
    capacity_bytes: int
    """0: no capacity limit configured."""
    breaker: str | None
    """The adapter's circuit-breaker state (``closed``, ``open``, ``half_open``), ``null`` without one."""
    failures: dict[str, int]


class L2Section(msgspec.Struct):
    adapters: list[L2AdapterSection]
    store_queue_objects: float
    store_dropped_objects_total: float


class LookupSection(msgspec.Struct):
    requests_total: float
    requested_tokens_total: float
    hit_tokens_total: dict[str, float]
    """By tier: ``l1``, ``l2``; the miss is requested minus hits."""
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_samples: int
    """LOOKUP handler timings the percentiles are taken over (the last minute, at most 4096)."""


class TrafficSection(msgspec.Struct):
    store_bytes_total: float
    store_chunks_total: float
    retrieve_bytes_total: float
    retrieve_chunks_total: float
    requests_total: dict[str, float]
    """ZMQ requests by op (``store``, ``retrieve``, ``lookup``, ...), every outcome."""


class WorkersSection(msgspec.Struct):
    registered: int
    """Workers registered with ``register_kv_cache`` (``/status`` ``registered_gpu_ids``)."""
    engine_driven: int
    connections: int
    active_sessions: int
    active_prefetch_jobs: int


class QuotaRow(msgspec.Struct):
    cache_salt: str
    used_bytes: int
    limit_bytes: int | None


class ThreadRow(msgspec.Struct):
    name: str
    level: str
    running: bool
    active: bool
    last_run_ago: float | None
    """Seconds since the last run started; ``null`` before the first."""
    total_runs: int
    failed_runs: int
    last_error: str | None


class ErrorRow(msgspec.Struct):
    source: str
    reason: str
    count: float


class PluginsSection(msgspec.Struct):
    loaded: list[str]
    failed: list[str]


class DashboardData(msgspec.Struct):
    """One snapshot of a ready server; counters are cumulative since start (or the last metrics reset)."""

    state: str
    """``ready``; before the engine is ready the route answers 503 ``{"error", "state": "starting"}``."""
    node: str
    healthy: bool
    version: str
    time: float
    """Server wall clock (seconds since the epoch) when the snapshot was taken."""
    uptime_seconds: float
    metrics_enabled: bool
    plugins: PluginsSection
    l1: L1Section
    l2: L2Section
    lookups: LookupSection
    traffic: TrafficSection
    workers: WorkersSection
    quotas: list[QuotaRow]
    threads: list[ThreadRow]
    errors: list[ErrorRow]
    peers: list[str]
    """The ``--dashboard-peer`` URLs (their data: ``GET /dashboard/fleet``)."""


# -- reading prometheus_client metrics ---------------------------------------------------------


def _samples(metric: Any, suffix: str = "_total") -> Iterator[tuple[dict[str, str], float]]:
    """``(labels, value)`` of every child of ``metric`` whose sample name ends with ``suffix``."""
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample.labels, sample.value


def total(metric: Any) -> float:
    """A counter summed over all its label sets."""
    return sum(value for _, value in _samples(metric))


def group(samples: Iterable[tuple[dict[str, str], float]], label: str) -> dict[str, float]:
    """Sample values summed per value of ``label``."""
    out: dict[str, float] = {}
    for labels, value in samples:
        key = labels.get(label, "")
        out[key] = out.get(key, 0.0) + value
    return out


def by_label(metric: Any, label: str) -> dict[str, float]:
    """A counter summed per value of ``label``."""
    return group(_samples(metric), label)


def gauge(metric: Any) -> float:
    return sum(value for _, value in _samples(metric, ""))


# -- sections --------------------------------------------------------------------------------


def _breaker_state(adapter: Any) -> str | None:
    state = getattr(adapter, "breaker_state", None)
    if callable(state):
        state = state()
    if state is None:
        state = getattr(getattr(adapter, "breaker", None), "state", None)
    if state is None:
        return None
    value = getattr(state, "value", state)
    return str(value).lower()


def _l2_section(storage: Any) -> L2Section:
    adapters = []
    for adapter in list(storage.l2_adapters):
        usage = adapter.usage()
        breaker = _breaker_state(adapter)
        adapters.append(L2AdapterSection(
            name=adapter.l2_name, type_name=adapter.type_name, index=adapter.index,
            # The base class's own flag (no public accessor); an open breaker is not healthy either.
            healthy=not getattr(adapter, "_closed", False) and breaker in (None, "closed"),
            used_bytes=int(usage.total_bytes_used), capacity_bytes=int(usage.total_capacity_bytes),
            breaker=breaker, failures={str(k): int(v) for k, v in dict(adapter.failures).items()}))
    return L2Section(adapters=adapters, store_queue_objects=gauge(l2_metrics.L2_STORE_QUEUE),
                     store_dropped_objects_total=total(l2_metrics.L2_STORE_DROPPED))


def quota_rows(storage: Any) -> list[QuotaRow]:
    limits = storage.quotas.list_quotas()
    usage = storage.quotas.usage_by_salt()
    salts = sorted(set(limits) | set(usage), key=lambda s: (s not in limits, -usage.get(s, 0), s))
    return [QuotaRow(cache_salt=salt or DEFAULT_SALT, used_bytes=int(usage.get(salt, 0)), limit_bytes=limits.get(salt))
            for salt in salts[:MAX_QUOTA_ROWS]]


def thread_rows(threads: Any) -> list[ThreadRow]:
    """The periodic threads, from their counters (not ``get_status``, which deep-copies each run summary)."""
    if threads is None:
        return []
    rows = []
    now = time.time()  # the registry's clock (PeriodicThreadRegistry's default)
    for t in threads.get_all():
        last = t.last_summary
        rows.append(ThreadRow(name=t.name, level=t.level.value, running=t.is_running, active=t.is_active,
                              last_run_ago=None if last is None else max(0.0, now - last.timestamp),
                              total_runs=t.total_runs, failed_runs=t.failed_runs,
                              last_error=None if last is None or last.success else last.message))
    return sorted(rows, key=lambda r: r.name)


def _error_rows(zmq: list[tuple[dict[str, str], float]], allocation_failures: dict[str, float],
                dropped: float) -> list[ErrorRow]:
    """Failure counters by reason (the counters read once for the whole snapshot are passed in)."""
    rows: list[ErrorRow] = []

    def add(source: str, items: Iterable[tuple[str, float]]) -> None:
        rows.extend(ErrorRow(source, reason, count) for reason, count in items if count > 0)

    add("zmq", ((f"{labels.get('op')} {labels.get('outcome')}", v) for labels, v in zmq
                if labels.get("outcome") != "ok"))
    add("lookup", ((f"early exit: {r}", v) for r, v in by_label(dp_metrics.LOOKUP_EARLY_EXIT, "reason").items()))
    add("l1", ((f"allocation failure during {d}", v) for d, v in allocation_failures.items()))
    add("l2", ((f"{labels.get('l2_name')} {labels.get('op')} failed", v)
               for labels, v in _samples(l2_metrics.L2_FAILURES)))
    add("l2", ((f"prefetch: {r}", v) for r, v in by_label(l2_metrics.PREFETCH_FAILURE, "reason").items()))
    add("l2", [("write-behind queue full: dropped", dropped)])
    add("http", ((f"{labels.get('method')} {labels.get('route')} {labels.get('status')}", v)
                 for labels, v in _samples(http_metrics.HTTP_REQUESTS) if labels.get("status", "").startswith("5")))
    rows.sort(key=lambda r: (-r.count, r.source, r.reason))
    return rows


def workers_section(datapath: Any, sessions: Any) -> WorkersSection:
    """Registered workers and connections (the data path's ``/status`` section) and the session count."""
    dp = datapath.report_status()
    return WorkersSection(registered=len(dp.get("registered_gpu_ids", ())),
                          engine_driven=len(dp.get("registered_non_cuda_instance_ids", ())),
                          connections=int(dp.get("connections", 0)), active_sessions=sessions.count(),
                          active_prefetch_jobs=int(dp.get("active_prefetch_jobs", 0)))


def node_name(server: CacheServer) -> str:
    """How this node names itself: ``--instance-id`` or, without one, its HTTP address."""
    mp = server.mp_config
    http = server.http_config
    return mp.instance_id or f"{http.http_host}:{http.http_port}"


def build(server: CacheServer, *, started: float, latency: tuple[float | None, float | None, int],
          peers: list[str]) -> DashboardData:
    """The snapshot of a ready ``server`` (components read through local references)."""
    storage, datapath, sessions = server.storage, server.datapath, server.sessions
    if storage is None or datapath is None or sessions is None:
        raise RuntimeError("engine not initialized")
    l1 = storage.l1
    used, capacity = l1.get_memory_usage()
    eviction_thread = server.threads.get("l1-eviction-controller") if server.threads is not None else None
    l2 = _l2_section(storage)
    zmq = list(_samples(ZMQ_REQUESTS))
    allocation_failures = by_label(l1_metrics.L1_ALLOCATION_FAILURE, "during")
    host = server.plugin_host
    obs = server.configs.get("observability")
    p50, p99, samples = latency
    return DashboardData(
        state="ready",
        node=node_name(server),
        healthy=server.ready and (eviction_thread is None or eviction_thread.is_running) and all(a.healthy for a in l2.adapters),
        version=full_version(),
        time=time.time(),
        uptime_seconds=max(0.0, time.monotonic() - started),
        metrics_enabled=not getattr(obs, "disable_metrics", False),
        plugins=PluginsSection(loaded=sorted(host.plugins), failed=sorted(f.name for f in host.failed)),
        l1=L1Section(used_bytes=int(used), capacity_bytes=int(capacity), object_count=len(l1),
                     evicted_objects_total=total(l1_metrics.L1_EVICTED),
                     allocation_failures_total=sum(allocation_failures.values())),
        l2=l2,
        lookups=LookupSection(
            requests_total=total(dp_metrics.LOOKUPS),
            requested_tokens_total=total(dp_metrics.LOOKUP_REQUESTED_TOKENS),
            hit_tokens_total={"l1": 0.0, "l2": 0.0, **by_label(dp_metrics.LOOKUP_HIT_TOKENS, "tier")},
            latency_p50_ms=p50, latency_p99_ms=p99, latency_samples=samples),
        traffic=TrafficSection(
            store_bytes_total=total(dp_metrics.STORE_BYTES), store_chunks_total=total(dp_metrics.STORE_CHUNKS),
            retrieve_bytes_total=total(dp_metrics.RETRIEVE_BYTES),
            retrieve_chunks_total=total(dp_metrics.RETRIEVE_CHUNKS),
            requests_total=group(zmq, "op")),
        workers=workers_section(datapath, sessions),
        quotas=quota_rows(storage),
        threads=thread_rows(server.threads),
        errors=_error_rows(zmq, allocation_failures, l2.store_dropped_objects_total),
        peers=list(peers),
    )
