"""LOOKUP's L2 part: load the chunks L1 misses from the L2 adapters, prefix-trimmed.

For one request (the chunks after L1's prefix hit, each chunk = all its
object keys):

1. lookup-and-lock on every adapter; each key is planned from the
   lowest-index adapter that has it; a chunk counts only if all its keys are
   planned, and only the leading run of complete chunks is kept;
2. L1 space is reserved for the planned keys (temporary objects, freed after
   their last reader, unless the ``retain`` policy keeps them); a shortage
   shortens the prefix;
3. each adapter loads its keys into the reserved buffers;
4. loaded objects are handed to the readers atomically
   (``finish_write_and_reserve_read`` with ``readers`` locks); anything past
   the first failure is released; every L2 lock taken is released in every path.

At most ``max_in_flight`` requests run at once (a pool of that size); the
rest queue. Completion is reported through a callback with the loaded chunks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager, L1Result
from lmcache_core.storage.l2.base import L2Adapter

logger = logging.getLogger(__name__)

Done = Callable[[list[list[ObjectKey]]], None]


def _plan_sources(keys: Sequence[ObjectKey], hits: Sequence[Sequence[bool]]) -> dict[ObjectKey, int]:
    """Each found key → the lowest-index adapter that has it."""
    source: dict[ObjectKey, int] = {}
    for k_index, key in enumerate(keys):
        for a_index, bitmap in enumerate(hits):
            if bitmap[k_index]:
                source[key] = a_index
                break
    return source


def _leading_complete(chunks: Sequence[Sequence[ObjectKey]], have: Any) -> int:
    """How many leading chunks have every key in ``have`` (the prefix a KV cache can use)."""
    n = 0
    for chunk in chunks:
        if not all(k in have for k in chunk):
            break
        n += 1
    return n


class PrefetchController:
    """Loads L1 misses from L2 for lookups; ``submit`` never blocks on I/O."""

    def __init__(self, l1: L1Manager, adapters: Sequence[L2Adapter], *, max_in_flight: int = 8,
                 retain: bool = False) -> None:
        self.l1 = l1
        self.adapters = list(adapters)
        self.retain = retain
        self.max_in_flight = max(1, max_in_flight)
        self._pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="l2-prefetch")
        self._lock = threading.Lock()
        self.submitted = self.completed = self.loaded_chunks = self.failed = 0
        self.in_flight = 0

    def submit(self, chunk_keys: Sequence[Sequence[ObjectKey]], object_nbytes: int, readers: int,
               on_done: Done) -> None:
        """Start loading; ``on_done(loaded_chunks)`` is called exactly once (possibly with [])."""
        with self._lock:
            self.submitted += 1
        self._pool.submit(self._run, [list(c) for c in chunk_keys], object_nbytes, readers, on_done)

    def submit_warm(self, keys: Sequence[ObjectKey], object_nbytes: int,
                    on_done: Callable[[int, int], None]) -> None:
        """Warm L1 from L2 (``POST /l2/prefetch``): gap-tolerant, no reader locks, objects retained.

        Keys already in L1 are skipped and not counted; ``on_done(found_keys, total_keys)``
        reports how many keys this job loaded from L2, exactly once.
        """
        with self._lock:
            self.submitted += 1
        self._pool.submit(self._run_warm, list(keys), object_nbytes, on_done)

    def _run_warm(self, keys: list[ObjectKey], nbytes: int, on_done: Callable[[int, int], None]) -> None:
        loaded = 0
        try:
            loaded = self._warm(keys, nbytes)
        except Exception:
            with self._lock:
                self.failed += 1
            logger.exception("L2 warm prefetch failed")
        finally:
            with self._lock:
                self.completed += 1
            try:
                on_done(loaded, len(keys))
            except Exception:
                logger.exception("warm prefetch completion callback failed")

    def _warm(self, keys: list[ObjectKey], nbytes: int) -> int:
        todo = [k for k in keys if not self.l1.contains(k)]
        if not todo:
            return 0
        hits = [a.lookup_and_lock(todo).result() for a in self.adapters]
        source = _plan_sources(todo, hits)
        locked_by = [[k for k, hit in zip(todo, bitmap) if hit] for bitmap in hits]
        try:
            wanted = [k for k in todo if k in source]
            reserved = self.l1.reserve_write(wanted, nbytes)  # permanent: a warm prefetch is retained
            views = {k: v for k, r, v in zip(wanted, reserved.results, reserved.views) if r == L1Result.SUCCESS}
            ok_set = self._load_into(views, source)
            ok = [k for k in views if k in ok_set]
            bad = [k for k in views if k not in ok_set]
            if bad:
                self.l1.delete(bad, force=True)
            if ok:
                self.l1.finish_write(ok, from_l2=True)  # came from L2: not offered back to it
            return len(ok)
        finally:
            for a_index, adapter in enumerate(self.adapters):
                if locked_by[a_index]:
                    adapter.unlock(locked_by[a_index])

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    def _load_into(self, views: dict[ObjectKey, Any], source: dict[ObjectKey, int]) -> set[ObjectKey]:
        """Load each key from its planned adapter into its L1 view; the keys that loaded."""
        per_adapter: dict[int, list[ObjectKey]] = {}
        for k in views:
            per_adapter.setdefault(source[k], []).append(k)
        futures = {a: self.adapters[a].load(ks, [views[k] for k in ks]) for a, ks in per_adapter.items()}
        loaded: set[ObjectKey] = set()
        for a, fut in futures.items():
            try:
                results = fut.result()
            except Exception:
                logger.exception("L2 load failed")
                results = [False] * len(per_adapter[a])
            loaded.update(k for k, ok in zip(per_adapter[a], results) if ok)
        return loaded

    def _run(self, chunks: list[list[ObjectKey]], nbytes: int, readers: int, on_done: Done) -> None:
        with self._lock:
            self.in_flight += 1
        loaded: list[list[ObjectKey]] = []
        try:
            loaded = self._prefetch(chunks, nbytes, readers)
        except Exception:
            with self._lock:
                self.failed += 1
            logger.exception("L2 prefetch failed")
        finally:
            with self._lock:
                self.in_flight -= 1
                self.completed += 1
                self.loaded_chunks += len(loaded)
            try:
                on_done(loaded)
            except Exception:
                logger.exception("prefetch completion callback failed")

    def _prefetch(self, chunks: list[list[ObjectKey]], nbytes: int, readers: int) -> list[list[ObjectKey]]:
        flat = [k for c in chunks for k in c]
        if not flat:
            return []
        found = [a.lookup_and_lock(flat) for a in self.adapters]
        hits = [f.result() for f in found]
        source = _plan_sources(flat, hits)
        prefix = _leading_complete(chunks, source)
        planned = [k for c in chunks[:prefix] for k in c]
        planned_set = set(planned)
        locked_by = [[k for k, hit in zip(flat, bitmap) if hit] for bitmap in hits]
        try:
            # Found elsewhere, or past the gap: not needed from this adapter.
            for a_index, adapter in enumerate(self.adapters):
                spare = [k for k in locked_by[a_index] if k not in planned_set or source.get(k) != a_index]
                if spare:
                    adapter.unlock(spare)
                locked_by[a_index] = [k for k in locked_by[a_index] if k in planned_set and source.get(k) == a_index]
            if not planned:
                return []
            return self._load(chunks[:prefix], nbytes, readers, source)
        finally:
            for a_index, adapter in enumerate(self.adapters):
                if locked_by[a_index]:
                    adapter.unlock(locked_by[a_index])

    def _load(self, chunks: list[list[ObjectKey]], nbytes: int, readers: int,
              source: dict[ObjectKey, int]) -> list[list[ObjectKey]]:
        planned = [k for c in chunks for k in c]
        reserved = self.l1.reserve_write(planned, nbytes, temporary=not self.retain)
        ok_reserve = {k: v for k, r, v in zip(planned, reserved.results, reserved.views) if r == L1Result.SUCCESS}
        # A chunk whose space could not be reserved (L1 full, or a racing store) ends the prefix.
        prefix = _leading_complete(chunks, ok_reserve)
        keep = [k for c in chunks[:prefix] for k in c]
        keep_set = set(keep)
        drop = [k for k in ok_reserve if k not in keep_set]
        if drop:
            self.l1.delete(drop, force=True)  # our own write reservations: nobody else can hold them
        if not keep:
            return []
        loaded_ok = self._load_into({k: ok_reserve[k] for k in keep}, source)
        good = _leading_complete(chunks[:prefix], loaded_ok)
        handed = [k for c in chunks[:good] for k in c]
        handed_set = set(handed)
        rest = [k for k in keep if k not in handed_set]
        if handed:
            self.l1.finish_write_and_reserve_read(handed, readers)
        if rest:
            self.l1.delete(rest, force=True)
        return chunks[:good]

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "is_healthy": True,
                "max_in_flight": self.max_in_flight,
                "in_flight_request_count": self.in_flight,
                "submitted_requests": self.submitted,
                "completed_requests": self.completed,
                "loaded_chunks": self.loaded_chunks,
                "failed_requests": self.failed,
                "num_l2_adapters": len(self.adapters),
            }
