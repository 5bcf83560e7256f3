"""Fixtures for the diagnostics routes: a real server with the plugin behind real HTTP, and logging restored.

``diag(*argv, start=True) -> Diag``: a server with only the diagnostics plugin (plus core), its
options parsed from ``argv`` exactly as ``lmcache-server`` parses them, served by uvicorn.

``restore_logging``: every logger level, handler level and parent link as it was before the
test, and no logger left behind that the test created (``/loglevel`` set mode creates them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import lmcache_plugin_diagnostics.plugin as diagnostics_plugin
import pytest

from lmcache_core.cli import build_parser
from lmcache_core.plugins import PluginHost
from lmcache_core.server import CacheServer

TOKEN = "diag-s3cret"
HTTP_TIMEOUT = 30.0


def parse_options(*argv: str, environ: dict[str, str] | None = None) -> Any:
    host = PluginHost(load_entry_points=False, extra_plugins=[("diagnostics", diagnostics_plugin)])
    return build_parser(host, environ=environ or {}).parse_args(list(argv))


@dataclass
class Diag:
    """A served server: ``server``, ``url`` and an httpx client on it (``auth`` sends the token)."""

    server: CacheServer
    url: str
    http: httpx.Client

    def get(self, path: str, *, auth: bool = False, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, headers=self._headers(auth, kwargs), **kwargs)

    def post(self, path: str, *, auth: bool = False, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, headers=self._headers(auth, kwargs), **kwargs)

    def script(self, source: bytes | str, *, auth: bool = False) -> httpx.Response:
        """``POST /run_script`` with ``source`` as the multipart file field ``script``."""
        raw = source.encode() if isinstance(source, str) else source
        return self.post("/run_script", auth=auth, files={"script": ("script.py", raw, "text/x-python")})

    @staticmethod
    def _headers(auth: bool, kwargs: dict[str, Any]) -> dict[str, str]:
        headers = dict(kwargs.pop("headers", None) or {})
        if auth:
            headers["Authorization"] = f"Bearer {TOKEN}"
        return headers


@pytest.fixture
def diag(lmcache_server_factory: Any, lmcache_http: Any) -> Iterator[Any]:
    clients: list[httpx.Client] = []

    def make(*argv: str, start: bool = True, environ: dict[str, str] | None = None) -> Diag:
        server = lmcache_server_factory([("diagnostics", diagnostics_plugin)],
                                        options=parse_options(*argv, environ=environ), start=start)
        url = lmcache_http(server)
        client = httpx.Client(base_url=url, timeout=HTTP_TIMEOUT)
        clients.append(client)
        return Diag(server, url, client)

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    manager = logging.Logger.manager
    root = logging.getLogger()
    before = dict(manager.loggerDict)
    loggers = [root, *(lg for lg in before.values() if isinstance(lg, logging.Logger))]
    levels = {lg: lg.level for lg in loggers}
    parents = {lg: lg.parent for lg in loggers}
    handler_levels = {h: h.level for lg in loggers for h in lg.handlers}
    yield
    with logging._lock:  # type: ignore[attr-defined]  # the lock logging itself takes for loggerDict
        for name in list(manager.loggerDict):
            if name not in before:
                del manager.loggerDict[name]
        manager.loggerDict.update(before)  # a placeholder the test turned into a logger is a placeholder again
    for lg, parent in parents.items():
        lg.parent = parent
    for lg, level in levels.items():
        lg.setLevel(level)  # also clears logging's effective-level caches
    for handler, level in handler_levels.items():
        handler.setLevel(level)
