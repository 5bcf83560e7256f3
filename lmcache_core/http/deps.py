"""Dependencies shared by every route group.

``engine`` answers 503 while the engine is not initialized; the body of that
503 is the route group's own envelope, declared once per ``Router`` with
:func:`unavailable_body` (the seed's groups differ: ``/healthcheck`` uses
``{"status": "unhealthy", "reason": ...}``, ``/status`` uses ``{"error": ...}``).
``server`` gives the :class:`~lmcache_core.server.CacheServer` whatever its state.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from lmcache_core.server import CacheServer

Engine = NamedDependency[CacheServer]
"""Annotation for a handler parameter named ``engine``: the ready server, or the group's 503."""

Server = NamedDependency[CacheServer]
"""Annotation for a handler parameter named ``server``: the server whatever its state."""

UNAVAILABLE_OPT = "lmcache_unavailable_body"
DEFAULT_UNAVAILABLE_BODY: dict[str, Any] = {"error": "engine not initialized"}


class EngineUnavailable(Exception):
    """Raised by the ``engine`` dependency while the engine is not ready."""


def unavailable_body(body: dict[str, Any]) -> dict[str, Any]:
    """``opt`` for a Router or handler: the JSON body its 503 answers carry."""
    return {UNAVAILABLE_OPT: body}


def provide_server(state: State) -> CacheServer:
    """The server object on app state."""
    return state.server  # type: ignore[no-any-return]


def provide_engine(state: State) -> CacheServer:
    """The server, once its engine is ready; otherwise the route's 503 envelope."""
    server: CacheServer | None = getattr(state, "server", None)
    if server is None or not server.ready:
        raise EngineUnavailable()
    return server


def engine_unavailable_handler(request: Request[Any, Any, Any], exc: EngineUnavailable) -> Response[Any]:
    """Turn :class:`EngineUnavailable` into the route group's own 503 body."""
    body = request.route_handler.opt.get(UNAVAILABLE_OPT, DEFAULT_UNAVAILABLE_BODY)
    return Response(body, status_code=503)


DEPENDENCIES = {
    "server": Provide(provide_server, sync_to_thread=False),
    "engine": Provide(provide_engine, sync_to_thread=False),
}
