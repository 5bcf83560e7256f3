"""``GET /metrics`` (Prometheus exposition of the default registry) and ``POST /metrics/reset``.

Neither touches the engine, so both answer while it starts. The exposition is
rendered on a worker thread: with many label sets it is not free.
"""

from __future__ import annotations

from litestar import Response, Router, get, post
from prometheus_client import REGISTRY, generate_latest

from lmcache_core.api import RegisterRoutes, hookimpl, openapi, require_admin, reset_metrics


# The classic text format that every Prometheus scrapes (and the API document names);
# newer prometheus_client versions default to advertising 1.0.0.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@get("/metrics", sync_to_thread=True, summary="Prometheus metrics",
     responses={200: openapi.text("Prometheus text exposition format 0.0.4")})
def metrics() -> Response[bytes]:
    """Every metric of the default prometheus_client registry, text format 0.0.4."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE)


@post("/metrics/reset", status_code=200, sync_to_thread=False, guards=[require_admin],
      summary="Reset lmcache-server's metrics", responses={200: openapi.text("`ok`")})
def reset() -> Response[str]:
    """Zero lmcache-server's own counters (for test harnesses and benchmarks); answers ``ok``."""
    reset_metrics()
    return Response("ok", media_type="text/plain")


@hookimpl
def lmcache_register_routes(register: RegisterRoutes) -> None:
    register(Router(path="/", route_handlers=[metrics, reset], tags=["metrics"]))
