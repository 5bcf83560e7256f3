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

Warm prefetches (``POST /l2/prefetch``) run on the same pool
(:meth:`PrefetchController.submit_warm`); :class:`WarmPrefetchJobs` gives each
one a request id to poll, reports its completion exactly once, and forgets
completed jobs nobody polled after a bounded time and beyond a bounded count.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager, L1Result
from lmcache_core.storage.l2 import metrics
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
                self.l1.abandon_write(bad)
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
        metrics.PREFETCH_LOOKUP_OBJECTS.inc(len(flat))
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
        oom = sum(1 for r in reserved.results if r == L1Result.OUT_OF_MEMORY)
        if oom:
            metrics.PREFETCH_FAILURE.labels("l1_oom").inc(oom)
        metrics.PREFETCH_LOAD_SUBMITTED.inc(len(keep))
        drop = [k for k in ok_reserve if k not in keep_set]
        if drop:
            self.l1.abandon_write(drop)  # our own write reservations
        if not keep:
            return []
        loaded_ok = self._load_into({k: ok_reserve[k] for k in keep}, source)
        if len(loaded_ok) < len(keep):
            metrics.PREFETCH_FAILURE.labels("load_failed").inc(len(keep) - len(loaded_ok))
        good = _leading_complete(chunks[:prefix], loaded_ok)
        handed = [k for c in chunks[:good] for k in c]
        metrics.PREFETCH_LOAD_COMPLETED.inc(len(handed))
        handed_set = set(handed)
        rest = [k for k in keep if k not in handed_set]
        if handed:
            self.l1.finish_write_and_reserve_read(handed, readers)
        if rest:
            self.l1.abandon_write(rest)
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


# -- warm prefetch jobs (POST /l2/prefetch, GET /l2/prefetch/{request_id}) -------------------

DEFAULT_WARM_JOB_TTL_S = 600.0
DEFAULT_WARM_JOB_MAX_COMPLETED = 10_000


@dataclass(frozen=True)
class WarmJobStatus:
    """One poll's answer: ``pending``, or ``completed`` with the job's counts (given exactly once)."""

    status: str
    found_keys: int = 0
    total_keys: int = 0


@dataclass
class _WarmJob:
    total_keys: int
    found_keys: int = 0
    completed_at: float | None = None


class WarmPrefetchJobs:
    """Request ids for warm prefetches: poll, exactly-once completion, bounded retention.

    A job is *pending* from :meth:`submit` until its load finishes, then
    *completed* until the first :meth:`poll` that sees it (which removes it) or
    until it **expires**: a completed job is forgotten ``ttl_s`` seconds after it
    completed, and the oldest completed jobs are forgotten beyond
    ``max_completed`` of them, so results nobody polls cannot accumulate. Expiry
    runs on every submit, poll and completion and on :meth:`sweep` (a periodic
    thread), against ``clock`` (injectable for tests). Pending jobs are not
    capped: each one ends when its load does. A forgotten job polls like a
    consumed one: unknown.
    """

    def __init__(self, controller: PrefetchController, *, ttl_s: float = DEFAULT_WARM_JOB_TTL_S,
                 max_completed: int = DEFAULT_WARM_JOB_MAX_COMPLETED, clock: Callable[[], float] = time.monotonic,
                 enable_metrics: bool = True) -> None:
        self.controller = controller
        self.clock = clock
        self.metrics = enable_metrics
        self._lock = threading.Lock()
        self._jobs: dict[str, _WarmJob] = {}
        self._completed: OrderedDict[str, float] = OrderedDict()  # request id -> completion time, oldest first
        self.ttl_s = DEFAULT_WARM_JOB_TTL_S
        self.max_completed = DEFAULT_WARM_JOB_MAX_COMPLETED
        self.expired = 0
        self.configure(ttl_s=ttl_s, max_completed=max_completed)

    def configure(self, *, ttl_s: float | None = None, max_completed: int | None = None) -> None:
        """Change the retention of unpolled completed jobs (``ttl_s`` > 0, ``max_completed`` >= 1)."""
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"warm prefetch job TTL must be > 0 seconds, got {ttl_s!r}")
        if max_completed is not None and (isinstance(max_completed, bool) or not isinstance(max_completed, int)
                                          or max_completed < 1):
            raise ValueError(f"warm prefetch max completed jobs must be an int >= 1, got {max_completed!r}")
        with self._lock:
            if ttl_s is not None:
                self.ttl_s = float(ttl_s)
            if max_completed is not None:
                self.max_completed = max_completed
            self._expire_locked(self.clock())

    def submit(self, keys: Sequence[ObjectKey], object_nbytes: int) -> str:
        """Start warming ``keys`` into L1; the request id to poll. RuntimeError once the controller is closed."""
        request_id = uuid.uuid4().hex
        with self._lock:
            self._expire_locked(self.clock())
            self._jobs[request_id] = _WarmJob(total_keys=len(keys))
        if self.metrics:
            metrics.WARM_JOBS_SUBMITTED.inc()
            metrics.WARM_JOBS_IN_FLIGHT.inc()
        try:
            self.controller.submit_warm(keys, object_nbytes, lambda found, total: self._done(request_id, found, total))
        except BaseException:
            with self._lock:
                self._jobs.pop(request_id, None)
            if self.metrics:
                metrics.WARM_JOBS_IN_FLIGHT.dec()
            raise
        return request_id

    def poll(self, request_id: str) -> WarmJobStatus | None:
        """``pending``, ``completed`` (once: the job is then forgotten), or None for an unknown id."""
        with self._lock:
            self._expire_locked(self.clock())
            job = self._jobs.get(request_id)
            if job is None:
                return None
            if job.completed_at is None:
                return WarmJobStatus("pending")
            del self._jobs[request_id]
            self._completed.pop(request_id, None)
            return WarmJobStatus("completed", job.found_keys, job.total_keys)

    def sweep(self) -> dict[str, int]:
        """Drop expired completed jobs now (the periodic thread's tick); how many went."""
        with self._lock:
            return {"expired": self._expire_locked(self.clock())}

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            self._expire_locked(self.clock())
            completed = len(self._completed)
            return {
                "pending_jobs": len(self._jobs) - completed,
                "completed_unpolled_jobs": completed,
                "expired_jobs": self.expired,
                "completed_job_ttl_seconds": self.ttl_s,
                "max_completed_jobs": self.max_completed,
            }

    def _done(self, request_id: str, found: int, total: int) -> None:
        # Runs on the prefetch pool when the load ends (found = keys loaded from L2 by this job).
        with self._lock:
            now = self.clock()
            job = self._jobs.get(request_id)
            if job is not None:
                job.found_keys, job.total_keys, job.completed_at = found, total, now
                self._completed[request_id] = now
            self._expire_locked(now)
        if self.metrics:
            metrics.WARM_JOBS_IN_FLIGHT.dec()
            metrics.WARM_JOBS_COMPLETED.inc()
            metrics.WARM_KEYS_LOADED.inc(found)

    def _expire_locked(self, now: float) -> int:
        gone = 0
        while self._completed:
            request_id, at = next(iter(self._completed.items()))
            if now - at < self.ttl_s and len(self._completed) <= self.max_completed:
                break
            del self._completed[request_id]
            self._jobs.pop(request_id, None)
            gone += 1
        if gone:
            self.expired += gone
            if self.metrics:
                metrics.WARM_JOBS_EXPIRED.inc(gone)
        return gone
