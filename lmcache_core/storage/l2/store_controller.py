"""Write-behind from L1 to every L2 adapter.

Nothing on the STORE reply path waits for L2. The controller listens for
permanent L1 objects whose write finished (temporaries, i.e. prefetched
copies, are never offered), queues their keys, and a registered periodic
thread drains the queue:

1. ``reserve_read`` pins the objects (keys already evicted are skipped: best effort);
2. each adapter gets ``store(keys, views)`` (a future, run on the adapter's pool);
3. when every adapter has answered, the read locks are released; with the
   ``skip_l1`` policy, keys that every adapter stored leave L1.

Failures are counted per adapter (by the adapter) and here; there is no retry,
as in LMCache. The queue is bounded: when it is full, the oldest keys are
dropped (and counted) rather than blocking STORE.

At shutdown, :meth:`StoreController.flush` drains the queue from the caller's
thread within a deadline (``--shutdown-drain-seconds``), waits for pushes the
periodic thread has in flight, and logs what, if anything, was not written:
keys still queued at the deadline, keys whose adapter answered after it, and
keys an adapter failed to store.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, wait
from typing import Any

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l1 import L1Listener, L1Manager, L1Result
from lmcache_core.storage.l2 import metrics
from lmcache_core.storage.l2.base import L2Adapter

logger = logging.getLogger(__name__)

MAX_QUEUED_KEYS = 1 << 20
BATCH = 256

class _Listener(L1Listener):
    def __init__(self, controller: StoreController) -> None:
        self.controller = controller

    def on_keys_write_finished(self, keys: list[ObjectKey]) -> None:
        self.controller.enqueue(keys)


class StoreController:
    """Pushes new permanent L1 objects to every L2 adapter in the background."""

    def __init__(self, l1: L1Manager, adapters: Sequence[L2Adapter], *, policy: str = "default",
                 max_queued_keys: int = MAX_QUEUED_KEYS) -> None:
        if policy not in ("default", "skip_l1"):
            raise ValueError(f"unknown L2 store policy {policy!r}")
        self.l1 = l1
        self.adapters = list(adapters)
        self.policy = policy
        self._queue: collections.deque[ObjectKey] = collections.deque()
        self._max = max_queued_keys
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.stored_keys = 0
        self.failed_keys = 0
        self.skipped_keys = 0
        self.dropped_keys = 0
        self.in_flight = 0
        self._idle = threading.Condition()  # notified whenever a push ends (flush waits on it)
        self._flushing = False  # set by flush(): the periodic drain takes no new batch
        l1.register_listener(_Listener(self))

    def enqueue(self, keys: Sequence[ObjectKey]) -> None:
        """Called under L1's lock: O(len(keys)), never blocks."""
        if not self.adapters:
            return
        with self._lock:
            self._queue.extend(keys)
            overflow = len(self._queue) - self._max
            for _ in range(max(0, overflow)):
                self._queue.popleft()
            if overflow > 0:
                self.dropped_keys += overflow
                metrics.L2_STORE_DROPPED.inc(overflow)
            metrics.L2_STORE_QUEUE.set(len(self._queue))
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def drain(self, max_batches: int = 64) -> dict[str, Any]:
        """Push up to ``max_batches`` batches; the periodic thread's body (also callable directly)."""
        pushed = 0
        for _ in range(max_batches):
            if self._flushing:
                break  # flush() owns the queue now
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                metrics.L2_STORE_QUEUE.set(len(self._queue))
            if not batch:
                break
            pushed += self._push(batch)[0]
        self._wake.clear()
        return {"pushed": pushed, "pending": self.pending()}

    def flush(self, timeout_s: float) -> dict[str, Any]:
        """Shutdown drain: push every queued key within ``timeout_s``; log and return what was not written.

        Runs in the caller's thread; the periodic drain stops taking batches. Returns
        ``{"queued_at_start", "written", "failed", "not_written", "timed_out", "seconds"}``
        (``not_written``: keys still queued at the deadline; ``timed_out``: keys whose
        adapters had not answered by it; ``failed``: keys an adapter refused).
        """
        started = time.monotonic()
        deadline = started + max(0.0, timeout_s)
        self._flushing = True
        queued = self.pending() + self.in_flight
        stored0, failed0 = self.stored_keys, self.failed_keys
        timed_out = 0
        while time.monotonic() < deadline:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                metrics.L2_STORE_QUEUE.set(len(self._queue))
            if not batch:
                break
            timed_out += self._push(batch, deadline)[1]
        with self._idle:  # pushes the periodic thread started before the flush
            self._idle.wait_for(lambda: self.in_flight == 0, max(0.0, deadline - time.monotonic()))
        with self._lock:
            not_written = len(self._queue)
            self._queue.clear()
            metrics.L2_STORE_QUEUE.set(0)
        report = {"queued_at_start": queued, "written": self.stored_keys - stored0,
                  "failed": self.failed_keys - failed0, "not_written": not_written + self.in_flight,
                  "timed_out": timed_out, "seconds": round(time.monotonic() - started, 3)}
        if report["not_written"] or report["timed_out"] or report["failed"]:
            logger.warning("shutdown drain: %(written)d of %(queued_at_start)d queued keys written to L2 in "
                           "%(seconds)ss; NOT written: %(not_written)d still queued or in flight at the deadline, "
                           "%(timed_out)d unanswered by an adapter, %(failed)d failed", report)
        else:
            logger.info("shutdown drain: %(written)d of %(queued_at_start)d queued keys written to L2 in "
                        "%(seconds)ss; nothing left behind", report)
        return report

    def _push(self, keys: list[ObjectKey], deadline: float | None = None) -> tuple[int, int]:
        """Push one batch: (keys pinned, keys whose adapters had not answered by ``deadline``)."""
        results = self.l1.reserve_read(keys, 1)
        pinned = [k for k, r in zip(keys, results) if r == L1Result.SUCCESS]
        self.skipped_keys += len(keys) - len(pinned)
        metrics.L2_STORE_SKIPPED.inc(len(keys) - len(pinned))
        if not pinned:
            return 0, 0
        timed_out = 0
        self.in_flight += len(pinned)
        metrics.L2_STORE_SUBMITTED.inc(len(pinned))
        metrics.L2_STORES_IN_FLIGHT.inc(len(pinned))
        try:
            views = self.l1.read(pinned).views
            futures: list[Future[list[bool]]] = [a.store(pinned, views) for a in self.adapters]
            _, late = wait(futures, timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            everywhere = [True] * len(pinned)
            for fut in futures:
                if fut in late:  # shutdown deadline: this adapter has not answered
                    everywhere = [False] * len(pinned)
                    timed_out = len(pinned)
                    continue
                try:
                    ok = fut.result()
                except Exception:
                    logger.exception("L2 store task failed")
                    ok = [False] * len(pinned)
                everywhere = [a and b for a, b in zip(everywhere, ok)]
                self.failed_keys += ok.count(False)
            self.stored_keys += sum(everywhere)
        finally:
            self.l1.finish_read(pinned, 1)
            with self._idle:
                self.in_flight -= len(pinned)
                self._idle.notify_all()
            metrics.L2_STORES_IN_FLIGHT.dec(len(pinned))
        if self.policy == "skip_l1":
            done = [k for k, ok in zip(pinned, everywhere) if ok]
            if done:
                self.l1.delete(done)
        return len(pinned), timed_out

    def report_status(self) -> dict[str, Any]:
        return {
            "is_healthy": True,
            "pending_keys_count": self.pending(),
            "in_flight_key_count": self.in_flight,
            "num_l2_adapters": len(self.adapters),
            "store_policy": self.policy,
            "stored_keys": self.stored_keys,
            "failed_keys": self.failed_keys,
            "skipped_keys": self.skipped_keys,
            "dropped_keys": self.dropped_keys,
        }
