"""The opt-in L1 pre-faulter: memory past the allocator's high-water mark is populated ahead of STOREs.

Residency is read from the kernel (``/proc/self/smaps``, the arena mapping's ``Rss``),
and polled to a deadline: the pre-faulter is a background thread.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
import time

import pytest
import torch

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager, L1Result
from lmcache_core.storage.prefault import MADV_POPULATE_WRITE
from lmcache_core.testing import wait_for

MIB = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)


def resident(address: int, length: int) -> int:
    """Resident bytes of ``[address, address + length)`` of this process, page by page (``mincore``).

    Exact for the arena's own range: a VMA's ``Rss`` in ``/proc/self/smaps`` may include
    neighbouring anonymous memory the kernel merged into the same mapping.
    """
    page = mmap.PAGESIZE
    pages = (length + page - 1) // page
    vec = (ctypes.c_ubyte * pages)()
    if _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(length), vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return sum(v & 1 for v in vec) * page


def key(i: int) -> ObjectKey:
    return ObjectKey(i.to_bytes(32, "big"), "m", 0, 0, "")


def kernel_supports_populate_write() -> bool:
    mm = mmap.mmap(-1, 4096)
    try:
        mm.madvise(MADV_POPULATE_WRITE, 0, 4096)
        return True
    except OSError:
        return False
    finally:
        mm.close()


def test_default_is_lazy_nothing_is_touched_before_a_store():
    l1 = L1Manager(256 * MIB)
    try:
        base, size = l1._arena.tensor.data_ptr(), l1._arena.size
        assert resident(base, size) == 0
        assert l1._prefault is None
    finally:
        l1.close()


def test_this_kernel_can_populate_ahead():
    # The pre-faulter needs Linux >= 5.14; elsewhere it logs once and the server runs lazily.
    assert kernel_supports_populate_write()


def test_prefaulter_keeps_memory_ahead_of_the_high_water_mark_and_never_changes_bytes():
    ahead = 32 * MIB
    l1 = L1Manager(512 * MIB, prefault_ahead_bytes=ahead)
    try:
        base, size = l1._arena.tensor.data_ptr(), l1._arena.size
        wait_for(lambda: resident(base, size) >= ahead, what="the pre-faulter to get ahead")
        assert resident(base, size) <= ahead  # ahead of use, not the configured size
        # Store 48 objects of 1 MiB with a known pattern: the high-water mark moves past them.
        keys = [key(i) for i in range(48)]
        views = l1.reserve_write(keys, MIB)
        assert all(r == L1Result.SUCCESS for r in views.results)
        for i, v in enumerate(views.views):
            v.fill_(i % 251)
        l1.finish_write(keys)
        high = l1._alloc.high_water
        assert high >= 48 * MIB
        wait_for(lambda: resident(base, size) >= high + ahead, what="the pre-faulter to follow the high-water mark")
        assert resident(base, size) <= high + ahead
        read = l1.reserve_read(keys)
        assert all(r == L1Result.SUCCESS for r in read)
        got = l1.read(keys)
        for i, v in enumerate(got.views):
            assert torch.all(v == i % 251)
        l1.finish_read(keys)
    finally:
        l1.close()


def test_the_launcher_flag_reaches_the_storage_config():
    from lmcache_core.config import build_configs
    from lmcache_core.testing import parse_options

    args = parse_options([], ["--l1-prefault-ahead-gb", "0.5"])
    assert build_configs(args)["storage_manager"].l1_prefault_ahead_gb == 0.5
    assert build_configs(parse_options([], []))["storage_manager"].l1_prefault_ahead_gb == 0.0  # off by default
    with pytest.raises(SystemExit):
        parse_options([], ["--l1-prefault-ahead-gb", "-1"])


def test_a_populate_step_lets_other_python_threads_run():
    # mmap.madvise holds the GIL for the whole call (a 64 MiB step froze the ZMQ loop for
    # ~24 ms); the pre-faulter's call through ctypes must not. While one step populates,
    # this thread keeps stamping the clock: no gap between stamps may span most of the step.
    from lmcache_core.storage.arena import Arena
    from lmcache_core.storage.prefault import STEP_BYTES, Prefaulter

    arena = Arena(STEP_BYTES, pin=False)
    base = arena.base_ptr
    pf = Prefaulter(base, STEP_BYTES, lambda: 0, STEP_BYTES)
    window: list[float] = []

    def one_step() -> None:
        window.append(time.perf_counter())
        window.append(pf.step())
        window.append(time.perf_counter())

    stamps: list[float] = []
    worker = threading.Thread(target=one_step)
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
        time.sleep(0)
    worker.join()
    try:
        start, populated, end = window
        assert populated == STEP_BYTES and pf.supported
        assert resident(base, STEP_BYTES) == STEP_BYTES
        inside = [start] + [t for t in stamps if start < t < end] + [end]
        longest_gap = max(b - a for a, b in zip(inside, inside[1:]))
        assert longest_gap < 0.5 * (end - start), (longest_gap, end - start, len(inside))
    finally:
        arena.close()
