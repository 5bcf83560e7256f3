"""Periodic background threads with health bookkeeping, and a per-server registry of them.

Every long-lived loop of the server (eviction ticks, reapers, health monitors)
runs as a :class:`PeriodicThread` registered in the server's
:class:`PeriodicThreadRegistry`, so the HTTP routes ``/periodic-threads*`` can
list them and report the ones that stalled.

A thread is *running* while its loop is alive, and *active* while it keeps
completing runs: no run yet and still within ``init_wait + 3 * interval`` of
its start, or its last run finished less than ``3 * interval`` ago.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "IrrecoverableError",
    "PeriodicFn",
    "PeriodicThread",
    "PeriodicThreadRegistry",
    "ThreadLevel",
    "ThreadRunSummary",
]

# A thread counts as stalled once this many intervals pass without a completed run.
_ACTIVE_INTERVALS = 3
# Distinct error messages remembered for log de-duplication; past this, the memory is reset so a
# thread whose errors embed ever-changing text cannot grow it without bound.
_MAX_REMEMBERED_ERRORS = 64

PeriodicFn = Callable[[], "str | Mapping[str, Any] | None"]
"""What a periodic thread runs: returns nothing, a message, or a mapping of extra info."""


class ThreadLevel(str, Enum):
    """How much the server suffers when a periodic thread stalls."""

    CRITICAL = "critical"
    """Severe degradation or data loss (health monitors, heartbeats)."""
    HIGH = "high"
    """Major impact (eviction, dispatchers)."""
    MEDIUM = "medium"
    """Noticeable impact (session cleanup, reapers)."""
    LOW = "low"
    """Minimal impact (background memory growth)."""


class IrrecoverableError(Exception):
    """Raised by a periodic function to stop its loop for good (counted as a failed run)."""


@dataclass(frozen=True)
class ThreadRunSummary:
    """The outcome of one run of a periodic function."""

    timestamp: float
    """When the run started (the thread's clock, seconds)."""
    duration_ms: float
    """Wall time the run took, in milliseconds."""
    success: bool
    """False when the function raised."""
    message: str = ""
    """The function's returned message, or the error text."""
    extra_info: dict[str, Any] = field(default_factory=dict)
    """The mapping the function returned, if any."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return asdict(self)


class PeriodicThread:
    """A daemon thread that calls ``fn`` every ``interval`` seconds after an initial wait.

    ``fn`` may return ``None``, a message string, or a mapping of extra info. An
    exception from ``fn`` is a failed run: it is logged (with traceback, once per
    distinct message so a persistent fault does not flood the log) and the loop
    goes on. :class:`IrrecoverableError` ends the loop.

    ``clock`` is used for every timestamp and for the activity check, so tests
    can inject a fake clock; the waits between runs always use real time.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        fn: PeriodicFn,
        level: ThreadLevel = ThreadLevel.MEDIUM,
        init_wait: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not name:
            raise ValueError("periodic thread name must be non-empty")
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        if not init_wait >= 0:
            raise ValueError(f"init_wait must be >= 0 seconds, got {init_wait!r}")
        self.name = name
        self.interval = float(interval)
        self.init_wait = float(init_wait)
        self.level = ThreadLevel(level)
        self._fn = fn
        self._clock = clock
        # One condition guards all bookkeeping; waiters in wait_for_runs are woken after each run.
        self._cond = threading.Condition()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        self._start_time: float | None = None
        self._last_run_time: float | None = None
        self._last_summary: ThreadRunSummary | None = None
        self._total_runs = 0
        self._failed_runs = 0
        self._logged_errors: set[str] = set()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the loop; a no-op while it is already running. A stopped thread may be started again."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop_event = threading.Event()
            self._start_time = self._clock()
            self._running = True
            self._thread = threading.Thread(
                target=self._loop, args=(self._stop_event,), name=self.name, daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the loop to end and wait up to ``timeout`` seconds; True once the thread is gone.

        A run in progress is not interrupted; the loop ends after it. Calling
        this from inside ``fn`` only signals (a thread cannot join itself).
        """
        with self._cond:
            self._running = False
            self._stop_event.set()
            thread = self._thread
        if thread is None:
            return True
        if thread is threading.current_thread():
            return False
        thread.join(timeout)
        return not thread.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the loop to end on its own (e.g. after an irrecoverable error); True once it has."""
        with self._cond:
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _loop(self, stop_event: threading.Event) -> None:
        """Body of the daemon thread."""
        try:
            if stop_event.wait(self.init_wait):
                return
            while not stop_event.is_set():
                try:
                    self.run_once()
                except IrrecoverableError:
                    logger.error("periodic thread %r stopped by an irrecoverable error", self.name)
                    return
                if stop_event.wait(self.interval):
                    return
        finally:
            with self._cond:
                # Only clear the flag for our own generation: a restart may already own it.
                if self._stop_event is stop_event:
                    self._running = False
                self._cond.notify_all()

    # ------------------------------------------------------------------ runs

    def run_once(self) -> ThreadRunSummary:
        """Run ``fn`` once on the calling thread and record its summary.

        Ordinary exceptions are recorded as a failed run and not re-raised;
        :class:`IrrecoverableError` is recorded and then re-raised. Calling this
        while the loop is running may run ``fn`` concurrently with the loop.
        """
        started = self._clock()
        t0 = time.perf_counter()
        irrecoverable: IrrecoverableError | None = None
        try:
            result = self._fn()
        except IrrecoverableError as exc:
            irrecoverable = exc
            summary = self._failure(started, t0, exc)
        except Exception as exc:  # a failing tick must not kill the loop
            summary = self._failure(started, t0, exc)
        else:
            summary = self._success(started, t0, result)
        with self._cond:
            self._total_runs += 1
            if not summary.success:
                self._failed_runs += 1
            self._last_run_time = self._clock()
            self._last_summary = summary
            self._cond.notify_all()
        if irrecoverable is not None:
            raise irrecoverable
        return summary

    def _success(self, started: float, t0: float, result: object) -> ThreadRunSummary:
        """Build the summary of a run that returned ``result``."""
        duration_ms = (time.perf_counter() - t0) * 1000.0
        if result is None:
            return ThreadRunSummary(started, duration_ms, True)
        if isinstance(result, Mapping):
            return ThreadRunSummary(started, duration_ms, True, extra_info=dict(result))
        return ThreadRunSummary(started, duration_ms, True, message=str(result))

    def _failure(self, started: float, t0: float, exc: BaseException) -> ThreadRunSummary:
        """Log ``exc`` (first occurrence of its message only) and build a failed summary."""
        duration_ms = (time.perf_counter() - t0) * 1000.0
        message = f"{type(exc).__name__}: {exc}"
        with self._cond:
            first = message not in self._logged_errors
            if first:
                if len(self._logged_errors) >= _MAX_REMEMBERED_ERRORS:
                    self._logged_errors.clear()
                self._logged_errors.add(message)
        if first:
            logger.error("periodic thread %r run failed: %s", self.name, message, exc_info=exc)
        else:
            logger.debug("periodic thread %r run failed again: %s", self.name, message)
        return ThreadRunSummary(started, duration_ms, False, message=message)

    def wait_for_runs(self, n: int, timeout: float) -> bool:
        """Block until at least ``n`` runs have completed (True) or ``timeout`` seconds pass (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._total_runs >= n, timeout)

    # ------------------------------------------------------------------ state

    @property
    def is_running(self) -> bool:
        """The loop thread is alive and has not been asked to stop."""
        with self._cond:
            thread = self._thread
            return self._running and thread is not None and thread.is_alive()

    @property
    def is_active(self) -> bool:
        """Running and completing runs on schedule (see the module docstring)."""
        return self._is_active_at(self._clock())

    def _is_active_at(self, now: float) -> bool:
        """``is_active`` evaluated at time ``now``."""
        if not self.is_running:
            return False
        with self._cond:
            window = _ACTIVE_INTERVALS * self.interval
            if self._last_run_time is None:
                start = self._start_time if self._start_time is not None else now
                return now - start < self.init_wait + window
            return now - self._last_run_time < window

    @property
    def is_stalled(self) -> bool:
        """Running but not completing runs on schedule: what ``unhealthy()`` and the health route report."""
        return self.is_running and not self.is_active

    @property
    def total_runs(self) -> int:
        """Runs completed, failed ones included."""
        with self._cond:
            return self._total_runs

    @property
    def failed_runs(self) -> int:
        """Runs that raised."""
        with self._cond:
            return self._failed_runs

    @property
    def last_summary(self) -> ThreadRunSummary | None:
        """Summary of the latest run, or None before the first."""
        with self._cond:
            return self._last_summary

    def get_status(self) -> dict[str, Any]:
        """The reference status fields, JSON-able.

        ``success_rate`` is a percentage, 100.0 before the first run;
        ``last_run_time``/``last_run_ago`` are None before the first run.
        """
        now = self._clock()
        active = self._is_active_at(now)
        running = self.is_running
        with self._cond:
            last = self._last_run_time
            total, failed = self._total_runs, self._failed_runs
            summary = self._last_summary
        return {
            "name": self.name,
            "level": self.level.value,
            "interval": self.interval,
            "init_wait": self.init_wait,
            "is_running": running,
            "is_active": active,
            "last_run_time": last,
            "last_run_ago": None if last is None else max(0.0, now - last),
            "total_runs": total,
            "failed_runs": failed,
            "success_rate": 100.0 if total == 0 else (total - failed) * 100.0 / total,
            "last_summary": None if summary is None else summary.to_dict(),
        }

    def __repr__(self) -> str:
        return f"PeriodicThread(name={self.name!r}, interval={self.interval}, level={self.level.value})"


class PeriodicThreadRegistry:
    """The periodic threads of one server instance (create one per server, not per process).

    All methods are thread-safe. Registering a name that already exists replaces
    the old thread, which is stopped, with a warning.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._threads: dict[str, PeriodicThread] = {}

    def create(
        self,
        name: str,
        interval: float,
        fn: PeriodicFn,
        level: ThreadLevel = ThreadLevel.MEDIUM,
        init_wait: float = 0.0,
        start: bool = True,
    ) -> PeriodicThread:
        """Build a thread with the registry's clock, register it, and start it unless ``start`` is False."""
        thread = PeriodicThread(name, interval, fn, level=level, init_wait=init_wait, clock=self._clock)
        self.register(thread)
        if start:
            thread.start()
        return thread

    def register(self, thread: PeriodicThread) -> None:
        """Add ``thread``; a different thread already under its name is stopped and replaced."""
        with self._lock:
            old = self._threads.get(thread.name)
            self._threads[thread.name] = thread
        if old is not None and old is not thread:
            logger.warning("periodic thread %r registered twice; stopping and replacing the old one", thread.name)
            old.stop()

    def unregister(self, name: str, stop: bool = False, timeout: float = 5.0) -> PeriodicThread | None:
        """Remove and return the thread called ``name`` (None if absent), stopping it if ``stop``."""
        with self._lock:
            thread = self._threads.pop(name, None)
        if thread is not None and stop:
            thread.stop(timeout)
        return thread

    def get(self, name: str) -> PeriodicThread | None:
        """The thread called ``name``, or None."""
        with self._lock:
            return self._threads.get(name)

    def get_all(self) -> list[PeriodicThread]:
        """Every registered thread, in registration order."""
        with self._lock:
            return list(self._threads.values())

    def get_by_level(self, level: ThreadLevel | str) -> list[PeriodicThread]:
        """The registered threads of one level."""
        wanted = ThreadLevel(level)
        return [t for t in self.get_all() if t.level is wanted]

    def get_running_count(self) -> int:
        """How many registered threads are running."""
        return sum(1 for t in self.get_all() if t.is_running)

    def get_active_count(self) -> int:
        """How many registered threads are active."""
        return sum(1 for t in self.get_all() if t.is_active)

    def get_count_by_level(self) -> dict[str, dict[str, int]]:
        """``{level: {total, running, active}}`` for every level, zeros included."""
        counts = {lvl.value: {"total": 0, "running": 0, "active": 0} for lvl in ThreadLevel}
        now = self._clock()
        for t in self.get_all():
            entry = counts[t.level.value]
            entry["total"] += 1
            entry["running"] += int(t.is_running)
            entry["active"] += int(t._is_active_at(now))
        return counts

    def get_summary(self) -> dict[str, Any]:
        """``{total_count, running_count, active_count, by_level, threads: [status, ...]}``."""
        statuses = [t.get_status() for t in self.get_all()]
        by_level = {lvl.value: {"total": 0, "running": 0, "active": 0} for lvl in ThreadLevel}
        for s in statuses:
            entry = by_level[s["level"]]
            entry["total"] += 1
            entry["running"] += int(s["is_running"])
            entry["active"] += int(s["is_active"])
        return {
            "total_count": len(statuses),
            "running_count": sum(1 for s in statuses if s["is_running"]),
            "active_count": sum(1 for s in statuses if s["is_active"]),
            "by_level": by_level,
            "threads": statuses,
        }

    def unhealthy(
        self, levels: Iterable[ThreadLevel | str] = (ThreadLevel.CRITICAL, ThreadLevel.HIGH)
    ) -> list[dict[str, Any]]:
        """``[{name, level, last_run_ago, interval}]`` for threads of ``levels`` that are stalled.

        The one definition of unhealthy, LMCache's and ``GET /periodic-threads-health``'s:
        running but not active (:attr:`PeriodicThread.is_stalled`). A thread that is not
        running (stopped on purpose, or ended by an irrecoverable error) is not stalled; it
        shows in ``/periodic-threads`` with ``is_running: false``.
        """
        wanted = {ThreadLevel(lvl) for lvl in levels}
        out = []
        for t in self.get_all():
            if t.level not in wanted:
                continue
            status = t.get_status()
            if status["is_running"] and not status["is_active"]:
                out.append(
                    {
                        "name": status["name"],
                        "level": status["level"],
                        "last_run_ago": status["last_run_ago"],
                        "interval": status["interval"],
                    }
                )
        return out

    def stop_all(self, timeout: float = 5.0) -> list[str]:
        """Signal every thread, then join them within ``timeout`` seconds overall.

        Returns the names of threads still alive afterwards (empty when all stopped).
        """
        threads = self.get_all()
        for t in threads:
            t.stop(timeout=0)  # signal all first so they wind down in parallel
        deadline = time.monotonic() + timeout
        stuck = []
        for t in threads:
            if not t.stop(timeout=max(0.0, deadline - time.monotonic())):
                stuck.append(t.name)
        return stuck

    def __len__(self) -> int:
        with self._lock:
            return len(self._threads)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._threads
