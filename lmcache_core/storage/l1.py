"""L1 object store: object states with TTL locks over one arena.

An object moves through these states (``L1Manager`` docstring has the
operation table)::

    absent --reserve_write--> WRITING --finish_write--> READY <--reserve_read/finish_read--> READY+read-locked(n)
                                   \\--finish_write_and_reserve_read--------------------------^

Every lock is a TTL lock: a count plus an expiry. Locking increments the count
and pushes the expiry out; a lock whose expiry has passed counts as unlocked
whatever its count says (and the next lock restarts the count at ``n``), so a
client that dies holding locks cannot pin objects forever. A WRITING object
holds the write lock (``write_ttl_seconds``); a READY object may hold read
locks (``read_ttl_seconds``). The two never coexist, so one count and one
expiry per locked object suffice.

Temporary objects (prefetched from L2 for one reader) are freed when their
read count drops to zero and are never reported as write-finished, so they are
never stored back to L2.

Per-object state is one dict entry ``key -> id`` plus three compact arrays
indexed by the id (offset in ``align_bytes`` units and size as 32-bit words, a
flag byte): about 80 bytes per object on CPython 3.11, key not included
(``python -m lmcache_core.bench.l1`` measures it). Lock counts and expiries
are kept only for objects that hold a lock, in two small dicts, since at any
moment only the objects of in-flight requests are locked.

Forced removal (``delete(force=True)``, ``clear(force=True)``: ``POST /clear-cache``)
removes a locked object from view at once (lookups miss it, listeners see it
deleted, a new STORE of its key is skipped) but *retires* it rather than freeing
it: whoever holds its lock (a RETRIEVE copying out, the L2 write-behind reading
it, a STORE or prefetch writing it) keeps valid memory until it lets go
(``finish_read``, ``finish_write``, ``abandon_write``) or the lock expires; only
then is the memory reused. LMCache's force clear frees locked memory outright,
so a copy in flight can read or write memory a new object already owns; here a
clear can never make a retrieved byte differ from the stored one.

Concurrency: one mutex guards all state; every operation is atomic over its
key list and holds it only for bookkeeping. Tensor views are created after the
mutex is released (a live reservation or read lock keeps the memory from being
reused, forced removal included). Listeners run under the mutex, after the
state change, and must not block or call back into the manager.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from enum import IntEnum
from itertools import pairwise
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from lmcache_core.storage import metrics
from lmcache_core.storage.arena import Arena, SlabAllocator
from lmcache_core.storage.prefault import Prefaulter

if TYPE_CHECKING:
    from lmcache_core.keys import ObjectKey

__all__ = [
    "MAX_READ_LOCKS",
    "KeyViews",
    "L1ClosedError",
    "L1Listener",
    "L1Manager",
    "L1Result",
]

log = logging.getLogger(__name__)

MAX_READ_LOCKS = 128
"""Upper bound of ``n`` in one ``reserve_read`` / ``finish_write_and_reserve_read``."""

_WRITING = 1  # reserved for writing, not yet admitted; invisible to readers
_TEMPORARY = 2  # freed after its last reader; never reported as write-finished
_RETIRED = 4  # force-removed while locked: invisible, freed when its lock is dropped or expires


class L1Result(IntEnum):
    """Per-key outcome of an L1 operation."""

    SUCCESS = 0
    KEY_NOT_EXIST = 1
    KEY_NOT_READABLE = 2
    KEY_NOT_WRITABLE = 3
    KEY_IN_WRONG_STATE = 4
    KEY_IS_LOCKED = 5
    OUT_OF_MEMORY = 6


class KeyViews(NamedTuple):
    """Results aligned with the request's keys, and a view for each SUCCESS (``None`` elsewhere)."""

    results: list[L1Result]
    views: list[torch.Tensor | None]


class L1ClosedError(RuntimeError):
    """An operation was called on a closed :class:`L1Manager`."""


class L1Listener:
    """Observer of L1 key events; override what you need (the base methods do nothing).

    Called under the L1 mutex with the affected keys in request order, after
    the state change: implementations must be quick, non-blocking and must not
    call back into the manager. An exception is logged and swallowed.
    """

    def on_keys_created(self, keys: list[ObjectKey]) -> None:
        """Keys that now exist: write-reserved, write-finished (permanent), or prefetch-admitted."""

    def on_keys_write_finished(self, keys: list[ObjectKey]) -> None:
        """Permanent keys whose write completed: candidates for the L2 store."""

    def on_keys_accessed(self, keys: list[ObjectKey]) -> None:
        """Keys touched or read-locked: recency for eviction."""

    def on_keys_deleted(self, keys: list[ObjectKey]) -> None:
        """Keys that left L1: delete, clear, temporary freed, eviction, abandoned write taken over."""


_R = L1Result


class L1Manager:
    """The L1 tier: keys to arena objects, with write/read TTL locks, listeners and status.

    Operations (each atomic over its key list, results aligned with the keys):

    ======================================  =====================================================
    ``reserve_write(keys, nbytes, temp)``    absent -> WRITING; resident or live-reserved keys get
                                             KEY_NOT_WRITABLE (STORE dedup); an expired reservation
                                             is taken over; no room -> OUT_OF_MEMORY (see below)
    ``finish_write(keys)``                   WRITING -> READY
    ``finish_write_and_reserve_read(k, n)``  WRITING -> READY with ``n`` read locks (prefetch hand-off)
    ``reserve_read(keys, n)``                READY -> ``n`` more read locks; absent/WRITING: KEY_NOT_EXIST
    ``read(keys)``                           views of read-locked keys; else KEY_NOT_READABLE
    ``finish_read(keys, n)``                 drop ``n`` read locks; not locked: KEY_IN_WRONG_STATE
    ``delete(keys, force)``                  drop unlocked keys; locked: KEY_IS_LOCKED, or retired if forced
    ``abandon_write(keys)``                  WRITING -> absent (a writer giving up its own reservation)
    ``touch(keys)``                          mark keys used (listeners only)
    ======================================  =====================================================

    Out of memory is prefix-partial: the new keys of a ``reserve_write`` are
    allocated in request order and the first one that does not fit, and every
    new key after it, gets OUT_OF_MEMORY with nothing reserved. Keeping the
    prefix is what a KV cache wants: a chunk is only useful with all chunks
    before it.

    Takeover: a key whose write reservation expired (its writer died or
    stalled past ``write_ttl_seconds``) may be reserved again by anyone; the
    new writer gets the same memory if the aligned size is unchanged. There is
    no writer identity, so a late ``finish_write`` from the old writer would
    admit the key; the write TTL is long (600 s) to make that a crash-only case.

    ``arena`` is either an :class:`Arena` (ownership passes to the manager) or
    a size in bytes (a new anonymous or ``shm_name``-backed arena is made).
    """

    def __init__(
        self,
        arena: Arena | int,
        *,
        align_bytes: int = 4096,
        write_ttl_seconds: float = 600.0,
        read_ttl_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        slab_bytes: int | None = None,
        shm_name: str | None = None,
        pin: bool | None = None,
        enable_metrics: bool = True,
        prefault_ahead_bytes: int = 0,
    ) -> None:
        """Build the tier; see the class docstring for ``arena``.

        ``prefault_ahead_bytes > 0`` keeps that much memory past the allocator's high-water
        mark populated in the background (:mod:`lmcache_core.storage.prefault`)."""
        if write_ttl_seconds <= 0 or read_ttl_seconds <= 0:
            raise ValueError("TTLs must be positive")
        self._arena = arena if isinstance(arena, Arena) else Arena(int(arena), shm_name=shm_name, pin=pin)
        self._prefault: Prefaulter | None = None
        alloc_kw: dict[str, Any] = {"on_grow": self._on_grow}
        if slab_bytes is not None:
            alloc_kw["slab_bytes"] = slab_bytes
        self._alloc = SlabAllocator(self._arena.size, align_bytes, **alloc_kw)
        if prefault_ahead_bytes > 0 and self._arena.mapping is not None:
            alloc = self._alloc
            self._prefault = Prefaulter(self._arena.base_ptr, self._arena.size, lambda: alloc.high_water,
                                        prefault_ahead_bytes)
            self._prefault.start()
        self.align_bytes = align_bytes
        self.write_ttl_seconds = float(write_ttl_seconds)
        self.read_ttl_seconds = float(read_ttl_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[L1Listener] = []
        self._metrics = enable_metrics
        self._closed = False

        # key -> object id; per-id state in parallel arrays (ids are recycled).
        # Offsets are stored in align units so 32 bits cover 16 TiB at 4 KiB alignment.
        slots = self._arena.size // align_bytes
        self._index: dict[Any, int] = {}
        self._slot = array("I" if slots < 1 << 32 else "Q")
        self._nbytes = array("I")
        self._flags = bytearray()
        self._free_ids: list[int] = []

        # Lock state of the ids that hold a lock (write lock while WRITING, read
        # locks when READY). An entry exists iff the count is > 0; an entry past
        # its expiry is a dead lock and may be dropped at any time.
        self._lock_count: dict[int, int] = {}
        self._lock_expiry: dict[int, float] = {}
        self._temporary_count = 0
        self._salt_bytes: dict[str, int] = {}
        # Retired objects (force-removed while locked): id -> key. They stay in the index, so a key
        # never has two objects, but every operation treats them as absent except their holders'.
        self._retired: dict[int, Any] = {}
        if enable_metrics:
            metrics.bind_l1(self)

    def _on_grow(self, end: int) -> None:
        self._arena.ensure_pinned(end)
        if self._prefault is not None:
            self._prefault.poke()

    # -- listeners ----------------------------------------------------------------------

    def register_listener(self, listener: L1Listener) -> None:
        """Add a listener; it sees events from now on."""
        with self._lock:
            self._listeners.append(listener)

    def _emit(self, method: str, keys: list[Any]) -> None:
        if not keys:
            return
        for listener in self._listeners:
            try:
                getattr(listener, method)(keys)
            except Exception:
                log.exception("L1 listener %r failed in %s", listener, method)

    # -- internals (mutex held) ---------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise L1ClosedError("L1Manager is closed")

    def _offset(self, oid: int) -> int:
        return self._slot[oid] * self.align_bytes

    def _release(self, oid: int, key: Any) -> Any:
        """Free object ``oid`` (stored under ``key``) and forget it; returns ``key``."""
        del self._index[key]
        self._alloc.free_offset(self._slot[oid] * self.align_bytes)
        flags = self._flags[oid]
        if flags & _TEMPORARY:
            self._temporary_count -= 1
        if flags & _RETIRED:
            del self._retired[oid]
        salt = key.cache_salt
        left = self._salt_bytes[salt] - self._alloc.aligned_size(self._nbytes[oid])
        if left:
            self._salt_bytes[salt] = left
        else:
            del self._salt_bytes[salt]
        self._unlock_all(oid)
        self._flags[oid] = 0
        self._free_ids.append(oid)
        return key

    def _locked(self, oid: int, now: float) -> bool:
        """Whether ``oid`` holds a live (unexpired) lock."""
        exp = self._lock_expiry.get(oid)
        return exp is not None and exp > now

    def _remove(self, oid: int, key: Any, now: float) -> None:
        """Take ``key`` out of view: freed now if unlocked, else retired until its holders let go."""
        if self._locked(oid, now):
            self._flags[oid] |= _RETIRED
            self._retired[oid] = key
        else:
            self._release(oid, key)

    def _reclaim(self, now: float) -> None:
        """Free the retired objects whose lock has expired (their holders died or stalled)."""
        for oid, key in [(o, k) for o, k in self._retired.items() if not self._locked(o, now)]:
            self._release(oid, key)

    def _set_lock(self, oid: int, count: int, expiry: float) -> None:
        self._lock_count[oid] = count
        self._lock_expiry[oid] = expiry

    def _unlock_all(self, oid: int) -> None:
        self._lock_count.pop(oid, None)
        self._lock_expiry.pop(oid, None)

    def _views(self, locs: list[tuple[int, int] | None]) -> list[torch.Tensor | None]:
        arena = self._arena.tensor
        return [None if loc is None else arena[loc[0] : loc[0] + loc[1]] for loc in locs]

    # -- write path ---------------------------------------------------------------------

    def reserve_write(self, keys: Sequence[ObjectKey], nbytes_per_object: int, temporary: bool = False) -> KeyViews:
        """Reserve new keys for writing and return writable views (see class doc for OOM and takeover)."""
        if not 0 < nbytes_per_object < 1 << 32:
            raise ValueError(f"nbytes_per_object must be in [1, 2**32), got {nbytes_per_object}")
        n = len(keys)
        results: list[L1Result] = [_R.KEY_NOT_WRITABLE] * n
        locs: list[tuple[int, int] | None] = [None] * n
        flags = _WRITING | (_TEMPORARY if temporary else 0)
        aligned = self._alloc.aligned_size(nbytes_per_object)
        with self._lock:
            self._check_open()
            now = self._clock()
            expiry = now + self.write_ttl_seconds
            if self._retired:
                self._reclaim(now)
            index = self._index
            pending: dict[Any, int] = {}  # new keys of this call -> position
            taken_over: list[Any] = []
            dropped: list[Any] = []
            for pos, key in enumerate(keys):
                oid = index.get(key)
                if oid is None:
                    if key not in pending:
                        pending[key] = pos
                    continue
                if self._flags[oid] & _RETIRED:
                    continue  # still held by a copy from before a forced removal: KEY_NOT_WRITABLE
                if not (self._flags[oid] & _WRITING) or self._locked(oid, now):
                    continue  # resident, or a live reservation: KEY_NOT_WRITABLE
                # Expired reservation: take it over.
                if self._alloc.aligned_size(self._nbytes[oid]) == aligned:
                    self._retake(oid, nbytes_per_object, flags, expiry)
                    results[pos] = _R.SUCCESS
                    locs[pos] = (self._offset(oid), nbytes_per_object)
                    taken_over.append(key)
                else:
                    dropped.append(self._release(oid, key))
                    pending[key] = pos
            allocs = self._alloc.allocate_offsets(nbytes_per_object, len(pending), partial=True) if pending else []
            positions = list(pending.values())
            # The hot loop of STORE: per-id state written inline, with locals.
            salt_bytes, free_ids, align = self._salt_bytes, self._free_ids, self.align_bytes
            slot_of, nbytes_of, flags_of = self._slot, self._nbytes, self._flags
            lock_count, lock_expiry = self._lock_count, self._lock_expiry
            for pos, offset in zip(positions, allocs):
                key = keys[pos]
                if free_ids:
                    oid = free_ids.pop()
                    slot_of[oid] = offset // align
                    nbytes_of[oid] = nbytes_per_object
                    flags_of[oid] = flags
                else:
                    oid = len(flags_of)
                    slot_of.append(offset // align)
                    nbytes_of.append(nbytes_per_object)
                    flags_of.append(flags)
                index[key] = oid
                lock_count[oid] = 1
                lock_expiry[oid] = expiry
                salt = key.cache_salt
                salt_bytes[salt] = salt_bytes.get(salt, 0) + aligned
                results[pos] = _R.SUCCESS
                locs[pos] = (offset, nbytes_per_object)
            if temporary:
                self._temporary_count += len(allocs)
            oom = len(positions) - len(allocs)
            for pos in positions[len(allocs) :]:
                results[pos] = _R.OUT_OF_MEMORY
            if taken_over:
                # Reserved in request order, whether fresh or taken over.
                created = [keys[p] for p in range(n) if results[p] is _R.SUCCESS]
            else:
                created = [keys[p] for p in positions[: len(allocs)]]
            self._emit("on_keys_deleted", dropped)
            self._emit("on_keys_created", created)
        if oom and self._metrics:
            metrics.record_allocation_failure(oom, temporary=temporary)
        return KeyViews(results, self._views(locs))

    def _retake(self, oid: int, nbytes: int, flags: int, expiry: float) -> None:
        was_temp = self._flags[oid] & _TEMPORARY
        self._temporary_count += bool(flags & _TEMPORARY) - bool(was_temp)
        self._nbytes[oid] = nbytes
        self._flags[oid] = flags
        self._set_lock(oid, 1, expiry)

    def finish_write(self, keys: Sequence[ObjectKey], *, from_l2: bool = False) -> list[L1Result]:
        """Admit written keys (WRITING -> READY); KEY_NOT_EXIST if absent, KEY_IN_WRONG_STATE if not WRITING.

        An expired reservation that was not taken over is still admitted: the
        writer did finish. Temporary keys are admitted silently. ``from_l2``
        (a warm prefetch) admits permanent keys without offering them back to
        L2: listeners see ``on_keys_created`` only.
        """
        results: list[L1Result] = []
        admitted: list[Any] = []
        with self._lock:
            self._check_open()
            finished: list[Any] = []
            index, flags_of = self._index, self._flags
            lock_count, lock_expiry = self._lock_count, self._lock_expiry
            for key in keys:
                oid = index.get(key)
                if oid is None:
                    results.append(_R.KEY_NOT_EXIST)
                    continue
                f = flags_of[oid]
                if f & _RETIRED and f & _WRITING:  # force-removed while being written: the write is dropped
                    self._release(oid, key)
                    results.append(_R.KEY_NOT_EXIST)
                    continue
                if not f & _WRITING:
                    results.append(_R.KEY_IN_WRONG_STATE)
                    continue
                flags_of[oid] = f & ~_WRITING
                lock_count.pop(oid, None)
                lock_expiry.pop(oid, None)
                results.append(_R.SUCCESS)
                admitted.append(key)
                if not f & _TEMPORARY:
                    finished.append(key)
            self._emit("on_keys_created", finished)
            if not from_l2:
                self._emit("on_keys_write_finished", finished)
        if admitted and self._metrics:
            metrics.record_write(admitted)
        return results

    def finish_write_and_reserve_read(self, keys: Sequence[ObjectKey], n: int = 1) -> list[L1Result]:
        """Admit WRITING keys and read-lock them ``n`` times in one step (no eviction window).

        Used by prefetch: listeners see ``on_keys_created`` (so eviction tracks
        the key) but never ``on_keys_write_finished`` (it came from L2).
        """
        _check_n(n)
        results: list[L1Result] = []
        admitted: list[Any] = []
        with self._lock:
            self._check_open()
            expiry = self._clock() + self.read_ttl_seconds
            for key in keys:
                oid = self._index.get(key)
                if oid is None:
                    results.append(_R.KEY_NOT_EXIST)
                    continue
                f = self._flags[oid]
                if f & _RETIRED and f & _WRITING:  # force-removed while being loaded: dropped
                    self._release(oid, key)
                    results.append(_R.KEY_NOT_EXIST)
                    continue
                if not f & _WRITING:
                    results.append(_R.KEY_IN_WRONG_STATE)
                    continue
                self._flags[oid] = f & ~_WRITING
                self._set_lock(oid, n, expiry)
                results.append(_R.SUCCESS)
                admitted.append(key)
            self._emit("on_keys_created", admitted)
        if admitted and self._metrics:
            metrics.record_write(admitted)
        return results

    # -- read path ----------------------------------------------------------------------

    def reserve_read(self, keys: Sequence[ObjectKey], n: int = 1) -> list[L1Result]:
        """Read-lock READY keys ``n`` times (TTL lock); KEY_NOT_EXIST for absent or still-written keys."""
        _check_n(n)
        results: list[L1Result] = []
        accessed: list[Any] = []
        with self._lock:
            self._check_open()
            now = self._clock()
            expiry = now + self.read_ttl_seconds
            count, exp = self._lock_count, self._lock_expiry
            for key in keys:
                oid = self._index.get(key)
                if oid is None or self._flags[oid] & (_WRITING | _RETIRED):
                    results.append(_R.KEY_NOT_EXIST)
                    continue
                # An expired lock restarts its count: stale holders are forgotten.
                old = exp.get(oid)
                count[oid] = count[oid] + n if old is not None and old > now else n
                exp[oid] = expiry
                results.append(_R.SUCCESS)
                accessed.append(key)
            self._emit("on_keys_accessed", accessed)
        return results

    def read(self, keys: Sequence[ObjectKey]) -> KeyViews:
        """Views of read-locked keys; KEY_NOT_EXIST if absent, KEY_NOT_READABLE if not (or no longer) read-locked."""
        results: list[L1Result] = []
        locs: list[tuple[int, int] | None] = []
        got: list[Any] = []
        with self._lock:
            self._check_open()
            now = self._clock()
            for key in keys:
                oid = self._index.get(key)
                if oid is None:
                    results.append(_R.KEY_NOT_EXIST)
                    locs.append(None)
                elif self._flags[oid] & _WRITING or not self._locked(oid, now):
                    results.append(_R.KEY_NOT_READABLE)
                    locs.append(None)
                else:
                    results.append(_R.SUCCESS)
                    locs.append((self._offset(oid), self._nbytes[oid]))
                    got.append(key)
        if got and self._metrics:
            metrics.record_read(got)
        return KeyViews(results, self._views(locs))

    def finish_read(self, keys: Sequence[ObjectKey], n: int = 1) -> list[L1Result]:
        """Drop ``n`` read locks per key; a temporary object whose count reaches 0 is freed.

        KEY_IN_WRONG_STATE if the key holds no live read lock (never locked,
        still being written, or its read TTL expired). A temporary object with
        no live read lock is freed then too: whoever read it is gone or too late.
        """
        _check_n(n)
        results: list[L1Result] = []
        freed: list[Any] = []
        with self._lock:
            self._check_open()
            now = self._clock()
            count = self._lock_count
            for key in keys:
                oid = self._index.get(key)
                if oid is None:
                    results.append(_R.KEY_NOT_EXIST)
                    continue
                f = self._flags[oid]
                if f & _WRITING:
                    results.append(_R.KEY_IN_WRONG_STATE)
                    continue
                if self._locked(oid, now):
                    left = count[oid] - n
                    results.append(_R.SUCCESS)
                else:
                    left = 0
                    results.append(_R.KEY_IN_WRONG_STATE)
                if left > 0:
                    count[oid] = left
                    continue
                self._unlock_all(oid)
                if f & _RETIRED:
                    self._release(oid, key)  # its last holder is done; listeners heard of it at removal
                elif f & _TEMPORARY:
                    freed.append(self._release(oid, key))
            self._emit("on_keys_deleted", freed)
        return results

    # -- removal ------------------------------------------------------------------------

    def delete(self, keys: Sequence[ObjectKey], force: bool = False, *, evicted: bool = False) -> list[L1Result]:
        """Remove keys; KEY_IS_LOCKED for a live read or write lock unless ``force``.

        A forced delete removes locked keys from view too, but retires their
        memory until the holders let go (module docstring): administration
        (``clear-cache``) may use it while copies are in flight. A writer giving
        up its own reservation uses :meth:`abandon_write`. ``evicted`` marks the
        call as an eviction (counted in metrics).
        """
        results: list[L1Result] = []
        deleted: list[Any] = []
        with self._lock:
            self._check_open()
            now = self._clock()
            for key in keys:
                oid = self._index.get(key)
                if oid is None or self._flags[oid] & _RETIRED:
                    results.append(_R.KEY_NOT_EXIST)
                elif not force and self._locked(oid, now):
                    results.append(_R.KEY_IS_LOCKED)
                else:
                    self._remove(oid, key, now)
                    deleted.append(key)
                    results.append(_R.SUCCESS)
            self._emit("on_keys_deleted", deleted)
        if evicted and deleted and self._metrics:
            metrics.record_evicted(deleted)
        return results

    def abandon_write(self, keys: Sequence[ObjectKey]) -> list[L1Result]:
        """Give up write reservations (the writer's copy failed): WRITING keys are freed at once.

        Only the writer may call this (it is the one holder of a WRITING object's lock), so the
        memory is reused safely even if a forced removal retired the object meanwhile.
        KEY_NOT_EXIST for absent keys, KEY_IN_WRONG_STATE for keys not being written.
        """
        results: list[L1Result] = []
        dropped: list[Any] = []
        with self._lock:
            self._check_open()
            for key in keys:
                oid = self._index.get(key)
                if oid is None:
                    results.append(_R.KEY_NOT_EXIST)
                    continue
                f = self._flags[oid]
                if not f & _WRITING:
                    results.append(_R.KEY_IN_WRONG_STATE)
                    continue
                self._release(oid, key)
                if not f & _RETIRED:  # a retired key was reported deleted when it was removed
                    dropped.append(key)
                results.append(_R.SUCCESS)
            self._emit("on_keys_deleted", dropped)
        return results

    def clear(self, force: bool = False) -> int:
        """Remove every object (``force``: locked ones are retired, see the module docstring) or every
        unlocked one; returns how many were removed."""
        with self._lock:
            self._check_open()
            now = self._clock()
            retired = _RETIRED
            victims = [(oid, key) for key, oid in self._index.items()
                       if not self._flags[oid] & retired and (force or not self._locked(oid, now))]
            for oid, key in victims:
                self._remove(oid, key, now)
            deleted = [key for _, key in victims]
            self._emit("on_keys_deleted", deleted)
        return len(deleted)

    # -- queries ------------------------------------------------------------------------

    def touch(self, keys: Sequence[ObjectKey]) -> list[L1Result]:
        """Report present keys as accessed (eviction recency); KEY_NOT_EXIST for absent ones."""
        results: list[L1Result] = []
        accessed: list[Any] = []
        with self._lock:
            self._check_open()
            for key in keys:
                oid = self._index.get(key)
                if oid is not None and not self._flags[oid] & _RETIRED:
                    results.append(_R.SUCCESS)
                    accessed.append(key)
                else:
                    results.append(_R.KEY_NOT_EXIST)
            self._emit("on_keys_accessed", accessed)
        return results

    def is_key_evictable(self, key: ObjectKey) -> bool:
        """True if ``key`` is present and holds no live lock (an expired reservation is evictable).

        Lock-free and therefore advisory: ``delete`` re-checks under the mutex.
        """
        oid = self._index.get(key)
        if oid is None or self._flags[oid] & _RETIRED:
            return False
        exp = self._lock_expiry.get(oid)
        return exp is None or exp <= self._clock()

    def contains(self, key: ObjectKey) -> bool:
        """Whether ``key`` is present (in any state but retired)."""
        oid = self._index.get(key)
        return oid is not None and not self._flags[oid] & _RETIRED

    def __contains__(self, key: object) -> bool:
        return self.contains(key)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._index) - len(self._retired)

    def get_memory_usage(self) -> tuple[int, int]:
        """``(used, total)`` bytes; used is the aligned size of every present object."""
        return self._alloc.usage()

    def allocation_failures(self) -> int:
        """Allocations refused so far for lack of a free slot (the eviction controller's pressure signal)."""
        return self._alloc.failed_allocations

    def usage_by_salt(self) -> dict[str, int]:
        """Bytes (aligned) held per ``cache_salt``; salts with nothing present are absent."""
        with self._lock:
            return dict(self._salt_bytes)

    @property
    def arena(self) -> Arena:
        """The arena under this tier (for the shared-memory transfer path)."""
        return self._arena

    @property
    def allocator(self) -> SlabAllocator:
        """The slab allocator (diagnostics)."""
        return self._alloc

    def _prune_locks(self, now: float) -> tuple[int, int]:
        """Free retired objects and forget dead (expired) locks; returns (write_locked, read_locked) counts."""
        self._reclaim(now)
        stale = [oid for oid, exp in self._lock_expiry.items() if exp <= now]
        for oid in stale:
            self._unlock_all(oid)
        writing = sum(1 for oid in self._lock_count if self._flags[oid] & _WRITING)
        return writing, len(self._lock_count) - writing

    def report_status(self) -> dict[str, Any]:
        """Status for ``/status`` (reference field names); cost O(objects currently locked)."""
        with self._lock:
            now = self._clock()
            closed = self._closed
            write_locked, read_locked = (0, 0) if closed else self._prune_locks(now)
            used, total = self._alloc.usage()
            status: dict[str, Any] = {
                "is_healthy": not closed,
                "total_object_count": len(self._index) - len(self._retired),
                "retired_object_count": len(self._retired),
                "write_locked_count": write_locked,
                "read_locked_count": read_locked,
                "temporary_count": self._temporary_count,
                "staging_object_count": 0,
                "staging_bytes": 0,
                "memory_used_bytes": used,
                "memory_total_bytes": total,
                "memory_configured_bytes": self._arena.size,
                "memory_usage_ratio": used / total if total else 0.0,
                "write_ttl_seconds": self.write_ttl_seconds,
                "read_ttl_seconds": self.read_ttl_seconds,
                "align_bytes": self.align_bytes,
                "shm_name": self._arena.shm_name,
                "pinned": self._arena.pinned,
                "pinned_bytes": self._arena.pinned_bytes,
            }
        status["allocator"] = self._alloc.stats()
        return status

    def memcheck(self) -> list[str]:
        """Check internal consistency (O(objects)); returns problems, empty when healthy.

        Live objects must not overlap, the allocator's used bytes must equal
        the sum of present objects, per-salt usage must match, and every id in
        the index must point back at its key.
        """
        with self._lock:
            problems = self._alloc.check()
            spans = []
            by_salt: dict[str, int] = {}
            temp = 0
            ids = set(self._index.values())
            if len(ids) != len(self._index):
                problems.append("two keys share an object id")
            if ids & set(self._free_ids):
                problems.append("a live object id is on the free list")
            if not set(self._retired) <= ids or any(not self._flags[o] & _RETIRED for o in self._retired):
                problems.append("retired ids out of step with their flags")
            if not set(self._lock_count) <= ids or set(self._lock_count) != set(self._lock_expiry):
                problems.append("lock state for an id that is not live, or count/expiry out of step")
            for key, oid in self._index.items():
                size = self._alloc.aligned_size(self._nbytes[oid])
                offset = self._offset(oid)
                spans.append((offset, offset + size))
                by_salt[key.cache_salt] = by_salt.get(key.cache_salt, 0) + size
                temp += bool(self._flags[oid] & _TEMPORARY)
            spans.sort()
            for (s0, e0), (s1, _e1) in pairwise(spans):
                if s1 < e0:
                    problems.append(f"objects [{s0},{e0}) and [{s1},...) overlap")
            total = sum(e - s for s, e in spans)
            if total != self._alloc.used:
                problems.append(f"allocator used={self._alloc.used} but objects hold {total}")
            if by_salt != self._salt_bytes:
                problems.append(f"usage_by_salt {self._salt_bytes} != recomputed {by_salt}")
            if temp != self._temporary_count:
                problems.append(f"temporary_count={self._temporary_count} but {temp} temporary objects")
        return problems

    def close(self) -> None:
        """Drop every object and free the arena (no listener calls). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._index.clear()
            self._lock_count.clear()
            self._lock_expiry.clear()
            self._salt_bytes.clear()
            self._retired.clear()
            self._temporary_count = 0
            self._listeners = []
        if self._prefault is not None:
            self._prefault.stop()
        if self._metrics:
            metrics.unbind_l1(self)
        self._arena.close()


def _check_n(n: int) -> None:
    if not 1 <= n <= MAX_READ_LOCKS:
        raise ValueError(f"lock count must be in 1..{MAX_READ_LOCKS}, got {n}")
