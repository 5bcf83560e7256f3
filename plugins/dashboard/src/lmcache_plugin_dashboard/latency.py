"""LOOKUP latency for the dashboard: the LOOKUP handler, timed.

No core metric times LOOKUP, so the plugin wraps the data path's LOOKUP handler at startup
(:func:`install`, undone by :func:`uninstall`) with a timer that records

* every duration into ``lmcache_mp_lookup_duration_seconds`` (a Prometheus histogram, for
  Grafana's ``histogram_quantile``), and
* the last :data:`WINDOW` durations with their time into a ring, from which the page's p50/p99
  over the last :data:`HORIZON_S` seconds are computed exactly.

What is timed is the handler's own work on the ZMQ loop thread (the LOOKUP op runs inline there):
from the decoded request to the reply value, not the network round trip a client sees. The
cost per LOOKUP is two ``perf_counter`` calls, a deque append and one histogram observation.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any

from prometheus_client import Histogram

from lmcache_core.api import Op

WINDOW = 4096
HORIZON_S = 60.0

LOOKUP_SECONDS = Histogram(
    "lmcache_mp_lookup_duration_seconds", "Time the LOOKUP handler took on the server (dashboard plugin)",
    buckets=(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1))


class LookupTimer:
    """A ring of ``(monotonic time, seconds)`` of recent LOOKUPs."""

    def __init__(self, window: int = WINDOW) -> None:
        self._ring: collections.deque[tuple[float, float]] = collections.deque(maxlen=window)
        self._installed: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        self._ring.append((time.monotonic(), seconds))  # deque.append is atomic
        LOOKUP_SECONDS.observe(seconds)

    def percentiles(self, horizon_s: float = HORIZON_S) -> tuple[float | None, float | None, int]:
        """``(p50 ms, p99 ms, samples)`` over the last ``horizon_s`` (nearest rank); ``None`` without samples."""
        cutoff = time.monotonic() - horizon_s
        values = sorted(s for t, s in list(self._ring) if t >= cutoff)
        if not values:
            return None, None, 0

        def rank(q: float) -> float:
            return values[min(len(values) - 1, max(0, int(q * len(values) + 0.999999) - 1))] * 1000.0

        return rank(0.50), rank(0.99), len(values)

    def install(self, zmq_server: Any) -> None:
        """Wrap ``zmq_server``'s LOOKUP handler (a dict entry swap: the loop reads it per request)."""
        with self._lock:
            spec = zmq_server.handlers.get(Op.LOOKUP)
            if spec is None or self._installed is not None:
                return
            inner = spec.fn
            record = self.record
            clock = time.perf_counter

            def timed(args: Any, identity: bytes) -> Any:
                start = clock()
                try:
                    return inner(args, identity)
                finally:
                    record(clock() - start)

            zmq_server.handlers[Op.LOOKUP] = dataclasses.replace(spec, fn=timed)
            self._installed = (zmq_server, spec)

    def uninstall(self) -> None:
        with self._lock:
            if self._installed is None:
                return
            zmq_server, spec = self._installed
            zmq_server.handlers[Op.LOOKUP] = spec
            self._installed = None
