"""A read-only view of a running server's engine, for route plugins (``server.view``).

A route plugin reads figures and finds adapters through this view instead of reaching into
``server.storage`` (whose shape is not a contract): L1 figures, each L2 adapter's figures,
the adapters by type, and the KV-cache layouts workers registered. Every call answers the
engine's state at that moment; each raises :class:`~lmcache_core.http.errors.EngineUnavailable`
(503 in the route group's envelope) while the engine is not running, so a handler needs no
check of its own. Nothing here changes the engine; an adapter it returns is the live adapter
(its methods are the L2 contract of ``docs/l2-adapters.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmcache_core.http.errors import EngineUnavailable

if TYPE_CHECKING:
    from lmcache_core.server import CacheServer
    from lmcache_core.storage.l2.base import L2Adapter


@dataclass(frozen=True)
class L1Figures:
    """L1 (CPU memory): bytes used and available (aligned), objects present, per-salt bytes."""

    used_bytes: int
    capacity_bytes: int
    object_count: int
    bytes_by_cache_salt: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class L2Figures:
    """One ``--l2-adapter``: its position, type, the plugin that registered the type, and its figures.

    ``capacity_bytes`` is 0 when the backend's capacity is unknown; ``skipped_full`` counts stores
    skipped because the backend was full (``L2Full``), which are not failures.
    """

    index: int
    type_name: str
    plugin: str
    healthy: bool
    used_bytes: int
    capacity_bytes: int
    object_count: int
    skipped_full: int
    failures: Mapping[str, int]


@dataclass(frozen=True)
class RegisteredLayout:
    """A KV-cache layout workers registered: the model, its world size, how many live registrations."""

    model_name: str
    world_size: int
    registrations: int


class EngineView:
    """Read-only access to one server's engine; see the module docstring."""

    def __init__(self, server: CacheServer) -> None:
        self._server = server

    @property
    def ready(self) -> bool:
        """True while the engine runs (after start, before stop)."""
        return self._server.ready

    def _storage(self) -> Any:
        storage = self._server.storage
        if not self._server.ready or storage is None:
            raise EngineUnavailable()
        return storage

    def l1(self) -> L1Figures:
        """The L1 tier's figures now."""
        l1 = self._storage().l1
        used, total = l1.get_memory_usage()
        return L1Figures(used, total, len(l1), l1.usage_by_salt())

    def l2(self) -> list[L2Figures]:
        """Each L2 adapter's figures, in ``--l2-adapter`` order (the priority order)."""
        storage = self._storage()
        figures = []
        for adapter in storage.l2_adapters:
            status = adapter.report_status()
            figures.append(L2Figures(
                adapter.index, adapter.type_name, self._server.l2_adapter_types.plugin_of(adapter.type_name),
                bool(status.get("is_healthy", False)), int(status.get("current_size_bytes", 0)),
                int(status.get("max_capacity_bytes", 0)), int(status.get("stored_object_count", 0)),
                int(status.get("skipped_full", 0)), dict(status.get("failures", {}))))
        return figures

    def l2_adapters(self, type_name: str | None = None) -> list[L2Adapter]:
        """The adapters (of ``type_name``, or all), in ``--l2-adapter`` order."""
        return [a for a in self._storage().l2_adapters if type_name is None or a.type_name == type_name]

    def l2_adapter(self, type_name: str | None = None) -> L2Adapter | None:
        """The first adapter of ``type_name`` (the primary, position 0, when None), or None."""
        adapters = self.l2_adapters(type_name)
        return adapters[0] if adapters else None

    def layouts(self) -> list[RegisteredLayout]:
        """The KV-cache layouts workers registered and still hold, by model and world size."""
        self._storage()
        datapath = self._server.datapath
        if datapath is None:
            raise EngineUnavailable()
        return [RegisteredLayout(entry["model_name"], entry["world_size"], entry["registrations"])
                for entry in datapath.report_status()["registered_layouts"]]


__all__ = ["EngineView", "L1Figures", "L2Figures", "RegisteredLayout"]
