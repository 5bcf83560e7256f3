"""The server's Prometheus metrics, as one place to reset them (``POST /metrics/reset``).

Each component defines its metrics next to the code that updates them
(``storage/metrics.py`` for L1, ``storage/l2/metrics.py`` for L2,
``transport/zmq_server.py`` for ZMQ requests), all in prometheus_client's
default registry.
"""

from __future__ import annotations

from typing import Any


class Children:
    """``metric.labels(*values)`` for hot paths: the labelled child, cached by its label values.

    prometheus_client's ``labels()`` validates and locks on every call (about as much
    as the LOOKUP handler's own work for a small prefix); a dict hit does not.
    :meth:`clear` drops the cache with the metric's children (``POST /metrics/reset``),
    so a reset metric is never updated through a stale child. The cache is bounded:
    past ``limit`` distinct label sets it starts over (label values come from clients).
    """

    __slots__ = ("metric", "_cache", "_limit")

    def __init__(self, metric: Any, limit: int = 4096) -> None:
        self.metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}
        self._limit = limit

    def __call__(self, *values: str) -> Any:
        child = self._cache.get(values)
        if child is None:
            if len(self._cache) >= self._limit:
                self._cache = {}
            child = self._cache[values] = self.metric.labels(*values)
        return child

    def clear(self) -> None:
        self._cache = {}
        self.metric.clear()


def reset_all() -> None:
    """Zero every lmcache-server counter (gauges read live values and need nothing)."""
    from lmcache_core.http import metrics as http_metrics
    from lmcache_core.storage import metrics as l1_metrics
    from lmcache_core.storage.l2 import metrics as l2_metrics
    from lmcache_core.transport import metrics as dp_metrics
    from lmcache_core.transport.zmq_server import ZMQ_REQUEST_CHILDREN

    l1_metrics.reset()
    l2_metrics.reset()
    ZMQ_REQUEST_CHILDREN.clear()
    http_metrics.reset()
    dp_metrics.reset()
