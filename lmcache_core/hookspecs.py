"""The plugin contract: every hook a plugin may implement.

This is the one file a plugin author reads first. Each hookspec is a signature
with a one-line docstring; ``docs/plugins.md`` documents each in full (a test
fails when one is missing there). Hooks are called keyword-only, so a plugin
may implement a hook with any subset of the arguments named here.

A plugin is a module (or object) with functions decorated by
:data:`lmcache_core.hookimpl`, exposed through an ``lmcache`` entry point::

    [project.entry-points.lmcache]
    myplugin = "my_package.plugin"

Registration-time hooks receive a ``register`` callback rather than returning
data, so the host can validate what each plugin registers, reject duplicates
naming both plugins, and record who registered what.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

from lmcache_core import PROJECT_NAME

if TYPE_CHECKING:
    from lmcache_core.server import CacheServer

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


class RegisterRoutes(Protocol):
    """``register(*handlers)``: add Litestar ``Router``s, controllers or route handlers to the app."""

    def __call__(self, *handlers: Any) -> None: ...


class RegisterL2Adapter(Protocol):
    """``register(type_name, config_type, factory)``: declare an L2 adapter type.

    ``config_type`` is a ``msgspec.Struct`` decoded from the ``--l2-adapter`` JSON
    (minus ``type``); ``factory(config, context)`` builds the adapter.
    """

    def __call__(self, type_name: str, config_type: type, factory: Any) -> None: ...


class RegisterConfig(Protocol):
    """``register(name, config_type, *, prefix="", title="", description=None)``: declare a config section.

    ``config_type`` is a ``msgspec.Struct`` whose fields all have defaults. The core derives
    from it an option group (one flag per field: ``--<prefix><field>``, dashes for
    underscores), the ``LMCACHE_*`` variables, the defaults and the help text (each field's
    ``msgspec.Meta(description=...)``), builds and validates the section once before the
    server starts, shows it in ``GET /conf`` under ``name``, and hands it to the plugin as
    ``server.configs[name]``, typed.
    """

    def __call__(self, name: str, config_type: type, *, prefix: str = "", title: str = "",
                 description: str | None = None) -> None: ...


class RegisterEvictionPolicy(Protocol):
    """``register(name, factory)``: declare an eviction policy; ``factory()`` returns a new policy."""

    def __call__(self, name: str, factory: Any) -> None: ...


@hookspec
def lmcache_register_config(register: RegisterConfig) -> None:
    """Declare this plugin's config sections (msgspec Structs) with ``register(name, config_type, prefix=...)``."""


@hookspec
def lmcache_add_options(parser: argparse.ArgumentParser) -> None:
    """Add raw command-line options (prefer ``lmcache_register_config``, which also builds the typed config)."""


@hookspec
def lmcache_register_l2_adapters(register: RegisterL2Adapter) -> None:
    """Register L2 adapter types by calling ``register(type_name, config_type, factory)``."""


@hookspec
def lmcache_register_eviction_policies(register: RegisterEvictionPolicy) -> None:
    """Register eviction policies by calling ``register(name, factory)``."""


@hookspec
def lmcache_register_routes(register: RegisterRoutes) -> None:
    """Register HTTP route handlers (Litestar ``Router``s or handlers) with ``register(...)``."""


@hookspec
def lmcache_status(server: CacheServer) -> dict[str, Any] | None:
    """Return this plugin's contribution to ``GET /status`` (merged at top level), or None."""


@hookspec
def lmcache_startup(server: CacheServer) -> None:
    """Called once the server is built, before it serves; start background work here."""


@hookspec
def lmcache_shutdown(server: CacheServer) -> None:
    """Called once when the server stops; stop what ``lmcache_startup`` started."""
