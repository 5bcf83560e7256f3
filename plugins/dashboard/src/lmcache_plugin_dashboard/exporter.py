"""Prometheus gauges for what the page shows and core does not export: registered workers, active
sessions, per-salt quota usage and limits, periodic-thread health.

One collector in the default registry (``GET /metrics``), registered when the plugin is imported;
it reads the most recently started server (held weakly; :func:`bind` / :func:`unbind` from the
startup and shutdown hooks) at scrape time, through the same helpers as ``/dashboard/data``, so
Grafana's panels and the page agree. Nothing is bound while metrics are disabled
(``--disable-metrics``): the families are then empty.

* ``lmcache_mp_registered_workers{kind}``: ``lmcache_driven`` (``register_kv_cache``) and
  ``engine_driven`` workers;
* ``lmcache_mp_active_sessions``: the session manager's count;
* ``lmcache_mp_quota_usage_bytes{cache_salt}`` / ``lmcache_mp_quota_limit_bytes{cache_salt}``: bytes
  a salt holds in every tier, and its quota (salts without one have no limit sample); at most
  :data:`~lmcache_plugin_dashboard.snapshot.MAX_QUOTA_ROWS` salts, those with a quota first;
* ``lmcache_mp_periodic_thread_active{name,level}`` (1 when running and on time, else 0) and
  ``lmcache_mp_periodic_thread_failed_runs_total{name}``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lmcache_plugin_dashboard import snapshot

_bound: list[weakref.ReferenceType[Any] | None] = [None]


def bind(server: Any) -> None:
    _bound[0] = weakref.ref(server)


def unbind(server: Any) -> None:
    ref = _bound[0]
    if ref is not None and ref() is server:
        _bound[0] = None


def _families() -> list[Metric]:
    return [
        GaugeMetricFamily("lmcache_mp_registered_workers", "Workers registered on the data path, by kind",
                          labels=["kind"]),
        GaugeMetricFamily("lmcache_mp_active_sessions", "Request sessions the server holds"),
        GaugeMetricFamily("lmcache_mp_quota_usage_bytes", "Bytes a cache_salt holds in every tier",
                          labels=["cache_salt"]),
        GaugeMetricFamily("lmcache_mp_quota_limit_bytes", "A cache_salt's quota", labels=["cache_salt"]),
        GaugeMetricFamily("lmcache_mp_periodic_thread_active", "1 when a periodic thread runs on time",
                          labels=["name", "level"]),
        CounterMetricFamily("lmcache_mp_periodic_thread_failed_runs", "Runs of a periodic thread that raised",
                            labels=["name"]),
    ]


class DashboardCollector(Collector):
    """Reads the bound server at scrape time (see the module docstring)."""

    def describe(self) -> Iterator[Metric]:
        return iter(_families())

    def collect(self) -> Iterator[Metric]:
        workers, sessions, usage, limit, active, failed = families = _families()
        ref = _bound[0]
        server = ref() if ref is not None else None
        storage, datapath, store_sessions = ((server.storage, server.datapath, server.sessions)
                                             if server is not None and server.ready else (None, None, None))
        if storage is not None and datapath is not None and store_sessions is not None:
            w = snapshot.workers_section(datapath, store_sessions)
            workers.add_metric(["lmcache_driven"], w.registered)
            workers.add_metric(["engine_driven"], w.engine_driven)
            sessions.add_metric([], w.active_sessions)
            for row in snapshot.quota_rows(storage):
                usage.add_metric([row.cache_salt], row.used_bytes)
                if row.limit_bytes is not None:
                    limit.add_metric([row.cache_salt], row.limit_bytes)
            for t in snapshot.thread_rows(server.threads):
                active.add_metric([t.name, t.level], 1.0 if t.running and t.active else 0.0)
                failed.add_metric([t.name], t.failed_runs)
        return iter(families)


COLLECTOR = DashboardCollector()
REGISTRY.register(COLLECTOR)
