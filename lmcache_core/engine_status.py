"""Core's engine components contribute their ``/status`` sections through the status hook,
as a built-in plugin, like any other contributor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmcache_core import hookimpl

if TYPE_CHECKING:
    from lmcache_core.server import CacheServer


@hookimpl
def lmcache_status(server: CacheServer) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if server.sessions is not None:
        doc["active_sessions"] = server.sessions.count()
    if server.datapath is not None:
        doc.update(server.datapath.report_status())
    if server.storage is not None:
        doc["storage_manager"] = server.storage.report_status()
    return doc
