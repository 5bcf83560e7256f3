"""The L2 adapter contract: a small typed surface for plugin authors, the rest in the base class.

An adapter type is registered by a plugin through ``lmcache_register_l2_adapters``
with ``register(type_name, config_type, factory)``; ``factory(config, context)``
returns an :class:`L2Adapter`. The author implements five blocking methods that
each handle one object and may raise:

* :meth:`L2Adapter._put` — write one object (atomically: a reader never sees half);
* :meth:`L2Adapter._get` — read one object into a caller-owned buffer, False if absent/corrupt;
* :meth:`L2Adapter._size` — the stored size of an object, or None;
* :meth:`L2Adapter._remove` — delete one object, its freed size or None;
* :meth:`L2Adapter._list` (optional) — one page of keys after an opaque cursor.

and optionally :meth:`L2Adapter._recover` (what is already stored, at start),
:meth:`L2Adapter._status`, :meth:`L2Adapter._close` and :meth:`L2Adapter._map` (run a
batch's per-object calls concurrently, for backends that gain from parallel requests).

The base class gives every adapter, for free:

* futures (``concurrent.futures.Future``) for store / lookup-and-lock / load /
  delete, run on the adapter's own thread pool, so no caller ever blocks on I/O;
* lookup locks: keys found by :meth:`lookup_and_lock` are pinned against
  :meth:`delete` (and eviction) until :meth:`unlock`;
* usage accounting, total and per ``cache_salt``, kept from what was stored,
  recovered and deleted;
* listeners told of stored / accessed / deleted keys;
* failure counters and a status section with ``is_healthy``.
"""

from __future__ import annotations

import abc
import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from lmcache_core.keys import EncodedObjectKey, ObjectKey
from lmcache_core.storage.l2 import metrics

logger = logging.getLogger(__name__)

GIB = 1 << 30
T = TypeVar("T")
R = TypeVar("R")


def as_bytes_view(obj: Any) -> memoryview:
    """A writable byte view of a contiguous CPU tensor (zero copy, no NumPy) or of any buffer."""
    if hasattr(obj, "data_ptr"):  # a torch tensor
        if obj.device.type != "cpu" or not obj.is_contiguous():
            raise ValueError("L2 objects must be contiguous CPU tensors")
        nbytes = obj.numel() * obj.element_size()
        return memoryview((ctypes.c_ubyte * nbytes).from_address(obj.data_ptr())).cast("B")
    return memoryview(obj).cast("B")


class EvictionConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An adapter's eviction settings (common to every type)."""

    eviction_policy: str = "LRU"
    trigger_watermark: float = msgspec.field(default=0.8)
    eviction_ratio: float = msgspec.field(default=0.2)

    def __post_init__(self) -> None:
        if not 0 < self.trigger_watermark <= 1 or not 0 < self.eviction_ratio <= 1:
            raise ValueError("trigger_watermark and eviction_ratio must be in (0, 1]")


class L2AdapterConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Keys every adapter type accepts; a type's config Struct subclasses this.

    ``persist_enabled``, ``affinity_tag`` and ``shared`` are LMCache's common keys,
    accepted so its ``--l2-adapter`` JSON loads unchanged; they change nothing here
    yet. ``serde`` (LMCache's fp8 wrapper) is refused: silently storing full-width
    objects where fp8 was asked for would change what the L2 holds.
    """

    max_capacity_gb: float = 0.0  # 0: unknown or unbounded (no global eviction)
    eviction: EvictionConfig | None = None
    persist_enabled: bool = True
    affinity_tag: str = "_default"
    shared: bool = False
    serde: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.max_capacity_gb >= 0:
            raise ValueError("max_capacity_gb must be >= 0")
        if self.serde is not None:
            raise ValueError("'serde' (LMCache's serialising wrapper) is not supported by lmcache-server")


@dataclass(frozen=True)
class L2AdapterContext:
    """What a factory receives besides its config: the adapter's position and a name for its threads."""

    index: int
    type_name: str
    io_workers: int = 4


@dataclass(frozen=True)
class AdapterUsage:
    """Bytes used (total and per salt) and the capacity (0 = unknown)."""

    total_bytes_used: int
    total_capacity_bytes: int
    bytes_by_cache_salt: Mapping[str, int]

    @property
    def usage_fraction(self) -> float:
        """used / capacity, or -1 when the capacity is unknown."""
        return self.total_bytes_used / self.total_capacity_bytes if self.total_capacity_bytes > 0 else -1.0


@dataclass(frozen=True)
class KeyEntry:
    key: EncodedObjectKey
    size_bytes: int


@dataclass(frozen=True)
class KeyListPage:
    """One page of :meth:`L2Adapter.list_keys`; ``next_page_token`` None means the listing is complete."""

    entries: list[KeyEntry]
    next_page_token: str | None


@dataclass(frozen=True)
class DeleteReport:
    """What one :meth:`L2Adapter.delete_report` call did, key by key (each key lands in one list).

    ``deleted``: removed now; ``absent``: not stored (nothing to do); ``locked``: skipped
    because a lookup holds it (``lookup_and_lock`` without ``unlock`` yet); ``failed``:
    the adapter raised removing it, with the reason.
    """

    deleted: list[ObjectKey]
    absent: list[ObjectKey]
    locked: list[ObjectKey]
    failed: list[tuple[ObjectKey, str]]


class L2Full(Exception):
    """Raised by :meth:`L2Adapter._put` when the backend has no room for this object now.

    The object is skipped, not failed: it is counted in ``report_status()["skipped_full"]``
    and logged at most once a minute per adapter, instead of once per object as a failure.
    Raise it for a full disk, a device without free slots or a quota the backend enforces;
    raise anything else for a real fault.
    """


class ListingNotSupported(NotImplementedError):
    """This adapter type cannot enumerate what it stores."""


class ReconfigureError(RuntimeError):
    """A refused or failed reconfiguration that carries the HTTP status and body to answer.

    For the outcomes plain exceptions cannot say: 404 (no such device), 409 (locked
    or busy, retry with ``force``), 507 (no room to migrate to), 503, ... ``payload``
    is the JSON body; by default ``{"error": message}``.
    """

    def __init__(self, status_code: int, message: str, *, payload: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.payload: dict[str, Any] = dict(payload) if payload is not None else {"error": message}


class Reconfigurable(abc.ABC):
    """Optional runtime reconfiguration (``/reconfigure/...``): an adapter class may also derive from this.

    The backend name callers use is the adapter's ``type_name``, compared
    case-insensitively; ``adapter_index`` counts only the adapters of that backend.
    Callers go through :meth:`apply_reconfigure`, which runs one operation at a time
    per adapter (never on the event loop: it may block for as long as the operation
    takes). :meth:`reconfigure_status` is not serialised with operations, so it must
    be safe to call while one runs.

    How :meth:`reconfigure` reports a refusal, and what the HTTP layer answers:
    :class:`ReconfigureError` → its own status and payload; ``ValueError`` → 400
    (bad parameters); ``NotImplementedError`` → 501; any other ``RuntimeError`` → 409
    (cannot be done now). Anything else is a bug (500). A refused operation must leave
    the adapter unchanged.

    ``params`` for backend ``dax`` are validated by the HTTP layer (the seed's bodies):
    ``add`` ``{device_path, size_bytes}``, ``remove`` ``{device_path, mode, force}``,
    ``resize`` ``{device_path, size_bytes, mode, force}``, with ``size_bytes`` a
    positive ``int`` from :func:`lmcache_core.units.parse_size`. Other backends get
    the request body without ``adapter_index``, verbatim.
    """

    _reconfigure_lock_guard = threading.Lock()  # creates each adapter's own lock exactly once

    @abc.abstractmethod
    def reconfigure_operations(self) -> list[str]:
        """The operation names this adapter accepts now, lower case (e.g. ``add``, ``remove``, ``resize``)."""

    @abc.abstractmethod
    def reconfigure(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Apply one operation; the JSON-serialisable result. Refusals as the class docstring says."""

    @abc.abstractmethod
    def reconfigure_status(self) -> dict[str, Any]:
        """The adapter's reconfigurable state (JSON-serialisable; backend-specific fields)."""

    def apply_reconfigure(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`reconfigure` under this adapter's reconfiguration lock: one operation at a time."""
        with self.reconfigure_lock():
            return self.reconfigure(operation, params)

    def reconfigure_lock(self) -> threading.Lock:
        """This adapter's reconfiguration lock (created on first use: subclasses need not call an ``__init__``)."""
        lock: threading.Lock | None = self.__dict__.get("_reconfigure_lock")
        if lock is None:
            with Reconfigurable._reconfigure_lock_guard:
                lock = self.__dict__.setdefault("_reconfigure_lock", threading.Lock())
        return lock


class L2Listener:
    """Observer of an adapter's key events (base methods do nothing); must not block."""

    def on_l2_keys_stored(self, adapter: L2Adapter, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        """Keys now stored, with their sizes."""

    def on_l2_keys_accessed(self, adapter: L2Adapter, keys: Sequence[ObjectKey]) -> None:
        """Keys found by a lookup or loaded."""

    def on_l2_keys_deleted(self, adapter: L2Adapter, keys: Sequence[ObjectKey]) -> None:
        """Keys gone from the adapter."""


class L2Adapter(abc.ABC):
    """Base class of every L2 adapter; see the module docstring for the author's surface."""

    def __init__(self, config: L2AdapterConfig, context: L2AdapterContext, *,
                 capacity_bytes: int | None = None) -> None:
        """``capacity_bytes``: the backend's own capacity, when it knows one (a device's size); by
        default ``config.max_capacity_gb``. It is what usage fractions and L2 eviction compare with."""
        self.config = config
        self.context = context
        self.index = context.index
        self.type_name = context.type_name
        self.max_capacity_bytes = int(config.max_capacity_gb * GIB) if capacity_bytes is None else int(capacity_bytes)
        self.skipped_full = 0
        self._full_logged_at = float("-inf")
        self._pool = ThreadPoolExecutor(max(1, context.io_workers),
                                        thread_name_prefix=f"l2-{context.type_name}-{context.index}")
        self._lock = threading.Lock()
        self._locks: dict[ObjectKey, int] = {}
        self._sizes: dict[ObjectKey, int] = {}
        self._bytes_by_salt: dict[str, int] = {}
        self._total = 0
        self._listeners: list[L2Listener] = []
        self.failures = {"store": 0, "lookup": 0, "load": 0, "delete": 0}
        self._closed = False
        self.l2_name = f"{context.type_name}:{context.index}"

    # -- the author's surface --------------------------------------------------------------

    @abc.abstractmethod
    def _put(self, key: ObjectKey, data: memoryview) -> None:
        """Store one object; raise on failure. Readers must never see a partial object."""

    @abc.abstractmethod
    def _get(self, key: ObjectKey, out: memoryview) -> bool:
        """Read one object into ``out`` (exactly its size); False when absent or corrupt."""

    @abc.abstractmethod
    def _size(self, key: ObjectKey) -> int | None:
        """The stored size of ``key``, or None when absent."""

    @abc.abstractmethod
    def _remove(self, key: ObjectKey) -> int | None:
        """Delete one object; its size, or None when it was absent."""

    def _list(self, model_name: str | None, cursor: str | None, limit: int) -> tuple[list[tuple[ObjectKey, int]],
                                                                                   str | None]:
        """One page of ``(key, size)`` after ``cursor`` (opaque to callers) and the next cursor."""
        raise ListingNotSupported(f"L2 adapter type {self.type_name!r} cannot list its keys")

    def _recover(self) -> Iterable[tuple[ObjectKey, int]]:
        """What is already stored when the adapter starts (for accounting); default nothing."""
        return ()

    def _status(self) -> dict[str, Any]:
        """Adapter-specific status fields."""
        return {}

    def _health(self) -> dict[str, Any]:
        """Adapter-specific fields of :meth:`health` (may override ``is_healthy``); default none."""
        return {}

    def _close(self) -> None:
        """Release the adapter's resources."""

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``[fn(x) for x in items]``: how one batch runs its per-object calls (``fn`` never raises).

        The default runs them one after another on the pool thread that took the batch.
        An adapter whose backend gains from concurrent requests (object stores: S3)
        overrides this to fan them out on threads of its own; results stay in order.
        """
        return [fn(x) for x in items]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Rebuild accounting from what is already stored."""
        recovered = list(self._recover())
        if recovered:
            self._account_stored([k for k, _ in recovered], [s for _, s in recovered], notify=True)
            logger.info("L2 %s #%d: recovered %d objects", self.type_name, self.index, len(recovered))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._close()

    def register_listener(self, listener: L2Listener) -> None:
        self._listeners.append(listener)

    # -- operations (futures) ------------------------------------------------------------

    def store(self, keys: Sequence[ObjectKey], objs: Sequence[Any]) -> Future[list[bool]]:
        """Store ``objs[i]`` (uint8 tensors or buffers) under ``keys[i]``; per-key success."""
        return self._pool.submit(self._store_all, list(keys), list(objs))

    def lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Which keys are stored; those found stay pinned against delete until :meth:`unlock`."""
        return self._pool.submit(self._lookup_all, list(keys))

    def unlock(self, keys: Iterable[ObjectKey]) -> None:
        """Release one lookup lock on each key (never fails)."""
        with self._lock:
            for k in keys:
                n = self._locks.get(k, 0)
                if n > 1:
                    self._locks[k] = n - 1
                elif n == 1:
                    del self._locks[k]

    def load(self, keys: Sequence[ObjectKey], bufs: Sequence[Any]) -> Future[list[bool]]:
        """Read each key into the caller's buffer ``bufs[i]``; per-key success."""
        return self._pool.submit(self._load_all, list(keys), list(bufs))

    def delete(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Delete keys, skipping locked ones; per key: True if it is gone now."""
        return self._pool.submit(self._delete_all, list(keys))

    def delete_report(self, keys: Sequence[ObjectKey]) -> Future[DeleteReport]:
        """As :meth:`delete`, reporting which keys were deleted, absent, locked or failed."""
        return self._pool.submit(self._delete_keys, list(keys))

    def list_keys(self, model_name: str | None = None, page_size: int = 500,
                  page_token: str | None = None) -> KeyListPage:
        """One page of stored keys (blocking; run it off the event loop). ValueError: malformed token."""
        items, cursor = self._list(model_name, page_token, page_size)
        return KeyListPage([KeyEntry(k.to_encoded(), size) for k, size in items], cursor)

    # -- accounting and status -------------------------------------------------------------

    def usage(self) -> AdapterUsage:
        with self._lock:
            return AdapterUsage(self._total, self.max_capacity_bytes, dict(self._bytes_by_salt))

    def usage_by_salt(self) -> dict[str, int]:
        with self._lock:
            return dict(self._bytes_by_salt)

    def is_key_evictable(self, key: ObjectKey) -> bool:
        with self._lock:
            return key not in self._locks

    @property
    def reconfigurable(self) -> bool:
        """Whether this adapter implements :class:`Reconfigurable`."""
        return isinstance(self, Reconfigurable)

    def health(self) -> dict[str, Any]:
        """A short health summary for ``GET /l2/adapters`` (cheap, no I/O): ``is_healthy`` and what
        :meth:`_health` adds (an S3 adapter: its circuit breaker, failures by reason, latency)."""
        return {"is_healthy": not self._closed, **self._health()}

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            doc = {
                "type_name": self.type_name,
                "index": self.index,
                "is_healthy": not self._closed,
                "stored_object_count": len(self._sizes),
                "locked_key_count": len(self._locks),
                "current_size_bytes": self._total,
                "max_capacity_bytes": self.max_capacity_bytes,
                "failures": dict(self.failures),
                "skipped_full": self.skipped_full,
            }
        doc.update(self._status())
        return doc

    # -- internals ---------------------------------------------------------------------

    def _notify(self, method: str, *args: Any) -> None:
        for listener in list(self._listeners):
            try:
                getattr(listener, method)(self, *args)
            except Exception:
                logger.exception("L2 listener %r failed in %s", listener, method)

    def _account_stored(self, keys: list[ObjectKey], sizes: list[int], *, notify: bool) -> None:
        with self._lock:
            for k, size in zip(keys, sizes):
                old = self._sizes.get(k)
                if old is not None:
                    self._adjust(k.cache_salt, -old)
                self._sizes[k] = size
                self._adjust(k.cache_salt, size)
        if notify and keys:
            self._notify("on_l2_keys_stored", keys, sizes)

    def _account_deleted(self, keys: list[ObjectKey], *, removed: Sequence[ObjectKey] = ()) -> None:
        """Drop ``keys`` from the books; listeners hear of those that were accounted and of
        ``removed`` (objects known to be deleted now, accounted or not: another server's files)."""
        gone = []
        with self._lock:
            for k in keys:
                size = self._sizes.pop(k, None)
                if size is not None:
                    self._adjust(k.cache_salt, -size)
                    gone.append(k)
        told = list(dict.fromkeys([*removed, *gone])) if removed else gone
        if told:
            self._notify("on_l2_keys_deleted", told)

    def _skipped_full(self, exc: L2Full) -> None:
        with self._lock:
            self.skipped_full += 1
            now = time.monotonic()
            log = now - self._full_logged_at >= 60.0
            if log:
                self._full_logged_at = now
        if log:
            logger.warning("L2 %s #%d is full (%s): stores are skipped (%d so far)", self.type_name, self.index,
                           exc, self.skipped_full)

    def _failed(self, op: str) -> None:
        self.failures[op] += 1
        metrics.L2_FAILURES.labels(self.l2_name, op).inc()

    def _adjust(self, salt: str, delta: int) -> None:
        left = self._bytes_by_salt.get(salt, 0) + delta
        if left < 0:
            logger.warning("L2 %s #%d: usage of salt %r went negative; clamped to 0", self.type_name,
                           self.index, salt)
            left = 0
        if left:
            self._bytes_by_salt[salt] = left
        else:
            self._bytes_by_salt.pop(salt, None)
        self._total = max(0, self._total + delta)
        metrics.L2_USAGE_BYTES.labels(self.l2_name).set(self._total)

    def _store_all(self, keys: list[ObjectKey], objs: list[Any]) -> list[bool]:
        def put(pair: tuple[ObjectKey, Any]) -> int | None:
            try:
                data = as_bytes_view(pair[1])
                self._put(pair[0], data)
            except L2Full as exc:
                self._skipped_full(exc)
                return None
            except Exception as exc:
                self._failed("store")
                logger.warning("L2 %s #%d: store failed: %s", self.type_name, self.index, exc)
                return None
            return data.nbytes

        started = time.perf_counter()
        done = self._map(put, list(zip(keys, objs)))
        elapsed = time.perf_counter() - started
        stored = [k for k, size in zip(keys, done) if size is not None]
        sizes = [size for size in done if size is not None]
        self._account_stored(stored, sizes, notify=True)
        if stored:
            metrics.L2_STORED.labels(self.l2_name).inc(len(stored))
            if elapsed > 0:
                metrics.L2_STORE_GBPS.labels(self.l2_name).observe(sum(sizes) / elapsed / 1e9)
        return [size is not None for size in done]

    def _lookup_all(self, keys: list[ObjectKey]) -> list[bool]:
        def size_of(k: ObjectKey) -> bool:
            try:
                return self._size(k) is not None
            except Exception as exc:
                self._failed("lookup")
                logger.warning("L2 %s #%d: lookup failed: %s", self.type_name, self.index, exc)
                return False

        found = self._map(size_of, keys)
        with self._lock:
            for k, hit in zip(keys, found):
                if hit:
                    self._locks[k] = self._locks.get(k, 0) + 1
        hits = [k for k, hit in zip(keys, found) if hit]
        if hits:
            self._notify("on_l2_keys_accessed", hits)
        return found

    def _load_all(self, keys: list[ObjectKey], bufs: list[Any]) -> list[bool]:
        in_flight = metrics.L2_LOADS_IN_FLIGHT.labels(self.l2_name)
        in_flight.inc(len(keys))

        def get(pair: tuple[ObjectKey, Any]) -> int | None:
            try:
                view = as_bytes_view(pair[1])
                return view.nbytes if self._get(pair[0], view) else None
            except Exception as exc:
                self._failed("load")
                logger.warning("L2 %s #%d: load failed: %s", self.type_name, self.index, exc)
                return None
            finally:
                in_flight.dec()

        started = time.perf_counter()
        done = self._map(get, list(zip(keys, bufs)))
        elapsed = time.perf_counter() - started
        ok = [size is not None for size in done]
        loaded_bytes = sum(size for size in done if size is not None)
        if any(ok):
            metrics.L2_LOADED.labels(self.l2_name).inc(sum(ok))
            if elapsed > 0 and loaded_bytes:
                metrics.L2_LOAD_GBPS.labels(self.l2_name).observe(loaded_bytes / elapsed / 1e9)
        return ok

    def _delete_all(self, keys: list[ObjectKey]) -> list[bool]:
        report = self._delete_keys(keys)
        done = set(report.deleted) | set(report.absent)
        locked = set(report.locked)
        return [k in done and k not in locked for k in keys]

    def _delete_keys(self, keys: list[ObjectKey]) -> DeleteReport:
        with self._lock:
            todo = [k for k in keys if k not in self._locks]
            locked = set(keys) - set(todo)

        def remove(k: ObjectKey) -> int | str | None:
            try:
                return self._remove(k)
            except Exception as exc:
                self._failed("delete")
                logger.warning("L2 %s #%d: delete failed: %s", self.type_name, self.index, exc)
                return f"{type(exc).__name__}: {exc}"

        unique = list(dict.fromkeys(todo))  # a repeated key: one removal, reported once
        deleted: list[ObjectKey] = []
        absent: list[ObjectKey] = []
        failed: list[tuple[ObjectKey, str]] = []
        for k, outcome in zip(unique, self._map(remove, unique)):
            if isinstance(outcome, str):
                failed.append((k, outcome))
            else:
                (absent if outcome is None else deleted).append(k)
        # An absent key may still be accounted (removed behind our back): drop it from the books too.
        self._account_deleted(deleted + absent, removed=deleted)
        if deleted:
            metrics.L2_DELETED.labels(self.l2_name).inc(len(deleted))
        return DeleteReport(deleted, absent, [k for k in dict.fromkeys(keys) if k in locked], failed)
