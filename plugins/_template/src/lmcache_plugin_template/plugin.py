"""A minimal lmcache-server plugin: one option, one route, one status section.

Copy this folder, rename ``template``, and keep what you need. Every hook is
optional; implement only those your plugin needs (``lmcache_core.hookspecs``
lists them all, ``docs/plugins.md`` explains each).
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec
from litestar import Router, get

from lmcache_core import hookimpl
from lmcache_core.http.deps import Engine, unavailable_body
from lmcache_core.server import CacheServer

CONFIG_NAME = "template"


class TemplateConfig(msgspec.Struct, kw_only=True):
    """This plugin's configuration; registered so ``GET /conf`` shows it."""

    greeting: str = "hello"


class Greeting(msgspec.Struct):
    """Response body of ``GET /template/greeting`` (msgspec Structs document themselves in /schema)."""

    greeting: str
    chunk_size: int


@get("/greeting", sync_to_thread=False)
def greeting(engine: Engine) -> Greeting:
    """Answers with the configured greeting; 503 (this router's envelope) until the engine is ready."""
    config: TemplateConfig = engine.configs[CONFIG_NAME]  # type: ignore[assignment]
    return Greeting(greeting=config.greeting, chunk_size=engine.mp_config.chunk_size)


@hookimpl
def lmcache_add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("template plugin", "Options of the template plugin.")
    group.add_argument("--template-greeting", default="hello", help="what GET /template/greeting says")


@hookimpl
def lmcache_register_routes(register: Any) -> None:
    register(Router(path="/template", route_handlers=[greeting], tags=["template"],
                    opt=unavailable_body({"error": "engine not initialized"})))


@hookimpl
def lmcache_startup(server: CacheServer) -> None:
    server.register_config(CONFIG_NAME, TemplateConfig(greeting=server.options.template_greeting))


@hookimpl
def lmcache_status(server: CacheServer) -> dict[str, Any]:
    config = server.configs.get(CONFIG_NAME)
    return {"template": {"greeting": getattr(config, "greeting", None)}}
