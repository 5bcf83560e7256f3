"""The Device-DAX L2 adapter (type ``dax``): slots in shared mappings, devices added, removed and resized live.

Data path (spec §5.3, LMCache 0.5.6's behaviour)
------------------------------------------------
* Each device is mapped once with a shared ``mmap`` and cut into ``slot_bytes`` slots;
  one object per slot. Usage and capacity count slots × ``slot_bytes``.
* A store of a key already stored (on any readable device) succeeds without writing
  (keys are content-addressed); a new key goes to the ``active`` device with the most
  free slots, lowest free slot first. No free slot: the store fails (L2 eviction, when
  configured, makes room).
* Loads copy straight from the mapping into the caller's buffer (``memmove``, GIL
  released). A slot is reused only when no reader borrows it and no store writes it;
  lookup locks (the base class) pin keys against delete and eviction.

Reconfiguration (``Reconfigurable``; routes in ``lmcache_plugin_reconfigure``)
------------------------------------------------------------------------------
``add {device_path, size}``, ``remove {device_path, mode, force}``, ``resize
{device_path, size, mode, force}``; ``hotplug_enabled: false`` answers 403 (LMCache).
Every check comes before the first change, so a refusal leaves the adapter as it was:

* 400: a path refused by confinement (:mod:`.paths`), a probe saying ``system-ram`` /
  ``unbound`` / a devdax smaller than ``size``, a size that does not fit one slot or
  exceeds the device, a mapping the kernel refuses;
* 404: no mapped (non-removed) device has that path;
* 409: the path (or the same device through another path) is mapped by another adapter
  of this server, or by this one with another size or state; locked keys or borrowed
  slots on what a remove/shrink would clear, unless ``force``; ``evict``-shrink without
  ``force`` (it would drop keys);
* 507: ``migrate`` (remove, or shrink) has nowhere to put every key; nothing moves.

``remove`` ``migrate`` stops writes to the device, reserves a destination slot on the
other active devices for every key (507 before any copy when they lack room), copies,
then closes the device. ``evict`` deletes its keys (listeners hear of it). ``drain``
stops writes; reads go on until the keys are deleted (by eviction or ``DELETE``), and
the device closes itself when its last key goes. A removed device stays in the status
as a ``removed`` tombstone. ``resize`` grows by remapping in place; a shrink first moves
the keys above the cut (``migrate``: to free slots below it, then to other devices; 507
when they do not all fit), or with ``mode: evict`` moves what fits below the cut on the
same device and evicts the rest, which needs ``force`` (409 otherwise): it never silently
drops a key. Copies in progress
keep the mapping they started on alive until they end.

L1 here lives in shared memory, never on a DAX device, so "mapped by L1" cannot occur;
another ``dax`` adapter of the same process mapping the device is refused (409).
"""

from __future__ import annotations

import ctypes
import dataclasses
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping as MappingT
from typing import Any

from lmcache_core.api import (
    AdapterUsage,
    L2Adapter,
    L2AdapterContext,
    ObjectKey,
    Reconfigurable,
    ReconfigureError,
)
from lmcache_plugin_dax import layout, paths

try:  # a core that tells "no room now" from a fault: a full device is a skipped store, not a failure
    from lmcache_core.api import L2Full as NoRoom  # type: ignore[attr-defined]
except ImportError:  # an older core: counted as a failed store
    NoRoom = OSError  # type: ignore[assignment,misc]
from lmcache_plugin_dax.config import DaxAdapterConfig
from lmcache_plugin_dax.layout import HEADER_BYTES, Mapping

logger = logging.getLogger(__name__)

TYPE_NAME = "dax"
OPERATIONS = ["add", "remove", "resize"]
WAIT_S = 30.0
"""Longest a reconfiguration waits for stores in flight or readers on a slot it must clear."""

READABLE = {"active", "draining", "migrating", "resizing", "removing"}
CAPACITY_STATES = READABLE

_claims_lock = threading.Lock()
_claims: dict[tuple[bool, int, int], str] = {}


def _claim(ident: tuple[bool, int, int] | None, owner: str) -> None:
    """Record that ``owner`` maps the device; 409 when another adapter of this process already does."""
    if ident is None:
        return
    with _claims_lock:
        holder = _claims.get(ident)
        if holder is not None and holder != owner:
            raise ReconfigureError(409, f"the device is already mapped by L2 adapter {holder}")
        _claims[ident] = owner


def _unclaim(ident: tuple[bool, int, int] | None, owner: str) -> None:
    with _claims_lock:
        if ident is not None and _claims.get(ident) == owner:
            del _claims[ident]


class Device:
    """One mapped device: its slots, what each holds, and who is using which."""

    def __init__(self, path: str, real: str, fd: int, size_bytes: int, slot_bytes: int,
                 physical: dict[str, Any]) -> None:
        self.path = path
        self.real = real
        self.fd = fd
        st = os.fstat(fd)
        self.ident = paths.identity(st)
        self.size_bytes = size_bytes
        self.slot_bytes = slot_bytes
        self.n_slots = size_bytes // slot_bytes
        self.mapping: Mapping | None = Mapping(fd, size_bytes)
        self.state = "active"
        self.physical = physical
        self.index: dict[ObjectKey, int] = {}  # key -> slot
        self.lens: dict[int, int] = {}  # slot -> payload bytes
        self.slot_key: dict[int, ObjectKey] = {}
        self.free: list[int] = []  # a heap of free slots below next_slot
        self.next_slot = 0  # slots from here to n_slots were never handed out
        self.inflight: dict[int, ObjectKey] = {}  # slots being written (stores, migration targets)
        self.borrows: dict[int, int] = {}  # slot -> readers copying out of it
        self.pending_free: set[int] = set()  # deleted while borrowed: freed when the last reader ends

    # slots

    def free_count(self) -> int:
        return len(self.free) + max(0, self.n_slots - self.next_slot)

    def allocate(self, limit: int | None = None) -> int | None:
        """The lowest free slot below ``limit`` (default: all slots), or None."""
        limit = self.n_slots if limit is None else min(limit, self.n_slots)
        if self.free and self.free[0] < limit:
            return heapq.heappop(self.free)
        if self.next_slot < limit:
            self.next_slot += 1
            return self.next_slot - 1
        return None

    def release(self, slot: int) -> None:
        heapq.heappush(self.free, slot)

    def take(self, slots: Iterable[int]) -> None:
        """Mark ``slots`` used (slots found valid when a fresh device was scanned)."""
        taken = set(slots)
        if not taken:
            return
        self.next_slot = max(self.next_slot, max(taken) + 1)
        used = taken | set(self.slot_key) | set(self.inflight)
        self.free = [s for s in range(self.next_slot) if s not in used]
        heapq.heapify(self.free)

    def commit(self, key: ObjectKey, slot: int, nbytes: int) -> None:
        self.index[key] = slot
        self.lens[slot] = nbytes
        self.slot_key[slot] = key

    def forget(self, key: ObjectKey) -> tuple[int, int]:
        """Drop ``key`` from the index; (slot, payload bytes). The slot is freed now or when its readers end."""
        slot = self.index.pop(key)
        nbytes = self.lens.pop(slot)
        del self.slot_key[slot]
        if self.borrows.get(slot):
            self.pending_free.add(slot)
        else:
            self.release(slot)
        return slot, nbytes

    def unborrow(self, slot: int) -> None:
        left = self.borrows[slot] - 1
        if left:
            self.borrows[slot] = left
            return
        del self.borrows[slot]
        if slot in self.pending_free:
            self.pending_free.discard(slot)
            self.release(slot)

    def busy_slots(self) -> set[int]:
        """Slots that must not be cut off or unmapped: stored, being written, or being read."""
        return set(self.slot_key) | set(self.inflight) | set(self.borrows) | self.pending_free

    def close(self) -> None:
        if self.mapping is not None:
            self.mapping.retire()
            self.mapping = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _address(view: memoryview) -> tuple[int, Any] | None:
    """The address of a writable contiguous buffer and the object pinning it, or None (read-only)."""
    if view.readonly:
        return None
    anchor = (ctypes.c_char * view.nbytes).from_buffer(view)
    return ctypes.addressof(anchor), anchor


class DaxL2Adapter(L2Adapter, Reconfigurable):
    """See the module docstring."""

    sysfs_root = "/sys"  # where the read-only device probe looks (a test may point it at a fake tree)

    def __init__(self, config: DaxAdapterConfig, context: L2AdapterContext) -> None:
        workers = config.num_store_workers + config.num_lookup_workers + config.num_load_workers
        super().__init__(config, dataclasses.replace(context, io_workers=workers))
        self.dax_config = config
        self.slot_bytes = config.slot_bytes
        self.persist = config.persist_enabled
        self.payload_offset = HEADER_BYTES if self.persist else 0
        self.payload_capacity = self.slot_bytes - self.payload_offset
        self.allowed_roots: list[str] = []
        self.allow_paths(config.allowed_paths)
        self._cond = threading.Condition(threading.Lock())  # devices and their slots; taken before the base lock
        self._devices: list[Device] = []
        self._where: dict[ObjectKey, Device] = {}
        self._storing: set[ObjectKey] = set()
        self._slots_by_salt: dict[str, int] = {}
        self._generation = itertools.count(1)
        self._recovered: list[tuple[ObjectKey, int]] = []
        self._watch: dict[str, Any] = {"enabled": False}
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        try:
            for device in config.device_list():
                path = os.path.normpath(device.device_path.strip())
                self._map_device(path, os.path.realpath(path), device.size_bytes)
            recovered = self._scan_all() if self.persist else []
            self._recovered = recovered
        except BaseException:
            self._close()
            self._pool.shutdown(wait=False)
            raise
        self._recalculate_capacity()
        if config.watch_directory:
            self._watch = {"enabled": True, "directory": config.watch_directory,
                           "interval_seconds": config.watch_interval_seconds, "last_scan_at": None,
                           "present_devices": []}
            self._watcher = threading.Thread(target=self._watch_loop, name=f"dax-watch-{context.index}", daemon=True)
            self._watcher.start()

    def allow_paths(self, roots: Iterable[str]) -> None:
        """Add directories under which ``add`` may map devices (config ``allowed_paths``, ``--dax-allowed-paths``)."""
        for root in roots:
            if not os.path.isabs(root) or ".." in root.split("/"):
                raise ValueError(f"an allowed DAX path must be absolute without '..', got {root!r}")
            normal = os.path.normpath(root)
            if normal not in self.allowed_roots:
                self.allowed_roots.append(normal)

    def slot_address(self, device_path: str, slot: int) -> int:
        """The address of a slot's first byte in the device's current mapping (benchmarks compare raw copies
        into the same mapping). Valid only while the device stays mapped at this size."""
        with self._cond:
            _, device = self._find(device_path)
            if device.mapping is None or not 0 <= slot < device.n_slots:
                raise ValueError(f"no slot {slot} on {device_path}")
            return device.mapping.address + slot * self.slot_bytes

    # -- mapping devices -------------------------------------------------------------------

    def _map_device(self, path: str, real: str, size_bytes: int, st: os.stat_result | None = None,
             physical: dict[str, Any] | None = None) -> Device:
        """Open and map one device (the caller has checked the path); appended to the device list."""
        if physical is None:
            physical = paths.probe(real, self.sysfs_root)
        fd = os.open(real, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        device: Device | None = None
        claimed = False
        try:
            actual = os.fstat(fd)
            if st is not None and paths.identity(actual) != paths.identity(st):
                raise ValueError(f"{path} changed while it was being checked")
            capacity = paths.device_capacity(actual, physical)
            if capacity is not None and capacity > 0 and size_bytes > capacity:
                raise ValueError(f"size {size_bytes} exceeds the device's {capacity} bytes ({path})")
            ident = paths.identity(actual)
            if ident is None:
                raise ValueError(f"{path} is neither a character device nor a regular file")
            if capacity == 0 and not ident[0]:
                raise ValueError(f"{path} is an empty file")
            _claim(ident, self.l2_name)
            claimed = True
            try:
                device = Device(path, real, fd, size_bytes, self.slot_bytes, physical)
            except (OSError, ValueError, OverflowError) as exc:
                raise ValueError(f"cannot map {size_bytes} bytes of {path}: {exc}") from None
        except BaseException:
            if claimed:
                _unclaim(paths.identity(os.fstat(fd)), self.l2_name)
            os.close(fd)
            raise
        with self._cond:
            self._devices.append(device)
        return device

    def _scan(self, device: Device) -> list[layout.SlotRecord]:
        """The valid slots of a device, newest generation first for each key."""
        assert device.mapping is not None
        view = device.mapping.view()
        try:
            records = [r for s in range(device.n_slots)
                       if (r := layout.read_slot(view, s, self.slot_bytes)) is not None]
        finally:
            view.release()
        return sorted(records, key=lambda r: -r.generation)

    def _adopt(self, device: Device, records: list[layout.SlotRecord]) -> list[tuple[ObjectKey, int]]:
        """Index a scanned device's records (newest first); an older copy of a key already indexed is cleared."""
        adopted: list[layout.SlotRecord] = []
        with self._cond:
            for r in records:
                if r.key in self._where or r.key in self._storing:
                    assert device.mapping is not None
                    layout.clear_header(device.mapping, r.slot, self.slot_bytes)
                    continue
                adopted.append(r)
                self._where[r.key] = device
            device.take(r.slot for r in adopted)
            for r in adopted:
                device.commit(r.key, r.slot, r.payload_len)
                self._count_salt(r.key, 1)
            top = max((r.generation for r in records), default=0)
            if top:
                self._generation = itertools.count(max(next(self._generation), top + 1))
        return [(r.key, r.payload_len) for r in adopted]

    def _scan_all(self) -> list[tuple[ObjectKey, int]]:
        """Scan every configured device; the newest copy of a key wins across devices too."""
        records = sorted(((r, d) for d in list(self._devices) for r in self._scan(d)), key=lambda t: -t[0].generation)
        by_device: dict[int, list[layout.SlotRecord]] = {}
        winners: set[ObjectKey] = set()
        for r, d in records:
            if r.key in winners:
                assert d.mapping is not None
                layout.clear_header(d.mapping, r.slot, self.slot_bytes)
                continue
            winners.add(r.key)
            by_device.setdefault(id(d), []).append(r)
        adopted: list[tuple[ObjectKey, int]] = []
        for d in list(self._devices):
            adopted += self._adopt(d, by_device.get(id(d), []))
        return adopted

    def _recalculate_capacity(self) -> None:
        with self._cond:
            self.max_capacity_bytes = sum(d.n_slots for d in self._devices if d.state in CAPACITY_STATES) \
                * self.slot_bytes

    def _count_salt(self, key: ObjectKey, delta: int) -> None:
        left = self._slots_by_salt.get(key.cache_salt, 0) + delta
        if left > 0:
            self._slots_by_salt[key.cache_salt] = left
        else:
            self._slots_by_salt.pop(key.cache_salt, None)

    # -- the L2 author's surface -----------------------------------------------------------

    def _put(self, key: ObjectKey, data: memoryview) -> None:
        nbytes = data.nbytes
        if nbytes > self.payload_capacity:
            raise ValueError(f"object of {nbytes} bytes does not fit a {self.payload_capacity}-byte DAX slot")
        key_bytes = layout.encode_key(key) if self.persist else b""
        deadline = time.monotonic() + WAIT_S
        with self._cond:
            while key in self._storing:  # the same key stored by another thread: wait for its outcome
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError("a concurrent store of the same key did not finish")
            if key in self._where:
                return  # stored already (content-addressed), as LMCache
            targets = [d for d in self._devices if d.state == "active" and d.free_count()]
            if not targets:
                raise NoRoom("no active DAX device has a free slot")
            device = max(targets, key=Device.free_count)
            slot = device.allocate()
            assert slot is not None and device.mapping is not None
            device.inflight[slot] = key
            self._storing.add(key)
            mapping = device.mapping
            mapping.users += 1
        ok = False
        try:
            self._write(mapping, slot, data, key_bytes)
            ok = True
        finally:
            with self._cond:
                mapping.users -= 1
                mapping.close_if_idle()
                del device.inflight[slot]
                self._storing.discard(key)
                if ok:
                    device.commit(key, slot, nbytes)
                    self._where[key] = device
                    self._count_salt(key, 1)
                else:
                    device.release(slot)
                self._cond.notify_all()

    def _write(self, mapping: Mapping, slot: int, data: memoryview, key_bytes: bytes) -> None:
        """Payload into the slot, then (persist) its header last."""
        offset = slot * self.slot_bytes + self.payload_offset
        if self.persist:
            layout.clear_header(mapping, slot, self.slot_bytes)
        source = _address(data)
        if source is not None:
            layout.copy(mapping.address + offset, source[0], data.nbytes)
            del source
        else:
            with mapping.view() as view:
                view[offset:offset + data.nbytes] = data
        if self.persist:
            self._seal(mapping, slot, key_bytes, data.nbytes)

    def _seal(self, mapping: Mapping, slot: int, key_bytes: bytes, nbytes: int, crc: int | None = None) -> None:
        """Write the slot's header (after its payload); ``crc`` of the payload, computed when not given."""
        if crc is None:
            crc = layout.payload_crc(mapping, slot * self.slot_bytes + HEADER_BYTES, nbytes)
        header = layout.pack_header(key_bytes, next(self._generation), self.slot_bytes, nbytes, crc)
        layout.write_header(mapping, slot, self.slot_bytes, header)

    def _borrow(self, key: ObjectKey) -> tuple[Device, int, int, Mapping] | None:
        """Under the lock: pin the key's slot and mapping for a copy out of it."""
        device = self._where.get(key)
        if device is None or device.mapping is None:
            return None
        slot = device.index[key]
        device.borrows[slot] = device.borrows.get(slot, 0) + 1
        mapping = device.mapping
        mapping.users += 1
        return device, slot, device.lens[slot], mapping

    def _give_back(self, device: Device, slot: int, mapping: Mapping) -> None:
        """Under the lock: undo :meth:`_borrow`."""
        mapping.users -= 1
        mapping.close_if_idle()
        device.unborrow(slot)
        self._maybe_finish_drain(device)
        self._cond.notify_all()

    def _get(self, key: ObjectKey, out: memoryview) -> bool:
        target = _address(out)
        if target is None:
            raise ValueError("the load buffer is read-only")
        with self._cond:
            borrowed = self._borrow(key)
            if borrowed is None:
                return False
            device, slot, nbytes, mapping = borrowed
            if nbytes != out.nbytes:
                self._give_back(device, slot, mapping)
                return False
        try:
            layout.copy(target[0], mapping.address + slot * self.slot_bytes + self.payload_offset, nbytes)
        finally:
            with self._cond:
                self._give_back(device, slot, mapping)
        return True

    def _size(self, key: ObjectKey) -> int | None:
        with self._cond:
            device = self._where.get(key)
            return None if device is None else device.lens[device.index[key]]

    def _remove(self, key: ObjectKey) -> int | None:
        with self._cond:
            device = self._where.pop(key, None)
            if device is None:
                return None
            slot, nbytes = self._unindex(device, key)
            self._maybe_finish_drain(device)
            return nbytes

    def _unindex(self, device: Device, key: ObjectKey) -> tuple[int, int]:
        """Under the lock: drop ``key`` from ``device`` (header cleared first, slot freed when unread)."""
        if self.persist and device.mapping is not None:
            layout.clear_header(device.mapping, device.index[key], self.slot_bytes)
        self._count_salt(key, -1)
        return device.forget(key)

    def _list(self, model_name: str | None, cursor: str | None, limit: int) -> tuple[list[tuple[ObjectKey, int]],
                                                                                   str | None]:
        """All keys in one listing order (model, salt, rank, group, hash); the cursor is an offset."""
        try:
            start = int(cursor) if cursor else 0
        except ValueError:
            raise ValueError(f"malformed page token {cursor!r}") from None
        if start < 0:
            raise ValueError(f"malformed page token {cursor!r}")
        with self._cond:
            items = [(k, d.lens[d.index[k]]) for k, d in self._where.items()
                     if model_name is None or k.model_name == model_name]
        items.sort(key=lambda kv: (kv[0].model_name, kv[0].cache_salt, kv[0].kv_rank, kv[0].object_group_id,
                                   kv[0].chunk_hash))
        page = items[start:start + limit]
        return page, str(start + limit) if start + limit < len(items) else None

    def _recover(self) -> Iterable[tuple[ObjectKey, int]]:
        recovered, self._recovered = self._recovered, []
        return recovered

    def _status(self) -> dict[str, Any]:
        with self._cond:
            used = len(self._where) * self.slot_bytes
            devices = [{"index": i, "device_path": d.path, "state": d.state, "live_slot_count": len(d.index)}
                       for i, d in enumerate(self._devices)]
        return {"type": TYPE_NAME, "slot_bytes": self.slot_bytes, "persist_enabled": self.persist,
                "supports_restart_recovery": self.persist, "hotplug_enabled": self.dax_config.hotplug_enabled,
                "current_size_bytes": used, "max_capacity_bytes": self.max_capacity_bytes, "devices": devices}

    def _close(self) -> None:
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        with self._cond:
            for device in self._devices:
                if device.state != "removed":
                    _unclaim(device.ident, self.l2_name)
                    device.state = "closed"
                device.close()
            self._where.clear()

    # -- usage: slots x slot_bytes ---------------------------------------------------------

    def usage(self) -> AdapterUsage:
        with self._cond:
            by_salt = {salt: n * self.slot_bytes for salt, n in self._slots_by_salt.items()}
            return AdapterUsage(len(self._where) * self.slot_bytes, self.max_capacity_bytes, by_salt)

    def usage_by_salt(self) -> dict[str, int]:
        with self._cond:
            return {salt: n * self.slot_bytes for salt, n in self._slots_by_salt.items()}

    # -- Reconfigurable ----------------------------------------------------------------------

    def reconfigure_operations(self) -> list[str]:
        return list(OPERATIONS)

    def reconfigure_status(self) -> dict[str, Any]:
        with self._lock:
            locked = set(self._locks)
        with self._cond:
            devices = [self._device_view(i, d, locked) for i, d in enumerate(self._devices)]
            live = [d for d in devices if d["state"] in CAPACITY_STATES]
            return {
                "hotplug_enabled": self.dax_config.hotplug_enabled,
                "slot_bytes": self.slot_bytes,
                "persist_enabled": self.persist,
                "total_capacity_bytes": sum(d["max_slots"] for d in live) * self.slot_bytes,
                "total_used_bytes": sum(d["live_slot_count"] for d in live) * self.slot_bytes,
                "allowed_paths": ["/dev/dax*", *self.allowed_roots],
                "devices": devices,
                "watcher": self._watcher_view(),
            }

    def _device_view(self, index: int, device: Device, locked: set[ObjectKey]) -> dict[str, Any]:
        return {
            "index": index,
            "device_path": device.path,
            "state": device.state,
            "max_dax_size_bytes": device.size_bytes,
            "max_slots": device.n_slots,
            "live_slot_count": len(device.index),
            "free_slot_count": device.free_count() if device.state != "removed" else 0,
            "inflight_store_count": len(device.inflight),
            "locked_key_count": sum(1 for k in device.index if k in locked),
            "borrowed_slot_count": len(device.borrows),
            "physical": dict(device.physical),
        }

    def _watcher_view(self) -> dict[str, Any]:
        view = dict(self._watch)
        if view.get("enabled"):
            mapped = {d.real for d in self._devices if d.state != "removed"}
            view["present_devices"] = [{**p, "mapped": os.path.realpath(p["device_path"]) in mapped}
                                       for p in view["present_devices"]]
        return view

    def _watch_loop(self) -> None:
        while not self._watch_stop.is_set():
            found = paths.scan_directory(self.dax_config.watch_directory)
            with self._cond:
                self._watch = {**self._watch, "last_scan_at": time.time(), "present_devices": found}
            self._watch_stop.wait(self.dax_config.watch_interval_seconds)

    def reconfigure(self, operation: str, params: MappingT[str, Any]) -> dict[str, Any]:
        if not self.dax_config.hotplug_enabled:
            raise ReconfigureError(403, "DAX hotplug is disabled (hotplug_enabled: false)")
        if operation == "add":
            result = self._op_add(str(params["device_path"]), int(params["size_bytes"]))
        elif operation == "remove":
            mode = params.get("mode", "migrate")
            if mode not in ("migrate", "evict", "drain"):
                raise ValueError("mode must be migrate, evict, or drain")
            result = self._op_remove(str(params["device_path"]), mode, bool(params.get("force", False)))
        elif operation == "resize":
            mode = params.get("mode", "migrate")
            if mode not in ("migrate", "evict"):
                raise ValueError("mode must be migrate or evict")
            result = self._op_resize(str(params["device_path"]), int(params["size_bytes"]), mode,
                                     bool(params.get("force", False)))
        else:
            raise ValueError(f"unsupported dax reconfigure operation: {operation}")
        self._recalculate_capacity()
        return {"status": "ok", "operation": operation, **result}

    def _find(self, path: str) -> tuple[int, Device]:
        """Under the lock: the mapped (non-removed) device with this path; 404 otherwise."""
        wanted = os.path.normpath(path.strip()) if path.strip() else ""
        for i, d in enumerate(self._devices):
            if d.path == wanted and d.state not in ("removed", "closed"):
                return i, d
        raise ReconfigureError(404, f"DAX device not found: {wanted}")

    def _op_add(self, path: str, size_bytes: int) -> dict[str, Any]:
        if size_bytes // self.slot_bytes < 1:
            raise ValueError(f"size {size_bytes} does not fit one slot of {self.slot_bytes} bytes")
        resolved = paths.confine(path, self.allowed_roots)
        ident = paths.identity(resolved.st)
        with self._cond:
            for i, d in enumerate(self._devices):
                if d.state in ("removed", "closed") or (d.path != resolved.path and d.ident != ident):
                    continue
                if d.state == "active" and d.size_bytes == size_bytes:
                    return {"device": self._added_view(i, d), "already_mapped": True}
                raise ReconfigureError(409, f"{resolved.path} is already mapped ({d.state}, {d.size_bytes} "
                                            "bytes); use resize")
        with _claims_lock:
            holder = _claims.get(ident) if ident is not None else None
        if holder is not None and holder != self.l2_name:
            raise ReconfigureError(409, f"{resolved.path} is already mapped by L2 adapter {holder}")
        physical = paths.probe(resolved.real, self.sysfs_root)
        refusal = paths.probe_refusal(physical, size_bytes)
        if refusal:
            raise ValueError(refusal)
        try:
            device = self._map_device(resolved.path, resolved.real, size_bytes, resolved.st, physical)
        except OSError as exc:
            raise ValueError(f"cannot map {resolved.path}: {exc.strerror or exc}") from None
        adopted = self._adopt(device, self._scan(device)) if self.persist else []
        if adopted:
            self._account_stored([k for k, _ in adopted], [n for _, n in adopted], notify=True)
        with self._cond:
            index = self._devices.index(device)
            return {"device": self._added_view(index, device), "already_mapped": False,
                    "recovered_keys": len(adopted)}

    def _added_view(self, index: int, device: Device) -> dict[str, Any]:
        """Under the lock: the device in an ``add`` answer (the status fields plus ``size_bytes``, as LMCache's docs)."""
        return {**self._device_view(index, device, set()), "size_bytes": device.size_bytes}

    def _blocked(self, device: Device, keys: Iterable[ObjectKey], slots: Iterable[int]) -> dict[str, Any] | None:
        """Under the lock: what pins ``keys``/``slots`` (lookup locks, readers), or None."""
        with self._lock:
            locked = sum(1 for k in keys if k in self._locks)
        borrowed = sum(1 for s in slots if device.borrows.get(s))
        if not locked and not borrowed:
            return None
        message = f"{device.path} has {locked} locked keys and {borrowed} borrowed slots; retry with force"
        return {"error": message, "status": "blocked", "locked_key_count": locked, "borrowed_slot_count": borrowed}

    def _wait(self, what: str, done: Any) -> None:
        """Under the lock: wait (bounded) until ``done()``; RuntimeError (409) otherwise."""
        deadline = time.monotonic() + WAIT_S
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"timed out waiting for {what}")
            self._cond.wait(left)

    def _reserve(self, source: Device, keys: list[ObjectKey], low: int | None) -> list[tuple[ObjectKey, Device, int]]:
        """Under the lock: a destination slot for each key (free slots of ``source`` below ``low`` first, then
        the other active devices, most free first); 507 (nothing reserved) when they do not all fit."""
        plan: list[tuple[ObjectKey, Device, int]] = []
        others = [d for d in self._devices if d is not source and d.state == "active"]
        for key in keys:
            slot = source.allocate(low) if low is not None else None
            target = source
            if slot is None:
                best = max(others, key=Device.free_count, default=None)
                slot = best.allocate() if best is not None else None
                target = best  # type: ignore[assignment]
            if slot is None:
                for _, d, s in plan:
                    del d.inflight[s]
                    d.release(s)
                raise ReconfigureError(507, f"no room on the other active DAX devices for the {len(keys)} keys "
                                            f"of {source.path}")
            target.inflight[slot] = key
            plan.append((key, target, slot))
        return plan

    def _move(self, source: Device, key: ObjectKey, target: Device, slot: int) -> int:
        """Copy one key to a reserved slot, then switch the index over; bytes moved (0: deleted meanwhile)."""
        with self._cond:
            borrowed = self._borrow(key) if self._where.get(key) is source else None
            if borrowed is None:
                del target.inflight[slot]
                target.release(slot)
                self._cond.notify_all()
                return 0
            _, src_slot, nbytes, src_map = borrowed
            dst_map = target.mapping
            assert dst_map is not None
            dst_map.users += 1
        ok = False
        try:
            if self.persist:
                layout.clear_header(dst_map, slot, self.slot_bytes)
            layout.copy(dst_map.address + slot * self.slot_bytes + self.payload_offset,
                        src_map.address + src_slot * self.slot_bytes + self.payload_offset, nbytes)
            if self.persist:  # a new generation: after a crash this copy wins over the source's
                crc = layout.header_payload_crc(src_map, src_slot, self.slot_bytes)
                self._seal(dst_map, slot, layout.encode_key(key), nbytes, crc)
            ok = True
        finally:
            with self._cond:
                dst_map.users -= 1
                dst_map.close_if_idle()
                del target.inflight[slot]
                moved = ok and self._where.get(key) is source and source.index.get(key) == src_slot
                if moved:
                    self._unindex(source, key)
                    self._count_salt(key, 1)
                    target.commit(key, slot, nbytes)
                    self._where[key] = target
                else:
                    target.release(slot)
                self._give_back(source, src_slot, src_map)
        return nbytes if moved else 0

    def _retire_device(self, device: Device) -> None:
        """Under the lock: close a device nobody reads or writes any more; it stays as a tombstone."""
        device.state = "removed"
        _unclaim(device.ident, self.l2_name)
        device.close()

    def _maybe_finish_drain(self, device: Device) -> None:
        """Under the lock: a draining device closes once its last key is gone and nobody uses it."""
        if device.state == "draining" and not device.index and not device.inflight and not device.borrows:
            self._retire_device(device)
            self._cond.notify_all()

    def _op_remove(self, path: str, mode: str, force: bool) -> dict[str, Any]:
        deleted: list[ObjectKey] = []
        with self._cond:
            index, device = self._find(path)
            if mode == "drain":
                if device.state == "active":
                    device.state = "draining"
                self._maybe_finish_drain(device)
                return {"mode": mode, "device_path": device.path, "index": index, "state": device.state,
                        "remaining_keys": len(device.index)}
            blocked = self._blocked(device, device.index, device.borrows)
            if blocked and not force:
                raise ReconfigureError(409, blocked["error"], payload=blocked)
            if mode == "migrate":
                room = sum(d.free_count() for d in self._devices if d is not device and d.state == "active")
                if len(device.index) + len(device.inflight) > room:
                    raise ReconfigureError(507, f"no room on the other active DAX devices for the "
                                                f"{len(device.index) + len(device.inflight)} keys of {device.path}")
            old_state = device.state
            device.state = "migrating" if mode == "migrate" else "removing"
            try:
                self._wait("stores in flight on the device", lambda: not device.inflight)
                plan = self._reserve(device, list(device.index), None) if mode == "migrate" else []
            except BaseException:
                device.state = old_state
                raise
            if mode == "evict":
                for key in list(device.index):
                    del self._where[key]
                    self._unindex(device, key)
                    deleted.append(key)
        moved_keys = moved_bytes = 0
        for key, target, slot in plan:
            nbytes = self._move(device, key, target, slot)
            moved_keys += 1 if nbytes else 0
            moved_bytes += nbytes
        if deleted:
            self._account_deleted(deleted)
        with self._cond:
            leftover = list(device.index)  # (force) keys a concurrent path kept on it: never silently dropped
            if leftover:
                device.state = old_state
                raise ReconfigureError(409, f"{len(leftover)} keys could not be moved off {device.path}")
            self._wait("readers of the device", lambda: not device.borrows)
            self._retire_device(device)
            return {"mode": mode, "device_path": device.path, "index": index, "state": device.state,
                    "moved_keys": moved_keys, "moved_bytes": moved_bytes, "deleted_keys": len(deleted)}

    def _op_resize(self, path: str, size_bytes: int, mode: str, force: bool) -> dict[str, Any]:
        new_slots = size_bytes // self.slot_bytes
        if new_slots < 1:
            raise ValueError(f"size {size_bytes} does not fit one slot of {self.slot_bytes} bytes")
        with self._cond:
            index, device = self._find(path)
            old_size = device.size_bytes
            capacity = paths.device_capacity(os.fstat(device.fd), device.physical)
            if capacity and size_bytes > capacity:
                raise ValueError(f"size {size_bytes} exceeds the device's {capacity} bytes ({device.path})")
            result = {"mode": mode, "device_path": device.path, "index": index, "old_size_bytes": old_size,
                      "new_size_bytes": size_bytes}
            if size_bytes == old_size:
                return {**result, "state": device.state, "moved_keys": 0, "deleted_keys": 0}
            if size_bytes > old_size:
                self._remap(device, size_bytes)
                return {**result, "state": device.state, "moved_keys": 0, "deleted_keys": 0}
            high = [k for k, s in device.index.items() if s >= new_slots]
            high_slots = [s for s in device.busy_slots() if s >= new_slots]
            blocked = self._blocked(device, high, high_slots)
            if blocked and not force:
                raise ReconfigureError(409, blocked["error"], payload=blocked)
            low_free = sum(1 for s in device.free if s < new_slots) + max(0, new_slots - device.next_slot)
            if mode == "evict" and len(high) > low_free and not force:
                raise ReconfigureError(409, f"shrinking {device.path} to {size_bytes} bytes would evict "
                                            f"{len(high) - low_free} keys; use mode migrate, or force")
            if mode == "migrate":
                room = low_free + sum(d.free_count() for d in self._devices if d is not device and d.state == "active")
                needed = len(high) + sum(1 for s in device.inflight if s >= new_slots)
                if needed > room:
                    raise ReconfigureError(507, f"no room to move the {needed} keys above {size_bytes} bytes of "
                                                f"{device.path}")
            old_state = device.state
            device.state = "resizing"
            try:
                self._wait("stores in flight on the device", lambda: not device.inflight)
                high = [k for k, s in device.index.items() if s >= new_slots]
                plan = self._reserve(device, high, new_slots) if mode == "migrate" else []
            except BaseException:
                device.state = old_state
                raise
            deleted = []
            if mode == "evict":  # keep what fits below the cut on this device, evict the rest
                for key in high:
                    slot = device.allocate(new_slots)
                    if slot is None:
                        del self._where[key]
                        self._unindex(device, key)
                        deleted.append(key)
                    else:
                        device.inflight[slot] = key
                        plan.append((key, device, slot))
        moved = sum(1 for key, target, slot in plan if self._move(device, key, target, slot))
        if deleted:
            self._account_deleted(deleted)
        with self._cond:
            try:
                self._wait("readers above the new size", lambda: not [s for s in device.busy_slots() if s >= new_slots])
            finally:
                device.state = old_state
            self._remap(device, size_bytes)
            return {**result, "state": device.state, "moved_keys": moved, "deleted_keys": len(deleted)}

    def _remap(self, device: Device, size_bytes: int) -> None:
        """Under the lock: map the device at its new size (in place: same slots, same bytes)."""
        try:
            mapping = Mapping(device.fd, size_bytes)
        except (OSError, ValueError, OverflowError) as exc:
            raise ValueError(f"cannot map {size_bytes} bytes of {device.path}: {exc}") from None
        old, device.mapping = device.mapping, mapping
        if old is not None:
            old.retire()
        device.size_bytes = size_bytes
        device.n_slots = size_bytes // self.slot_bytes
        device.free = [s for s in device.free if s < device.n_slots]
        heapq.heapify(device.free)
        device.next_slot = min(device.next_slot, device.n_slots)


def make_adapter(config: DaxAdapterConfig, context: L2AdapterContext) -> DaxL2Adapter:
    """The factory registered for type ``dax``."""
    return DaxL2Adapter(config, context)
