"""An opt-in background pre-faulter for the L1 arena (``--l1-prefault-ahead-gb``).

The arena is reserved lazily (idle RSS stays small whatever ``--l1-size-gb`` says),
so the first STORE into memory never touched before pays a page fault per 4 KiB:
measured here, first-fill STORE runs at about a quarter of the speed of a STORE
into reused memory. With ``ahead_bytes > 0`` a thread keeps that many bytes past
the allocator's high-water mark already populated, so STOREs land on resident
pages while RSS still grows with use (plus at most ``ahead_bytes``), never with
the configured size. The default, 0, keeps the lazy behaviour unchanged.

Pages are populated with ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14+): the kernel
faults them in without changing their contents, so populating memory that the
allocator has just handed to a STORE is harmless. Where the kernel lacks it the
pre-faulter logs once and stops (the server runs as without it); it never writes
to the arena itself.

Two things keep it from slowing the server it serves:

* ``madvise`` is called through ``ctypes``, which releases the GIL for the call.
  Python's own ``mmap.madvise`` holds the GIL throughout: measured here, a 64 MiB
  step froze every other Python thread (the ZMQ loop, the transfer lanes) for 24 ms.
* The thread runs at the lowest CPU priority (nice 19, a per-thread setting on
  Linux), so a STORE's copy wins the cores when both want them; the pre-faulter
  works in the gaps.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_madvise = _libc.madvise
_madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_madvise.restype = ctypes.c_int
LOWEST_PRIORITY = 19

MADV_POPULATE_WRITE: int = getattr(mmap, "MADV_POPULATE_WRITE", 23)
STEP_BYTES = 64 << 20  # populated per madvise call (stop() waits for at most one step)
POLL_SECONDS = 0.02


class Prefaulter:
    """Keeps ``ahead_bytes`` of the mapping at ``base`` populated past ``high_water()``, in a daemon thread.

    ``base``: the mapping's address; it must stay mapped until :meth:`stop` returns (the
    L1 manager stops the pre-faulter before it closes the arena).
    """

    def __init__(self, base: int, size: int, high_water: Callable[[], int], ahead_bytes: int,
                 *, page_bytes: int = mmap.PAGESIZE) -> None:
        if ahead_bytes < 0:
            raise ValueError(f"ahead_bytes must be >= 0, got {ahead_bytes}")
        self._base = base
        self._size = size
        self._high_water = high_water
        self._ahead = ahead_bytes // page_bytes * page_bytes
        self._page = page_bytes
        self.populated = 0  # bytes [0, populated) have been populated (or were below the high-water mark)
        self.supported = True
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmcache-l1-prefault", daemon=True)

    def start(self) -> None:
        if self._ahead > 0:
            self._thread.start()

    def poke(self) -> None:
        """The allocator grew: look again now rather than at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def step(self) -> int:
        """Populate up to one step towards ``high_water() + ahead``; returns the bytes populated."""
        high = self._high_water()
        target = min(self._size, high + self._ahead)
        start = max(self.populated, high // self._page * self._page)
        if start >= target:
            return 0
        length = min(STEP_BYTES, target - start)
        if _madvise(self._base + start, length, MADV_POPULATE_WRITE) != 0:  # the GIL is released meanwhile
            err = ctypes.get_errno()  # EINVAL: a kernel older than 5.14
            self.supported = False
            log.warning("L1 pre-faulting is not supported here (%s); STOREs fault pages in as they come",
                        os.strerror(err))
            return 0
        self.populated = start + length
        return length

    def _run(self) -> None:
        try:  # this thread only (on Linux a thread id names one thread for setpriority)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
        except (AttributeError, OSError):
            pass
        while not self._stop.is_set():
            if self.step():
                continue
            if not self.supported:
                return
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()
