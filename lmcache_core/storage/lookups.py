"""LOOKUP's read locks and results, per request.

A LOOKUP read-locks the L1 prefix hit with ``num_kv_readers`` locks per object
(one per worker that will RETRIEVE it) and leaves a result that
QUERY_PREFETCH_STATUS consumes exactly once. The locks are then given back in
exactly one of these ways, and never more than the lookup took:

* RETRIEVE by a worker releases one lock on each object it read;
* FREE_LOOKUP_LOCKS releases what is left on the chunks of its range;
* END_SESSION releases whatever is still held for the request (LMCache leaves
  it to the read TTL, up to 300 s of pinned memory; a finished request will
  not read again, so we give it back at once);
* the read TTL, should all of the above be lost.

:class:`LookupTracker` keeps that accounting: for each request, the remaining
lock count of every object it locked.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager, L1Result


@dataclass
class _Record:
    chunk_keys: list[list[ObjectKey]] = field(default_factory=list)
    remaining: dict[ObjectKey, int] = field(default_factory=dict)
    owner: bytes | None = None  # the connection that sent the LOOKUP


class LookupTracker:
    """Lookup results (exactly once) and the read locks each request still holds."""

    def __init__(self, l1: L1Manager) -> None:
        self.l1 = l1
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._results: dict[str, int] = {}
        self._pending: set[str] = set()  # lookups still loading from L2: QUERY answers None
        self._done = threading.Condition(self._lock)

    def lookup(self, request_id: str, chunk_keys: Sequence[Sequence[ObjectKey]], readers: int,
               owner: bytes | None = None, *, pending: bool = False) -> int:
        """Lock the leading run of fully present chunks ``readers`` times; record and return its length.

        ``chunk_keys[i]`` are all the objects chunk ``i`` needs (every rank,
        every object group); a chunk counts only when all of them are in L1.
        """
        flat = [k for keys in chunk_keys for k in keys]
        results = self.l1.reserve_read(flat, readers) if flat else []
        hits = 0
        pos = 0
        for keys in chunk_keys:
            if all(r == L1Result.SUCCESS for r in results[pos:pos + len(keys)]):
                hits += 1
                pos += len(keys)
            else:
                break
        # Locks taken past the first incomplete chunk are of no use: give them back now.
        extra = [k for k, r in zip(flat[pos:], results[pos:]) if r == L1Result.SUCCESS]
        if extra:
            self.l1.finish_read(extra, readers)
        with self._lock:
            record = self._records.setdefault(request_id, _Record())
            record.owner = owner if owner is not None else record.owner
            for keys in chunk_keys[:hits]:
                for k in keys:
                    record.remaining[k] = record.remaining.get(k, 0) + readers
            if len(record.chunk_keys) < hits:
                record.chunk_keys = [list(keys) for keys in chunk_keys[:hits]]
            if pending:  # the L2 part follows: the result is known when complete() is called
                self._pending.add(request_id)
                self._results.pop(request_id, None)
            else:
                self._pending.discard(request_id)
                self._results[request_id] = hits
                self._done.notify_all()  # a WAIT for a lookup that ran off the loop thread
        return hits

    def complete(self, request_id: str, l1_hits: int, loaded: Sequence[Sequence[ObjectKey]], readers: int) -> int:
        """The L2 part of a pending lookup finished: ``loaded`` chunks (already locked ``readers``
        times in L1) follow the ``l1_hits`` chunks found in L1; the result becomes answerable."""
        with self._lock:
            record = self._records.setdefault(request_id, _Record())
            for keys in loaded:
                for k in keys:
                    record.remaining[k] = record.remaining.get(k, 0) + readers
            record.chunk_keys = record.chunk_keys[:l1_hits] + [list(keys) for keys in loaded]
            hits = l1_hits + len(loaded)
            if not record.remaining:
                self._records.pop(request_id, None)
            self._pending.discard(request_id)
            self._results[request_id] = hits
            self._done.notify_all()
        return hits

    def take_result(self, request_id: str) -> int | None:
        """The hit count of the request's last lookup, once; None while it is loading from L2;
        0 when unknown or already taken."""
        with self._lock:
            if request_id in self._pending:
                return None
            return self._results.pop(request_id, 0)

    def wait_result(self, request_id: str, timeout: float) -> int | None:
        """:meth:`take_result`, waiting up to ``timeout`` seconds for a pending lookup."""
        with self._lock:
            self._done.wait_for(lambda: request_id not in self._pending, timeout=max(0.0, timeout))
            if request_id in self._pending:
                return None
            return self._results.pop(request_id, 0)

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def is_pending(self, request_id: str) -> bool:
        """Whether the request's lookup is still running (L2 load, or hashing off the loop thread)."""
        with self._lock:
            return request_id in self._pending

    def has_result(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._results

    def holds(self, request_id: str, keys: Sequence[ObjectKey]) -> bool:
        """Whether the request's lookup still holds a lock on every key."""
        with self._lock:
            record = self._records.get(request_id)
            return record is not None and all(record.remaining.get(k, 0) > 0 for k in keys)

    def release_one(self, request_id: str, keys: Sequence[ObjectKey]) -> int:
        """Give back one lock on each key the request still holds (a RETRIEVE finished); returns how many."""
        with self._lock:
            record = self._records.get(request_id)
            if record is None:
                return 0
            released = []
            for k in keys:
                n = record.remaining.get(k, 0)
                if n > 0:
                    released.append(k)
                    if n == 1:
                        del record.remaining[k]
                    else:
                        record.remaining[k] = n - 1
            self._drop_if_empty(request_id, record)
        if released:
            self.l1.finish_read(released, 1)
        return len(released)

    def release_chunks(self, request_id: str, first_chunk: int, end_chunk: int) -> int:
        """Give back every lock still held on chunks ``[first_chunk, end_chunk)`` (FREE_LOOKUP_LOCKS)."""
        with self._lock:
            record = self._records.get(request_id)
            if record is None or first_chunk >= end_chunk:
                return 0
            by_count: dict[int, list[ObjectKey]] = {}
            for keys in record.chunk_keys[max(first_chunk, 0):end_chunk]:
                for k in keys:
                    n = record.remaining.pop(k, 0)
                    if n:
                        by_count.setdefault(n, []).append(k)
            self._drop_if_empty(request_id, record)
        for n, keys in by_count.items():
            self.l1.finish_read(keys, n)
        return sum(len(v) for v in by_count.values())

    def release_request(self, request_id: str) -> int:
        """Give back everything the request still holds (END_SESSION); returns the number of objects."""
        with self._lock:
            record = self._records.pop(request_id, None)
        if record is None:
            return 0
        by_count: dict[int, list[ObjectKey]] = {}
        for k, n in record.remaining.items():
            by_count.setdefault(n, []).append(k)
        for n, keys in by_count.items():
            self.l1.finish_read(keys, n)
        return len(record.remaining)

    def release_owner(self, owner: bytes) -> list[str]:
        """Give back everything held by requests whose LOOKUP came from ``owner`` (it died); their ids."""
        with self._lock:
            ids = [rid for rid, rec in self._records.items() if rec.owner == owner]
        for rid in ids:
            self.release_request(rid)
            with self._lock:
                self._results.pop(rid, None)
        return ids

    def _drop_if_empty(self, request_id: str, record: _Record) -> None:
        if not record.remaining:
            self._records.pop(request_id, None)

    def locked_object_count(self) -> int:
        """Objects that some request's lookup still holds (for status and lock-hygiene checks)."""
        with self._lock:
            return sum(len(r.remaining) for r in self._records.values())

    def pending_results(self) -> int:
        """Lookups whose result has not been taken yet (loading or answerable)."""
        with self._lock:
            return len(self._results) + len(self._pending)
