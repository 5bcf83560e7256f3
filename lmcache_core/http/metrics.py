"""HTTP request metrics: ``lmcache_mp_http_requests_total`` and ``lmcache_mp_http_request_duration_seconds``.

A raw ASGI middleware on the whole app. Litestar runs app middleware after
routing, so the ``route`` label is the route's path template
(``/quota/{cache_salt}``), never the raw path: a caller cannot grow the
label set by requesting new URLs.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter(
    "lmcache_mp_http_requests", "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"])
HTTP_REQUEST_SECONDS = Histogram(
    "lmcache_mp_http_request_duration_seconds", "HTTP request latency (to the end of the response body)",
    ["method", "route"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))


def reset() -> None:
    """Zero the HTTP metrics (``POST /metrics/reset``)."""
    HTTP_REQUESTS.clear()
    HTTP_REQUEST_SECONDS.clear()


def http_metrics_middleware(app: Any) -> Any:
    """ASGI middleware factory (Litestar ``middleware=[...]``) that counts and times HTTP requests."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, counting_send)
        finally:
            route = scope.get("path_template") or "<unmatched>"
            method = scope["method"]
            HTTP_REQUESTS.labels(method, route, str(status[0])).inc()
            HTTP_REQUEST_SECONDS.labels(method, route).observe(time.perf_counter() - start)

    return middleware
