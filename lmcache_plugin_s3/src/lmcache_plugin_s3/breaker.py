"""A circuit breaker for one S3 endpoint: closed → open → half-open probes with exponential backoff → closed.

LMCache's S3 adapter disables itself for good after three connection errors.
Here the adapter keeps working through an outage and comes back by itself:

* **closed**: every request goes to S3. Each *connection-class* failure (refused,
  reset, connect or read timeout: the endpoint did not answer) adds one to a
  consecutive count; any answer from S3, even an error status, resets it.
* **open**: after ``threshold`` consecutive connection failures. Requests are not
  sent (the adapter answers "miss" or "not stored" at once). A background thread
  waits ``backoff`` seconds, then probes.
* **half-open**: the probe (a ``HeadBucket``, bounded by the lookup timeouts) is in
  flight. Success closes the breaker; failure re-opens it with the backoff doubled
  (up to ``max_backoff_s``).

Probing on a thread of its own (rather than letting one user request through)
means no store or lookup is ever the one that waits on a dead endpoint, and the
breaker closes even when no traffic arrives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_CODES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    """Thread-safe; ``probe()`` raises when the endpoint is still unavailable."""

    def __init__(self, name: str, probe: Callable[[], None], *, threshold: int = 3, backoff_s: float = 0.5,
                 max_backoff_s: float = 30.0, on_change: Callable[[str], None] | None = None) -> None:
        if threshold < 1 or backoff_s <= 0 or max_backoff_s < backoff_s:
            raise ValueError("threshold >= 1 and 0 < backoff_s <= max_backoff_s")
        self.name = name
        self.threshold = threshold
        self.base_backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._probe = probe
        self._on_change = on_change
        self._cond = threading.Condition()
        self._state = CLOSED
        self._consecutive = 0
        self._backoff = backoff_s
        self._next_probe_at = 0.0
        self._closed_for_good = False
        self._thread: threading.Thread | None = None
        self.times_opened = 0
        self.probes = 0
        self.probe_failures = 0

    @property
    def state(self) -> str:
        return self._state

    def allow(self) -> bool:
        """Whether a request may go to S3 now (only while closed)."""
        return self._state == CLOSED

    def record_success(self) -> None:
        """S3 answered (any status): the consecutive count restarts."""
        self._consecutive = 0

    def record_failure(self) -> None:
        """One connection-class failure; the ``threshold``-th in a row opens the breaker."""
        with self._cond:
            self._consecutive += 1
            if self._state == CLOSED and self._consecutive >= self.threshold:
                self._open_locked(self.base_backoff_s)

    def trip(self) -> None:
        """Open now (an endpoint unreachable at start); probing begins after the first backoff."""
        with self._cond:
            if self._state == CLOSED:
                self._open_locked(self.base_backoff_s)

    def close(self) -> None:
        """Stop the probe thread for good (the adapter is closing)."""
        with self._cond:
            self._closed_for_good = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)

    def report(self) -> dict[str, Any]:
        with self._cond:
            doc: dict[str, Any] = {
                "state": self._state,
                "consecutive_failures": self._consecutive,
                "threshold": self.threshold,
                "times_opened": self.times_opened,
                "probes": self.probes,
                "probe_failures": self.probe_failures,
                "backoff_s": self._backoff if self._state != CLOSED else 0.0,
            }
            if self._state == OPEN:
                doc["next_probe_in_s"] = round(max(0.0, self._next_probe_at - time.monotonic()), 3)
            return doc

    # -- internals -------------------------------------------------------------------------

    def _set(self, state: str) -> None:
        self._state = state
        if self._on_change is not None:
            self._on_change(state)

    def _open_locked(self, backoff: float) -> None:
        self.times_opened += 1
        self._backoff = backoff
        self._next_probe_at = time.monotonic() + backoff
        self._set(OPEN)
        logger.warning("S3 %s: circuit open after %d consecutive connection failures; probing in %.3gs",
                       self.name, self._consecutive, backoff)
        self._cond.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._probe_loop, name=f"s3-breaker-{self.name}", daemon=True)
            self._thread.start()

    def _probe_loop(self) -> None:
        # One thread per breaker, started at the first opening, alive until close(): it idles
        # while the breaker is closed, so a re-opening never races with a thread on its way out.
        while True:
            with self._cond:
                while not self._closed_for_good:
                    if self._state == OPEN:
                        wait = self._next_probe_at - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)  # the backoff itself; close() wakes it early
                    else:
                        self._cond.wait()  # closed: until the next opening
                if self._closed_for_good:
                    return
                self._set(HALF_OPEN)
                self.probes += 1
            try:
                self._probe()
            except Exception as exc:  # still down: back off further
                with self._cond:
                    self.probe_failures += 1
                    self._backoff = min(self._backoff * 2, self.max_backoff_s)
                    self._next_probe_at = time.monotonic() + self._backoff
                    self._set(OPEN)
                logger.info("S3 %s: probe failed (%s); next probe in %.3gs", self.name, type(exc).__name__,
                            self._backoff)
                continue
            with self._cond:
                self._consecutive = 0
                self._backoff = self.base_backoff_s
                self._set(CLOSED)
            logger.warning("S3 %s: circuit closed (the endpoint answers again)", self.name)
