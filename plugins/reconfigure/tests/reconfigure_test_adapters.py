"""Two real, reconfigurable L2 adapter types for the reconfigure route tests (a plugin module).

Registered through ``lmcache_register_l2_adapters`` like any L2 plugin:

``dax`` (:class:`FileDaxAdapter`)
    A stand-in for Device-DAX until its plugin exists: "devices" are real regular
    files (LMCache's DAX adapter maps a regular file in tests too); objects live in
    memory, each on one device, and count against that device's size. Implements the
    seed's ``add`` / ``remove`` (``migrate`` | ``evict`` | ``drain``) / ``resize``
    (``migrate`` | ``evict``) with LMCache's outcomes: 400 for a path that is not a
    readable and writable file or a size beyond it, 404 for an unmapped device, 409
    for another mapping of the path or for locked objects in the way (unless
    ``force``), 507 when there is no room to migrate to. A refused operation changes
    nothing: every check comes before the first change.
``Knob`` (:class:`KnobAdapter`)
    A generic backend (mixed-case type name on purpose): ``set`` merges the request's
    fields into ``settings``, ``reset`` empties them, ``fail`` raises what ``kind``
    names (each refusal type ``Reconfigurable`` documents), ``hold`` waits on
    :attr:`KnobAdapter.gate` when a test arms it. Every operation is logged with
    enter/exit events so a test can see serialisation.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from support import MemoryAdapter

from lmcache_core import hookimpl
from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l2.base import (
    L2Adapter,
    L2AdapterConfig,
    L2AdapterContext,
    Reconfigurable,
    ReconfigureError,
)
from lmcache_core.units import parse_size

HOLD_TIMEOUT_S = 30.0  # a held operation never outlives a broken test by more than this


# -- dax: devices are real files ----------------------------------------------------------------


class DeviceConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A device mapped at start: its path and a size (bytes or ``"64KiB"``)."""

    device_path: str
    size: int | str


class FileDaxConfig(L2AdapterConfig, kw_only=True, forbid_unknown_fields=True):
    """``{"type": "dax", "devices": [{"device_path": ..., "size": "64KiB"}]}``."""

    devices: list[DeviceConfig] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        for device in self.devices:
            parse_size(device.size)  # ValueError: a config error naming the size


@dataclass
class Device:
    """One mapped file: its size, state and the objects placed on it."""

    path: str
    size_bytes: int
    state: str = "active"  # active | draining | removed
    objects: dict[ObjectKey, bytes] = field(default_factory=dict)

    @property
    def used_bytes(self) -> int:
        return sum(len(v) for v in self.objects.values())

    def view(self) -> dict[str, Any]:
        return {"device_path": self.path, "state": self.state, "size_bytes": self.size_bytes}


def _check_file(path: str, size_bytes: int) -> None:
    """The device must exist as a readable, writable regular file at least ``size_bytes`` long."""
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL
        raise ValueError(f"device_path {path!r} cannot be opened: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(info.st_mode) or not os.access(path, os.R_OK | os.W_OK):
        raise ValueError(f"device_path {path!r} is not a readable and writable file")
    if size_bytes > info.st_size:
        raise ValueError(f"size {size_bytes} exceeds the device's {info.st_size} bytes")


class FileDaxAdapter(L2Adapter, Reconfigurable):
    """Objects in memory, placed on file-backed "devices" that can be added, removed and resized."""

    OPERATIONS = ["add", "remove", "resize"]

    def __init__(self, config: FileDaxConfig, context: L2AdapterContext) -> None:
        self.devices: dict[str, Device] = {}
        self._state_lock = threading.Lock()  # devices/objects; taken before the base class's lock, never after
        self.applied: list[tuple[str, dict[str, Any]]] = []
        for device in config.devices:
            self.devices[device.device_path] = Device(device.device_path, parse_size(device.size))
        super().__init__(config, context)

    # the L2 author's surface

    def _put(self, key: ObjectKey, data: memoryview) -> None:
        with self._state_lock:
            for device in self.devices.values():
                if key in device.objects and device.state != "removed":
                    device.objects[key] = bytes(data)
                    return
            room = [d for d in self.devices.values()
                    if d.state == "active" and d.size_bytes - d.used_bytes >= data.nbytes]
            if not room:
                raise OSError("no active device has room")
            max(room, key=lambda d: d.size_bytes - d.used_bytes).objects[key] = bytes(data)

    def _find(self, key: ObjectKey) -> bytes | None:
        with self._state_lock:
            for device in self.devices.values():
                if key in device.objects:
                    return device.objects[key]
        return None

    def _get(self, key: ObjectKey, out: memoryview) -> bool:
        data = self._find(key)
        if data is None or len(data) != out.nbytes:
            return False
        out[:] = data
        return True

    def _size(self, key: ObjectKey) -> int | None:
        data = self._find(key)
        return None if data is None else len(data)

    def _remove(self, key: ObjectKey) -> int | None:
        with self._state_lock:
            for device in self.devices.values():
                if key in device.objects:
                    return len(device.objects.pop(key))
        return None

    # Reconfigurable

    def reconfigure_operations(self) -> list[str]:
        return list(self.OPERATIONS)

    def reconfigure_status(self) -> dict[str, Any]:
        with self._state_lock:
            live = [d for d in self.devices.values() if d.state != "removed"]
            return {
                "hotplug_enabled": True,
                "total_capacity_bytes": sum(d.size_bytes for d in live),
                "total_used_bytes": sum(d.used_bytes for d in live),
                "devices": [{"index": i, **d.view(), "used_bytes": d.used_bytes, "objects": len(d.objects)}
                            for i, d in enumerate(self.devices.values())],
            }

    def reconfigure(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        handler = {"add": self._add, "remove": self._remove_device, "resize": self._resize}[operation]
        result = handler(**params)
        self.applied.append((operation, dict(params)))
        return {"status": "ok", "operation": operation, **result}

    def _mapped(self, path: str) -> Device:
        device = self.devices.get(path)
        if device is None or device.state == "removed":
            raise ReconfigureError(404, f"device not found: {path}")
        return device

    def _add(self, device_path: str, size_bytes: int) -> dict[str, Any]:
        with self._state_lock:
            existing = self.devices.get(device_path)
            if existing is not None and existing.state != "removed":
                if existing.state == "active" and existing.size_bytes == size_bytes:
                    return {"device": existing.view(), "already_mapped": True}  # idempotent re-add
                raise ReconfigureError(409, f"{device_path} is already mapped ({existing.state}, "
                                            f"{existing.size_bytes} bytes); use resize")
        _check_file(device_path, size_bytes)
        with self._state_lock:
            self.devices.pop(device_path, None)  # a tombstone is replaced
            self.devices[device_path] = device = Device(device_path, size_bytes)
            return {"device": device.view(), "already_mapped": False}

    def _plan_moves(self, moving: dict[ObjectKey, bytes], source: Device) -> dict[ObjectKey, Device]:
        """Where each moving object goes (other active devices, most room first); 507 when it does not fit."""
        free = {d.path: d.size_bytes - d.used_bytes for d in self.devices.values()
                if d is not source and d.state == "active"}
        plan = {}
        for key, data in sorted(moving.items(), key=lambda kv: -len(kv[1])):
            best = max(free, key=lambda p: free[p], default=None)
            if best is None or free[best] < len(data):
                raise ReconfigureError(507, f"no destination capacity to migrate {len(moving)} objects "
                                            f"off {source.path}")
            free[best] -= len(data)
            plan[key] = self.devices[best]
        return plan

    def _check_locks(self, keys: list[ObjectKey], force: bool, path: str) -> None:
        locked = [k for k in keys if not self.is_key_evictable(k)]
        if locked and not force:
            raise ReconfigureError(409, f"{len(locked)} objects on {path} are locked; retry with force",
                                   payload={"error": f"{len(locked)} objects on {path} are locked; retry with force",
                                            "locked_objects": len(locked)})

    def _move_out(self, source: Device, keys: list[ObjectKey], mode: str, force: bool) -> tuple[int, int]:
        """Migrate or evict ``keys`` off ``source`` (all checks first); (migrated, evicted)."""
        self._check_locks(keys, force, source.path)
        moving = {k: source.objects[k] for k in keys}
        if mode == "migrate":
            plan = self._plan_moves(moving, source)
            for key, destination in plan.items():
                destination.objects[key] = source.objects.pop(key)
            return len(plan), 0
        for key in keys:
            del source.objects[key]
        return 0, len(keys)

    def _remove_device(self, device_path: str, mode: str, force: bool) -> dict[str, Any]:
        evicted: list[ObjectKey] = []
        with self._state_lock:
            device = self._mapped(device_path)
            migrated = 0
            if mode == "drain":
                device.state = "draining"
            else:
                keys = list(device.objects)
                migrated, n_evicted = self._move_out(device, keys, mode, force)
                evicted = keys if n_evicted else []
                device.state = "removed"
            view = device.view()
        if evicted:
            self._account_deleted(evicted)
        return {"mode": mode, "device": view, "migrated": migrated, "evicted": len(evicted)}

    def _resize(self, device_path: str, size_bytes: int, mode: str, force: bool) -> dict[str, Any]:
        with self._state_lock:
            self._mapped(device_path)
        _check_file(device_path, size_bytes)
        evicted: list[ObjectKey] = []
        with self._state_lock:
            device = self._mapped(device_path)
            migrated = 0
            excess = device.used_bytes - size_bytes
            if excess > 0:  # shrink below what is stored: relocate the largest objects first, never drop silently
                victims: list[ObjectKey] = []
                for key, data in sorted(device.objects.items(), key=lambda kv: -len(kv[1])):
                    if excess <= 0:
                        break
                    victims.append(key)
                    excess -= len(data)
                migrated, n_evicted = self._move_out(device, victims, mode, force)
                evicted = victims if n_evicted else []
            device.size_bytes = size_bytes
            view = device.view()
        if evicted:
            self._account_deleted(evicted)
        return {"mode": mode, "device": view, "migrated": migrated, "evicted": len(evicted)}


# -- Knob: a generic backend ---------------------------------------------------------------------


class KnobConfig(L2AdapterConfig, kw_only=True, forbid_unknown_fields=True):
    """``{"type": "Knob"}``; ``allow_bugs`` enables the ``bug`` kinds, ``status_fails`` breaks the status."""

    allow_bugs: bool = False
    status_fails: bool = False


class KnobAdapter(MemoryAdapter, Reconfigurable):
    """A memory adapter with runtime settings; see the module docstring."""

    def __init__(self, config: KnobConfig, context: L2AdapterContext) -> None:
        super().__init__(config, context)
        self.knob_config = config
        self.settings: dict[str, Any] = {}
        self.applied: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, Any]] = []
        self.gate: threading.Event | None = None
        self._inside = 0
        self.max_inside = 0
        self._events_lock = threading.Lock()

    def reconfigure_operations(self) -> list[str]:
        ops = ["set", "reset", "fail", "hold"]
        return ops + ["bug"] if self.knob_config.allow_bugs else ops

    def reconfigure_status(self) -> dict[str, Any]:
        if self.knob_config.status_fails:
            raise OSError("status probe failed")
        return {"settings": dict(self.settings), "applied": len(self.applied)}

    def _event(self, what: str, tag: Any) -> None:
        with self._events_lock:
            self.events.append((what, tag))
            self._inside += 1 if what == "enter" else -1
            self.max_inside = max(self.max_inside, self._inside)

    def reconfigure(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        tag = params.get("tag")
        self._event("enter", tag)
        try:
            result = self._run(operation, dict(params))
        finally:
            self._event("exit", tag)
        self.applied.append((operation, dict(params)))
        return result

    def _run(self, operation: str, params: dict[str, Any]) -> Any:
        if operation == "set":
            if not params:
                raise ValueError("set needs at least one field")
            limit = params.get("limit", 0)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
                raise ValueError("limit must be a non-negative integer")
            self.settings.update(params)
            return {"status": "ok", "settings": dict(self.settings)}
        if operation == "reset":
            self.settings.clear()
            return {"status": "ok", "settings": {}}
        if operation == "hold":
            gate = self.gate
            held = gate.wait(HOLD_TIMEOUT_S) if gate is not None else False
            return {"status": "ok", "held": held}
        if operation == "fail":
            kind = params.get("kind")
            if kind == "invalid":
                raise ValueError("invalid knob")
            if kind == "busy":
                raise RuntimeError("knob is busy")
            if kind == "unsupported":
                raise NotImplementedError("this knob cannot turn")
            if kind == "unavailable":
                raise ReconfigureError(503, "knob backend unavailable")
            if kind == "conflict":
                raise ReconfigureError(409, "knob conflict", payload={"error": "knob conflict", "blocking": 3})
            if kind == "no-room":
                raise ReconfigureError(507, "no room for the knob")
            raise ValueError(f"unknown failure kind: {kind!r}")
        if operation == "bug":  # listed only with allow_bugs
            if params.get("kind") == "not-a-dict":
                return ["not", "a", "dict"]
            if params.get("kind") == "bad-status":
                raise ReconfigureError(200, "a success status is not a refusal")
            raise KeyError("an adapter bug")
        raise AssertionError(f"operation {operation!r} was not listed")


@hookimpl
def lmcache_register_l2_adapters(register: Any) -> None:
    register("dax", FileDaxConfig, lambda config, context: FileDaxAdapter(config, context))
    register("Knob", KnobConfig, lambda config, context: KnobAdapter(config, context))
