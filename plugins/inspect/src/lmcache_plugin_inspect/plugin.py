"""``GET /status``: the engine snapshot assembled from every status contribution.

Each component and plugin contributes a section through the ``lmcache_status``
hook; :meth:`CacheServer.status` merges them. 503 ``{"error": "engine not
initialized"}`` while the engine is not ready. The status is assembled on a
worker thread so a slow contribution never blocks the event loop.
"""

from __future__ import annotations

from typing import Any

from litestar import Router, get

from lmcache_core import hookimpl
from lmcache_core.http.deps import Engine, unavailable_body


@get("/status", sync_to_thread=True, summary="Engine snapshot")
def status(engine: Engine) -> dict[str, Any]:
    """Every status contribution merged into one document."""
    return engine.status()


router = Router(path="/", route_handlers=[status], tags=["inspect"],
                opt=unavailable_body({"error": "engine not initialized"}))


@hookimpl
def lmcache_register_routes(register: Any) -> None:
    register(router)
