"""Core's own routes, registered as a built-in plugin: ``GET /plugins``."""

from __future__ import annotations

from typing import Any

from litestar import Router, get

from lmcache_core import hookimpl
from lmcache_core.http.deps import Server


@get("/plugins", sync_to_thread=False)
def list_plugins(server: Server) -> dict[str, Any]:
    """Every loaded plugin (name, distribution, version, hooks) and the ones that failed to load."""
    return server.plugin_host.describe()


@hookimpl
def lmcache_register_routes(register: Any) -> None:
    register(Router(path="/", route_handlers=[list_plugins], tags=["core"]))
