"""The plugin host: discovery, selection, failure isolation and a typed facade.

One :class:`PluginHost` per server instance (never a module-global manager).
Hookspecs are added before anything registers; core's built-in plugins are
registered through the same hooks as third-party ones; entry points of the
``lmcache`` group are then loaded one by one, each in isolation:

* a plugin whose import (or registration) raises is logged with its name and
  error, recorded in :attr:`PluginHost.failed` and skipped, unless the host is
  strict, in which case :class:`PluginLoadError` names it;
* ``allow`` (``--plugins`` / ``LMCACHE_PLUGINS``) keeps only the named plugins,
  ``deny`` (``--disable-plugins`` / ``LMCACHE_DISABLED_PLUGINS``) blocks names;
  built-ins are always on;
* a plugin that implements a hook no hookspec declares (a misspelled ``lmcache_*``) is a
  failed plugin like one whose import raised.

Once every plugin is loaded, the registration hooks (config sections, L2 adapter types,
eviction policies, routes) are called exactly once, each implementation on its own, and
what they registered is frozen into :attr:`PluginHost.registrations`. A plugin that fails
any of them is dropped whole (nothing it registered stays) and listed as failed, so
``lmcache-server plugins`` and ``GET /plugins`` report the same thing.

Core never calls ``pm.hook.*`` itself: the methods of :class:`PluginHost` call
each implementation separately, which gives per-plugin isolation at run time
(a broken ``lmcache_status`` cannot take ``/status`` down) and attribution at
registration time (a duplicate L2 type names both plugins).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any

import importlib_metadata
import msgspec
import pluggy

from lmcache_core import PROJECT_NAME, __version__, hookspecs
from lmcache_core.config import CORE_SECTIONS, ConfigSpec, add_config_options, reserved_flags
from lmcache_core.registry import (  # noqa: F401  (re-exported: the host's errors and registries)
    DuplicateRegistrationError,
    PluginError,
    PluginLoadError,
    Registration,
    Registry,
)

if TYPE_CHECKING:
    from lmcache_core.server import CacheServer

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lmcache"

# Modules of core registered as plugins, with the name they carry.
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (
    ("core.eviction", "lmcache_core.storage.builtin_policies"),
    ("core.routes", "lmcache_core.http.core_routes"),
    ("core.engine", "lmcache_core.engine_status"),
    ("core.security", "lmcache_core.transport.limits"),
)


@dataclass
class PluginInfo:
    """What the host knows about one registered plugin (``GET /plugins``)."""

    name: str
    distribution: str | None
    version: str | None
    builtin: bool
    hooks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "builtin": self.builtin,
            "hooks": self.hooks,
        }


@dataclass
class FailedPlugin:
    """A plugin that could not be loaded or registered, with its error."""

    name: str
    distribution: str | None
    version: str | None
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "error": self.error,
        }


@dataclass(frozen=True)
class L2AdapterType:
    """An L2 adapter type: its config Struct and the factory that builds an adapter."""

    type_name: str
    config_type: type
    factory: Callable[..., Any]


@dataclass(frozen=True)
class Registrations:
    """Everything the plugins registered, collected once after loading and frozen.

    ``configs``: the config sections (:class:`~lmcache_core.config.ConfigSpec`) in plugin
    order; ``l2_adapter_types`` and ``eviction_policies``: name → registration; ``routes``:
    the route handlers, in plugin order.
    """

    configs: tuple[ConfigSpec, ...]
    l2_adapter_types: Registry
    eviction_policies: Registry
    routes: tuple[Any, ...]


def _positional(arity: int) -> Callable[..., tuple[Any, ...]]:
    def check(*args: Any) -> tuple[Any, ...]:
        if arity >= 0 and len(args) != arity:
            raise TypeError(f"register() takes {arity} arguments, got {len(args)}")
        return args

    return check


def _config_call(name: str, config_type: Any, *, prefix: str = "", title: str = "",
                 description: str | None = None) -> tuple[Any, ...]:
    return (name, config_type, prefix, title, description)


def parse_name_list(value: str | Iterable[str] | None) -> set[str] | None:
    """``"a, b"`` or ``["a", "b"]`` → ``{"a", "b"}``; ``None`` or empty → ``None``."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names = {item.strip() for item in items if item and item.strip()}
    return names or None


class PluginHost:
    """Owns one pluggy manager; loads, selects and isolates plugins; calls hooks."""

    def __init__(
        self,
        *,
        allow: Iterable[str] | str | None = None,
        deny: Iterable[str] | str | None = None,
        strict: bool = False,
        load_entry_points: bool = True,
        extra_plugins: Iterable[tuple[str, object]] = (),
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.allow = parse_name_list(allow)
        self.deny = parse_name_list(deny) or set()
        self.strict = strict
        self.plugins: dict[str, PluginInfo] = {}
        self.failed: list[FailedPlugin] = []
        self.skipped: list[str] = []
        for name, module_path in BUILTIN_PLUGINS:
            self._register(name, _import(module_path), "lmcache-core", __version__, builtin=True)
        if load_entry_points:
            self._load_entry_points()
        for name, obj in extra_plugins:
            self._register(name, obj, None, None, builtin=False)
        self.registrations: Registrations = self._collect_registrations()

    # -- loading ---------------------------------------------------------

    def _selected(self, name: str) -> bool:
        if name in self.deny:
            return False
        return self.allow is None or name in self.allow

    def _load_entry_points(self) -> None:
        eps = sorted(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)
        for ep in eps:
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            dist_version = dist.version if dist is not None else None
            if not self._selected(ep.name):
                self.skipped.append(ep.name)
                logger.info("plugin %s (%s) not selected", ep.name, dist_name)
                continue
            if ep.name in self.plugins or self.pm.has_plugin(ep.name):
                self._fail(ep.name, dist_name, dist_version, "another plugin already uses this name")
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # isolation: any import failure is the plugin's
                self._fail(ep.name, dist_name, dist_version, f"{type(exc).__name__}: {exc}")
                continue
            self._register(ep.name, obj, dist_name, dist_version, builtin=False)

    def _register(
        self, name: str, obj: object, dist: str | None, version: str | None, *, builtin: bool
    ) -> None:
        try:
            self.pm.register(obj, name=name)
        except Exception as exc:
            if builtin:
                raise
            self._fail(name, dist, version, f"{type(exc).__name__}: {exc}")
            return
        callers = self.pm.get_hookcallers(obj) or ()
        unknown = sorted(h.name for h in callers if not h.has_spec())
        if unknown:
            self.pm.unregister(obj)
            error = f"implements hooks no hookspec declares: {', '.join(unknown)} (misspelled?)"
            if builtin:
                raise PluginError(f"built-in plugin {name!r} {error}")
            self._fail(name, dist, version, error)
            return
        hooks = sorted(h.name for h in callers)
        unmarked = _unmarked_hook_functions(obj, set(hooks))
        if unmarked:
            logger.warning("plugin %s (%s): %s look like hook implementations but lack @hookimpl "
                           "(from lmcache_core.api import hookimpl); they are never called",
                           name, dist or "no distribution", ", ".join(unmarked))
        self.plugins[name] = PluginInfo(name, dist, version, builtin, hooks)

    def _fail(self, name: str, dist: str | None, version: str | None, error: str) -> None:
        logger.error("plugin %s (%s) failed to load: %s", name, dist or "no distribution", error)
        if self.strict:
            raise PluginLoadError(name, error)
        self.failed.append(FailedPlugin(name, dist, version, error))

    def unregister_failed(self, name: str, error: str) -> None:
        """Drop a plugin whose hook failed at registration time (record it as failed)."""
        info = self.plugins.pop(name, None)
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self._fail(
            name, info.distribution if info else None, info.version if info else None, error
        )

    # -- calling ---------------------------------------------------------

    def _impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        # pluggy calls implementations last-registered-first (honouring tryfirst /
        # trylast); keep that order so behaviour matches a plain hook call.
        return list(reversed(getattr(self.pm.hook, hook_name).get_hookimpls()))

    def _collect(self, hook_name: str, call: Callable[..., tuple[Any, ...]]) -> list[tuple[str, tuple[Any, ...]]]:
        """Call a registration hook per plugin; return ``(plugin, args)`` for every ``register(...)`` call.

        ``call`` checks and normalizes one ``register(...)`` call's arguments (a ``TypeError``
        for a wrong call). A plugin's registrations count only if its hook returns normally:
        one that raises (or calls ``register`` wrongly) is dropped whole and recorded as
        failed, and nothing it registered stays.
        """
        collected: list[tuple[str, tuple[Any, ...]]] = []
        for impl in self._impls(hook_name):
            calls: list[tuple[Any, ...]] = []

            def register(*args: Any, **kwargs: Any) -> None:
                calls.append(call(*args, **kwargs))

            try:
                impl.function(**_kwargs(impl, register=register))
            except Exception as exc:
                info = self.plugins.get(impl.plugin_name)
                if info is not None and info.builtin:
                    raise
                self.unregister_failed(impl.plugin_name, f"{hook_name} raised {type(exc).__name__}: {exc}")
                continue
            collected.extend((impl.plugin_name, args) for args in calls)
        return collected

    def add_options(self, parser: argparse.ArgumentParser) -> dict[str, list[str]]:
        """Let every plugin add its options; returns plugin name → the ``dest``s it added."""
        added: dict[str, list[str]] = {}
        for impl in self._impls("lmcache_add_options"):
            before = {a.dest for a in parser._actions}
            try:
                impl.function(**_kwargs(impl, parser=parser))
            except argparse.ArgumentError as exc:
                self.unregister_failed(impl.plugin_name, f"lmcache_add_options: {exc}")
                continue
            except Exception as exc:
                self.unregister_failed(impl.plugin_name, f"lmcache_add_options raised {type(exc).__name__}: {exc}")
                continue
            added[impl.plugin_name] = [a.dest for a in parser._actions if a.dest not in before]
        return added

    def _collect_registrations(self) -> Registrations:
        """Call every registration hook once; validate; drop failed plugins whole; freeze the result."""
        raw = {
            "configs": self._collect("lmcache_register_config", _config_call),
            "l2": self._collect("lmcache_register_l2_adapters", _positional(3)),
            "eviction": self._collect("lmcache_register_eviction_policies", _positional(2)),
            "routes": self._collect("lmcache_register_routes", _positional(-1)),
        }
        scratch = argparse.ArgumentParser(add_help=False)
        for flag in reserved_flags():
            scratch.add_argument(flag)
        names = set(CORE_SECTIONS)
        order = {name: i for i, name in enumerate(self.plugins)}  # config sections: first registered wins
        raw["configs"].sort(key=lambda call: order.get(call[0], len(order)))
        for plugin, (name, config_type, prefix, title, description) in raw["configs"]:
            if plugin not in self.plugins:
                continue
            try:
                if not isinstance(name, str) or not name.isidentifier():
                    raise ValueError(f"config name {name!r} is not an identifier")
                if name in names:
                    raise ValueError(f"config section {name!r} is already registered")
                if not (isinstance(config_type, type) and issubclass(config_type, msgspec.Struct)):
                    raise TypeError(f"config {name!r}: config_type must be a msgspec.Struct subclass")
                spec = ConfigSpec(name, config_type, plugin, prefix, title or "", description)
                config_type()  # every field needs a default
                add_config_options(scratch, spec)
            except Exception as exc:
                self.unregister_failed(plugin, f"lmcache_register_config: {type(exc).__name__}: {exc}")
                continue
            names.add(name)
        self.add_options(scratch)  # legacy options: a clash fails its plugin now, not when the server starts
        for plugin, (type_name, config_type, factory) in raw["l2"]:
            if plugin in self.plugins and (not callable(factory) or not isinstance(config_type, type)):
                self.unregister_failed(plugin, f"L2 type {type_name!r}: config_type must be a class and factory callable")
        for plugin, (name, factory) in raw["eviction"]:
            if plugin in self.plugins and not callable(factory):
                self.unregister_failed(plugin, f"eviction policy {name!r}: factory is not callable")

        def alive(kind: str) -> list[tuple[str, tuple[Any, ...]]]:
            return [(plugin, args) for plugin, args in raw[kind] if plugin in self.plugins]

        l2 = Registry("L2 adapter type")
        for plugin, (type_name, config_type, factory) in alive("l2"):
            l2.add(type_name, plugin, L2AdapterType(type_name, config_type, factory))
        policies = Registry("eviction policy")
        for plugin, (name, factory) in alive("eviction"):
            policies.add(name, plugin, factory)
        configs = tuple(ConfigSpec(name, config_type, plugin, prefix, title or "", description)
                        for plugin, (name, config_type, prefix, title, description) in alive("configs"))
        routes = tuple(handler for _, handlers in alive("routes") for handler in handlers)
        return Registrations(configs, l2.freeze(), policies.freeze(), routes)

    def l2_adapter_types(self) -> Registry:
        """The L2 adapter types plugins registered (collected once, at load)."""
        return self.registrations.l2_adapter_types

    def eviction_policies(self) -> Registry:
        """The eviction policies plugins registered (collected once, at load)."""
        return self.registrations.eviction_policies

    def route_handlers(self) -> list[Any]:
        """The route handlers plugins registered, in plugin order (collected once, at load)."""
        return list(self.registrations.routes)

    def status(self, server: CacheServer) -> dict[str, Any]:
        """Merge every plugin's ``lmcache_status`` section; a failing plugin reports its error."""
        merged: dict[str, Any] = {}
        for impl in reversed(self._impls("lmcache_status")):  # first-registered first: later ones win
            try:
                section = impl.function(**_kwargs(impl, server=server))
            except Exception as exc:
                logger.exception("plugin %s: lmcache_status failed", impl.plugin_name)
                merged.setdefault("plugin_errors", {})[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
                continue
            if section:
                merged.update(section)
        return merged

    def startup(self, server: CacheServer) -> None:
        """Run every ``lmcache_startup``; a failure stops startup (it names the plugin)."""
        for impl in self._impls("lmcache_startup"):
            try:
                impl.function(**_kwargs(impl, server=server))
            except Exception as exc:
                raise PluginError(f"plugin {impl.plugin_name!r}: lmcache_startup failed: {exc}") from exc

    def shutdown(self, server: CacheServer) -> None:
        """Run every ``lmcache_shutdown`` (in reverse of startup); failures are logged, not raised."""
        for impl in reversed(self._impls("lmcache_shutdown")):
            try:
                impl.function(**_kwargs(impl, server=server))
            except Exception:
                logger.exception("plugin %s: lmcache_shutdown failed", impl.plugin_name)

    # -- introspection ---------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """The ``GET /plugins`` document."""
        return {
            "plugins": [info.to_dict() for info in sorted(self.plugins.values(), key=lambda i: (not i.builtin, i.name))],
            "failed": [f.to_dict() for f in self.failed],
            "not_selected": sorted(self.skipped),
        }


def _unmarked_hook_functions(obj: object, hooks: set[str]) -> list[str]:
    """The ``lmcache_*`` functions of a plugin that pluggy did not take as hooks (no ``@hookimpl``)."""
    import inspect

    return sorted(n for n in dir(obj) if n.startswith("lmcache_") and n not in hooks
                  and inspect.isroutine(getattr(obj, n, None)))


def _kwargs(impl: pluggy.HookImpl, **available: Any) -> dict[str, Any]:
    return {name: available[name] for name in impl.argnames if name in available}


def _import(module_path: str) -> ModuleType:
    import importlib

    return importlib.import_module(module_path)


def format_plugin_table(doc: dict[str, Any]) -> str:
    """Render :meth:`PluginHost.describe` as the table ``lmcache-server plugins`` prints."""
    rows = [("NAME", "DISTRIBUTION", "VERSION", "HOOKS")]
    for p in doc["plugins"]:
        dist = p["distribution"] or ("(built-in)" if p["builtin"] else "-")
        rows.append((p["name"], dist, p["version"] or "-", ",".join(h.removeprefix("lmcache_") for h in p["hooks"])))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    if doc["failed"]:
        lines.append("")
        lines.append("FAILED")
        for f in doc["failed"]:
            lines.append(f"{f['name']} ({f['distribution'] or '-'}): {f['error']}")
    if doc.get("not_selected"):
        lines.append("")
        lines.append("NOT SELECTED: " + ", ".join(doc["not_selected"]))
    return "\n".join(line.rstrip() for line in lines) + "\n"
