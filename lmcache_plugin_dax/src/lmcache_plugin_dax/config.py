"""``--l2-adapter '{"type": "dax", ...}'``: LMCache's Device-DAX keys, plus ``allowed_paths``.

* ``slot_bytes`` (required, > 0): the fixed slot size; one object per slot, so it must
  hold a full chunk object (with ``persist_enabled``, a chunk plus a 4 KiB header).
* One device, LMCache's legacy form: ``device_path`` and ``max_dax_size_gb``; or several:
  ``devices: [{"device_path", "max_dax_size_gb"}, ...]`` (not both). The list may be
  empty only with ``hotplug_enabled: true``. Each size must fit at least one slot and,
  when the device's size can be determined (a regular file's length, a devdax's sysfs
  ``size``), fit the device: otherwise startup fails.
* ``hotplug_enabled`` (false): allow ``POST /reconfigure/dax/{add,remove,resize}`` (403 otherwise).
* ``num_store_workers`` (1), ``num_lookup_workers`` (1), ``num_load_workers``
  (min(4, CPUs)): the adapter's I/O threads are their sum, in one pool.
* ``watch_directory`` ("": off) and ``watch_interval_seconds`` (1.0, > 0): report the
  ``dax*`` devices present there in the status; never attach them.
* ``persist_enabled`` (**false** here, unlike other types): per-slot headers so a restart
  rebuilds the index from the devices (:mod:`lmcache_plugin_dax.layout`). LMCache accepts
  and ignores the key (its DAX index is volatile); it is opt-in because each store then
  also computes a CRC32 of the payload.
* ``allowed_paths`` ([]): directories under which ``add`` may map a path, besides
  ``/dev/dax*``; the launcher option ``--dax-allowed-paths`` adds more (:mod:`.paths`).

``max_capacity_gb`` is refused: the capacity is the mapped devices' slots.
"""

from __future__ import annotations

import os

import msgspec

from lmcache_core.api import GIB, L2AdapterConfig
from lmcache_plugin_dax.layout import HEADER_BYTES


class DaxDeviceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One device mapped at start."""

    device_path: str
    max_dax_size_gb: float

    @property
    def size_bytes(self) -> int:
        return int(self.max_dax_size_gb * GIB)


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


class DaxAdapterConfig(L2AdapterConfig, kw_only=True, forbid_unknown_fields=True):
    """See the module docstring."""

    slot_bytes: int
    device_path: str | None = None
    max_dax_size_gb: float | None = None
    devices: list[DaxDeviceConfig] | None = None
    hotplug_enabled: bool = False
    num_store_workers: int = 1
    num_lookup_workers: int = 1
    num_load_workers: int = min(4, os.cpu_count() or 1)
    watch_directory: str = ""
    watch_interval_seconds: float = 1.0
    persist_enabled: bool = False
    allowed_paths: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_capacity_gb:
            raise ValueError("max_capacity_gb does not apply to dax: the capacity is the mapped devices' slots")
        _positive("slot_bytes", self.slot_bytes)
        if self.persist_enabled and self.slot_bytes <= HEADER_BYTES:
            raise ValueError(f"with persist_enabled, slot_bytes must exceed the {HEADER_BYTES}-byte slot header")
        for name in ("num_store_workers", "num_lookup_workers", "num_load_workers"):
            _positive(name, getattr(self, name))
        _positive("watch_interval_seconds", self.watch_interval_seconds)
        legacy = self.device_path is not None or self.max_dax_size_gb is not None
        if legacy and self.devices is not None:
            raise ValueError("give either device_path/max_dax_size_gb or devices, not both")
        if legacy and (self.device_path is None or self.max_dax_size_gb is None):
            raise ValueError("the single-device form needs both device_path and max_dax_size_gb")
        if not self.device_list() and not self.hotplug_enabled:
            raise ValueError("devices may be empty only when hotplug_enabled is true")
        for i, device in enumerate(self.device_list()):
            if not device.device_path.strip() or "\x00" in device.device_path:
                raise ValueError(f"devices[{i}].device_path must be a non-empty path")
            _positive(f"devices[{i}].max_dax_size_gb", device.max_dax_size_gb)
            if device.size_bytes // self.slot_bytes < 1:
                raise ValueError(f"devices[{i}] ({device.device_path}) does not fit one slot of {self.slot_bytes} bytes")
        for root in self.allowed_paths:
            if not os.path.isabs(root) or "\x00" in root or ".." in root.split("/"):
                raise ValueError(f"allowed_paths entries must be absolute paths without '..', got {root!r}")

    def device_list(self) -> list[DaxDeviceConfig]:
        """The devices to map at start, in order (the legacy form as a list of one)."""
        if self.devices is not None:
            return list(self.devices)
        if self.device_path is not None and self.max_dax_size_gb is not None:
            return [DaxDeviceConfig(device_path=self.device_path, max_dax_size_gb=self.max_dax_size_gb)]
        return []
