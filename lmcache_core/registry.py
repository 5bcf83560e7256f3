"""Named registrations and the plugin errors: what the plugin host collects, in a module below it.

The storage layer takes :class:`Registry` objects (eviction policies, L2 adapter types)
without importing the plugin host (:mod:`lmcache_core.plugins`), which builds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class PluginError(Exception):
    """Base class for plugin-host errors that stop startup."""


class PluginLoadError(PluginError):
    """A plugin failed to load (or register) and the host is strict."""

    def __init__(self, name: str, error: str) -> None:
        super().__init__(f"plugin {name!r} failed to load: {error}")
        self.plugin = name
        self.error = error


class DuplicateRegistrationError(PluginError):
    """Two plugins registered the same L2 adapter type or eviction policy name."""

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        super().__init__(
            f"{kind} {name!r} is registered by both plugin {first!r} and plugin {second!r}"
        )
        self.kind, self.name, self.first, self.second = kind, name, first, second


@dataclass(frozen=True)
class Registration:
    """One named thing a plugin registered (an L2 adapter type, an eviction policy)."""

    name: str
    plugin: str
    value: Any


class Registry:
    """Named registrations of one kind; a second registration of a name is an error.

    Frozen (:meth:`freeze`) once the host collected it: nothing registers later.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Registration] = {}
        self._frozen = False

    def freeze(self) -> Registry:
        self._frozen = True
        return self

    def add(self, name: str, plugin: str, value: Any) -> None:
        if self._frozen:
            raise PluginError(f"{self.kind} registrations are closed (plugin {plugin!r} registered {name!r} late)")
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} with an invalid name {name!r}")
        if name in self._items:
            raise DuplicateRegistrationError(self.kind, name, self._items[name].plugin, plugin)
        self._items[name] = Registration(name, plugin, value)

    def get(self, name: str) -> Any:
        """The registered value; ``KeyError`` lists the known names."""
        try:
            return self._items[name].value
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}") from None

    def plugin_of(self, name: str) -> str:
        return self._items[name].plugin

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Registration]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)
