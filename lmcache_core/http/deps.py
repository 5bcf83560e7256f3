"""Dependencies shared by every route group.

``engine`` answers 503 while the engine is not initialized (it raises
:class:`~lmcache_core.http.errors.EngineUnavailable`); the body of that 503 is the route
group's own envelope (:func:`lmcache_core.http.errors.error_envelope`), or a fixed body
declared once per ``Router`` with :func:`unavailable_body` (the seed's groups differ:
``/healthcheck`` uses ``{"status": "unhealthy", "reason": ...}``, ``/status`` uses
``{"error": ...}``). ``server`` gives the :class:`~lmcache_core.server.CacheServer`
whatever its state.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from lmcache_core.http.errors import (
    ENGINE_NOT_INITIALIZED,
    UNAVAILABLE_OPT,
    EngineUnavailable,
    HTTPError,
    http_error_handler,
)
from lmcache_core.server import CacheServer

Engine = NamedDependency[CacheServer]
"""Annotation for a handler parameter named ``engine``: the ready server, or the group's 503."""

Server = NamedDependency[CacheServer]
"""Annotation for a handler parameter named ``server``: the server whatever its state."""

DEFAULT_UNAVAILABLE_BODY: dict[str, Any] = {"error": ENGINE_NOT_INITIALIZED}


def unavailable_body(body: dict[str, Any]) -> dict[str, Any]:
    """``opt`` for a Router or handler: the JSON body its 503 answers carry."""
    return {UNAVAILABLE_OPT: body}


def provide_server(state: State) -> CacheServer:
    """The server object on app state."""
    return state.server  # type: ignore[no-any-return]


def provide_engine(state: State) -> CacheServer:
    """The server, once its engine is ready; otherwise the route's 503 envelope."""
    return ready_server(getattr(state, "server", None))


def engine_unavailable_handler(request: Request[Any, Any, Any], exc: HTTPError) -> Response[Any]:
    """Turn :class:`EngineUnavailable` into the route group's own 503 body (kept for callers; the app
    installs :func:`~lmcache_core.http.errors.http_error_handler`, which does the same)."""
    return http_error_handler(request, exc)


def ready_server(server: CacheServer | None) -> CacheServer:
    """``server`` when its engine is ready; otherwise raises :class:`EngineUnavailable` (the group's 503)."""
    if server is None or not server.ready:
        raise EngineUnavailable()
    return server


DEPENDENCIES = {
    "server": Provide(provide_server, sync_to_thread=False),
    "engine": Provide(provide_engine, sync_to_thread=False),
}
