"""A minimal lmcache-server plugin: a config section, a typed route, a status section.

Copy this folder, rename ``template``, and keep what you need. Every hook is
optional; implement only those your plugin needs (``lmcache_core.hookspecs``
lists them all, ``docs/plugins.md`` explains each). Import only from
``lmcache_core.api``: it is the whole contract.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Router, get
from litestar.params import FromPath

from lmcache_core.api import (
    ERROR,
    CacheServer,
    Engine,
    HTTPError,
    RegisterConfig,
    RegisterRoutes,
    error_envelope,
    hookimpl,
    openapi,
)

CONFIG_NAME = "template"


class TemplateConfig(msgspec.Struct, kw_only=True):
    """This plugin's settings: ``--template-greeting`` / ``LMCACHE_TEMPLATE_GREETING`` and
    ``--template-max-repeat``, shown by ``GET /conf`` under ``template``."""

    greeting: Annotated[str, msgspec.Meta(description="what GET /template/greeting says")] = "hello"
    max_repeat: Annotated[int, msgspec.Meta(ge=1, le=100, description="most repeats GET /template/greeting/{n} "
                                                                      "answers")] = 3


class Greeting(msgspec.Struct):
    """Response body of ``GET /template/greeting/{times}`` (a Struct documents itself in /schema)."""

    greeting: str
    chunk_size: int


@get("/greeting/{times:int}", sync_to_thread=False, summary="The configured greeting, repeated", responses={
    400: openapi.error("`times` is not between 1 and `--template-max-repeat`")})
def greeting(engine: Engine, times: FromPath[int]) -> Greeting:
    """The greeting ``times`` times; 400 when ``times`` is out of range; 503 until the engine is ready."""
    config: TemplateConfig = engine.configs[CONFIG_NAME]  # type: ignore[assignment]
    if not 1 <= times <= config.max_repeat:
        raise HTTPError(400, f"times must be between 1 and {config.max_repeat}, got {times}")
    return Greeting(greeting=" ".join([config.greeting] * times), chunk_size=engine.mp_config.chunk_size)


@hookimpl
def lmcache_register_config(register: RegisterConfig) -> None:
    register(CONFIG_NAME, TemplateConfig, prefix="template-", title="template plugin")


@hookimpl
def lmcache_register_routes(register: RegisterRoutes) -> None:
    # Every error of this group (HTTPError, the engine's 503) is {"error": "<message>"}.
    register(Router(path="/template", route_handlers=[greeting], tags=["template"], opt=error_envelope(ERROR)))


@hookimpl
def lmcache_status(server: CacheServer) -> dict[str, Any]:
    config: TemplateConfig = server.configs[CONFIG_NAME]  # type: ignore[assignment]
    return {"template": {"greeting": config.greeting}}
