"""Liveness (``GET /``) and readiness (``GET /healthcheck``), as the seed API defines them.

``GET /``
    200 ``{"status": "ok", "service": "LMCache HTTP API"}``, always. The handler takes no
    dependency at all — not the server, not the engine — so it answers while the engine is
    starting, after it stopped, when its storage is broken, and even in an app that has no
    server on its state.
``GET /healthcheck``
    200 ``{"status": "healthy"}`` while the engine is wired (:attr:`CacheServer.ready`:
    between :meth:`CacheServer.start` and :meth:`CacheServer.stop`); otherwise 503
    ``{"status": "unhealthy", "reason": "engine not initialized"}`` (through the ``engine``
    dependency and this router's envelope). As in LMCache it checks that the engine is
    there and does not call into it: a Kubernetes probe must be cheap and must not flap
    with storage trouble, which ``GET /status`` (``is_healthy``) reports instead. The one thing
    it does read is the ZMQ loop's heartbeat (a timestamp): a data-path loop stuck for more
    than 5 s answers 503 ``{"status": "unhealthy", "reason": "data path loop stalled ..."}``.

Both are ``application/json``; any other method answers 405 (``OPTIONS`` answers 204 with
``Allow``, Litestar's default). Neither is guarded by ``--http-admin-token``: probes need no
secret. Both run on the event loop (``sync_to_thread=False``): they do no work.
"""

from __future__ import annotations

import msgspec
from litestar import Router, get

from lmcache_core.api import Engine, HTTPError, RegisterRoutes, error_envelope, hookimpl, status_reason


class Liveness(msgspec.Struct):
    """``GET /`` body."""

    status: str
    service: str


class Readiness(msgspec.Struct):
    """``GET /healthcheck`` 200 body."""

    status: str


ROOT_BODY = Liveness(status="ok", service="LMCache HTTP API")
HEALTHY_BODY = Readiness(status="healthy")
UNHEALTHY = status_reason("unhealthy")
"""This group's error envelope: ``{"status": "unhealthy", "reason": <message>}`` (the engine's 503 included)."""
LOOP_STALL_UNHEALTHY_S = 5.0
"""The ZMQ loop wakes every 0.5 s at least; this long without a round means it is stuck."""


@get("/", sync_to_thread=False, summary="Static liveness ping")
def root() -> Liveness:
    """Static payload; does not touch the engine (no dependency is even resolved)."""
    return ROOT_BODY


@get("/healthcheck", sync_to_thread=False, summary="Readiness probe")
def healthcheck(engine: Engine) -> Readiness:
    """200 ``{"status": "healthy"}`` once the engine is wired; 503 otherwise (through the ``engine`` dependency),
    and 503 while the ZMQ data-path loop has not gone round for :data:`LOOP_STALL_UNHEALTHY_S` seconds."""
    stalled = engine.zmq.stalled_for() if engine.zmq is not None else 0.0
    if stalled > LOOP_STALL_UNHEALTHY_S:
        raise HTTPError(503, f"data path loop stalled for {stalled:.0f} s")
    return HEALTHY_BODY


router = Router(path="/", route_handlers=[root, healthcheck], tags=["health"], opt=error_envelope(UNHEALTHY))


@hookimpl
def lmcache_register_routes(register: RegisterRoutes) -> None:
    register(router)
