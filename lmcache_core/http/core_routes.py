"""Core's own routes, registered as a built-in plugin: ``GET /plugins``."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Router, get

from lmcache_core import hookimpl
from lmcache_core.http.deps import Server


class PluginEntry(msgspec.Struct):
    """A loaded plugin: entry-point name, distribution, version, hooks it implements."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str]


class FailedPluginEntry(msgspec.Struct):
    """A plugin that failed to load or register, with its error."""

    name: str
    distribution: str | None
    version: str | None
    error: str


class PluginsListing(msgspec.Struct):
    """``GET /plugins``."""

    plugins: list[PluginEntry]
    failed: list[FailedPluginEntry]
    not_selected: list[str]


@get("/plugins", sync_to_thread=False)
def list_plugins(server: Server) -> PluginsListing:
    """Every loaded plugin (name, distribution, version, hooks) and the ones that failed to load."""
    return msgspec.convert(server.plugin_host.describe(), PluginsListing)


@hookimpl
def lmcache_register_routes(register: Any) -> None:
    register(Router(path="/", route_handlers=[list_plugins], tags=["core"]))
