"""Liveness (``GET /``) and readiness (``GET /healthcheck``), as the seed API defines them.

``GET /`` is static and never touches the engine, so it answers even while the
engine is starting or broken. ``GET /healthcheck`` answers 200 once the engine
is wired and 503 ``{"status": "unhealthy", "reason": "engine not initialized"}``
before that; it does not call into the engine (a Kubernetes probe must be cheap).
"""

from __future__ import annotations

from typing import Any

from litestar import Router, get

from lmcache_core import hookimpl
from lmcache_core.http.deps import Engine, unavailable_body

ROOT_BODY = {"status": "ok", "service": "LMCache HTTP API"}
HEALTHY_BODY = {"status": "healthy"}
UNHEALTHY_BODY = {"status": "unhealthy", "reason": "engine not initialized"}


@get("/", sync_to_thread=False, summary="Static liveness ping")
def root() -> dict[str, str]:
    """Static payload; does not touch the engine."""
    return ROOT_BODY


@get("/healthcheck", sync_to_thread=False, summary="Readiness probe")
def healthcheck(engine: Engine) -> dict[str, str]:
    """200 ``{"status": "healthy"}`` once the engine is wired; 503 otherwise (through the ``engine`` dependency)."""
    return HEALTHY_BODY


router = Router(path="/", route_handlers=[root, healthcheck], tags=["health"], opt=unavailable_body(UNHEALTHY_BODY))


@hookimpl
def lmcache_register_routes(register: Any) -> None:
    register(router)
