"""L1Manager: states, TTL locks, refusals, temporaries, listeners, status and metrics."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from itertools import pairwise

import pytest
import torch
from prometheus_client import REGISTRY

from lmcache_core.keys import ObjectKey
from lmcache_core.storage import metrics
from lmcache_core.storage.l1 import L1ClosedError, L1Listener, L1Manager, L1Result

R = L1Result
KiB = 1 << 10
MiB = 1 << 20
OBJ = 10_000  # bytes per object in most tests (aligned to 12 KiB)
SLOT = 12 * KiB


class FakeClock:
    """A manual clock for TTL tests: no sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder(L1Listener):
    """Records every listener call as (event, keys)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, list[ObjectKey]]] = []

    def on_keys_created(self, keys: list[ObjectKey]) -> None:
        self.events.append(("created", list(keys)))

    def on_keys_write_finished(self, keys: list[ObjectKey]) -> None:
        self.events.append(("write_finished", list(keys)))

    def on_keys_accessed(self, keys: list[ObjectKey]) -> None:
        self.events.append(("accessed", list(keys)))

    def on_keys_deleted(self, keys: list[ObjectKey]) -> None:
        self.events.append(("deleted", list(keys)))

    def take(self) -> list[tuple[str, list[ObjectKey]]]:
        out, self.events = self.events, []
        return out


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(i.to_bytes(32, "big"), "org/model", 0x01010100, 0, salt)


def keys(n: int, start: int = 0, salt: str = "") -> list[ObjectKey]:
    return [key(i, salt) for i in range(start, start + n)]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def l1(clock: FakeClock) -> Iterator[L1Manager]:
    m = L1Manager(16 * MiB, write_ttl_seconds=600, read_ttl_seconds=300, clock=clock, slab_bytes=MiB)
    yield m
    if m.report_status()["is_healthy"]:
        assert m.memcheck() == []
    m.close()


@pytest.fixture
def rec(l1: L1Manager) -> Recorder:
    r = Recorder()
    l1.register_listener(r)
    return r


def stored(l1: L1Manager, ks: list[ObjectKey], nbytes: int = OBJ) -> None:
    """Write-reserve and admit ``ks``."""
    res, _ = l1.reserve_write(ks, nbytes)
    assert res == [R.SUCCESS] * len(ks)
    assert l1.finish_write(ks) == [R.SUCCESS] * len(ks)


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# -- state transitions ---------------------------------------------------------------------


def test_write_reserved_key_is_invisible_and_locked(l1: L1Manager) -> None:
    ks = keys(3)
    res, views = l1.reserve_write(ks, OBJ)
    assert res == [R.SUCCESS] * 3
    assert all(v is not None and v.dtype == torch.uint8 and v.numel() == OBJ for v in views)
    assert l1.reserve_read(ks) == [R.KEY_NOT_EXIST] * 3
    assert l1.read(ks).results == [R.KEY_NOT_READABLE] * 3
    assert l1.finish_read(ks) == [R.KEY_IN_WRONG_STATE] * 3
    assert l1.delete(ks) == [R.KEY_IS_LOCKED] * 3
    assert l1.reserve_write(ks, OBJ).results == [R.KEY_NOT_WRITABLE] * 3
    assert not any(l1.is_key_evictable(k) for k in ks)
    assert all(l1.contains(k) and k in l1 for k in ks) and len(l1) == 3
    status = l1.report_status()
    assert status["write_locked_count"] == 3 and status["read_locked_count"] == 0


def test_bytes_written_are_the_bytes_read(l1: L1Manager) -> None:
    ks = keys(4)
    _, views = l1.reserve_write(ks, OBJ)
    payloads = [torch.randint(0, 256, (OBJ,), dtype=torch.uint8) for _ in ks]
    for v, p in zip(views, payloads):
        assert v is not None
        v.copy_(p)
    assert l1.finish_write(ks) == [R.SUCCESS] * 4
    assert l1.reserve_read(ks) == [R.SUCCESS] * 4
    res, out = l1.read(ks)
    assert res == [R.SUCCESS] * 4
    for o, p in zip(out, payloads):
        assert o is not None and torch.equal(o, p)
    # Views are disjoint pieces of the one arena.
    ptrs = sorted(o.data_ptr() for o in out if o is not None)
    assert all(b - a >= SLOT for a, b in pairwise(ptrs))
    assert l1.finish_read(ks) == [R.SUCCESS] * 4


def test_ready_key_refusals(l1: L1Manager) -> None:
    ks = keys(2)
    stored(l1, ks)
    assert l1.reserve_write(ks, OBJ).results == [R.KEY_NOT_WRITABLE] * 2  # STORE dedup
    assert l1.finish_write(ks) == [R.KEY_IN_WRONG_STATE] * 2
    assert l1.finish_write_and_reserve_read(ks) == [R.KEY_IN_WRONG_STATE] * 2
    assert l1.read(ks).results == [R.KEY_NOT_READABLE] * 2  # read without a lock
    assert l1.finish_read(ks) == [R.KEY_IN_WRONG_STATE] * 2  # finish_read without a lock
    assert all(l1.is_key_evictable(k) for k in ks)


def test_absent_keys(l1: L1Manager) -> None:
    ks = keys(2)
    assert l1.finish_write(ks) == [R.KEY_NOT_EXIST] * 2
    assert l1.finish_write_and_reserve_read(ks) == [R.KEY_NOT_EXIST] * 2
    assert l1.reserve_read(ks) == [R.KEY_NOT_EXIST] * 2
    res, views = l1.read(ks)
    assert res == [R.KEY_NOT_EXIST] * 2 and views == [None, None]
    assert l1.finish_read(ks) == [R.KEY_NOT_EXIST] * 2
    assert l1.delete(ks) == [R.KEY_NOT_EXIST] * 2
    assert l1.touch(ks) == [R.KEY_NOT_EXIST] * 2
    assert not l1.is_key_evictable(ks[0])


def test_read_locks_count_and_block_delete(l1: L1Manager) -> None:
    (k,) = ks = keys(1)
    stored(l1, ks)
    assert l1.reserve_read(ks, n=2) == [R.SUCCESS]
    assert l1.reserve_read(ks, n=1) == [R.SUCCESS]  # 3 locks
    assert not l1.is_key_evictable(k)
    assert l1.delete(ks) == [R.KEY_IS_LOCKED]
    assert l1.finish_read(ks, n=2) == [R.SUCCESS]
    assert l1.read(ks).results == [R.SUCCESS]  # one lock left
    assert l1.finish_read(ks) == [R.SUCCESS]
    assert l1.read(ks).results == [R.KEY_NOT_READABLE]
    assert l1.finish_read(ks) == [R.KEY_IN_WRONG_STATE]
    assert l1.is_key_evictable(k)
    assert l1.delete(ks) == [R.SUCCESS]
    assert k not in l1 and l1.get_memory_usage()[0] == 0


def test_forced_delete_removes_locked_keys_and_frees_them_when_their_holders_let_go(l1: L1Manager) -> None:
    a, b = keys(2)
    stored(l1, [a])
    l1.reserve_read([a])
    l1.reserve_write([b], OBJ)
    assert l1.delete([a, b]) == [R.KEY_IS_LOCKED] * 2
    assert l1.delete([a, b], force=True) == [R.SUCCESS] * 2
    assert len(l1) == 0 and a not in l1 and b not in l1
    assert l1.delete([a, b], force=True) == [R.KEY_NOT_EXIST] * 2  # already gone
    assert l1.get_memory_usage()[0] == 2 * SLOT  # still held by the reader and the writer
    assert l1.report_status()["retired_object_count"] == 2
    assert l1.finish_read([a]) == [R.SUCCESS]
    assert l1.finish_write([b]) == [R.KEY_NOT_EXIST]  # the write is dropped: the removal won
    assert l1.get_memory_usage()[0] == 0 and l1.report_status()["retired_object_count"] == 0


def test_forced_clear_never_hands_memory_in_use_to_a_new_object(l1: L1Manager, rec: Recorder) -> None:
    """A RETRIEVE copying out, the L2 write-behind reading, a STORE writing: a clear under them
    must not let a new STORE reuse their memory (LMCache's force clear does; a retrieved byte
    could then differ from the stored one)."""
    reader_keys, writer_keys = keys(3), keys(2, start=10)
    payloads = [torch.randint(0, 256, (OBJ,), dtype=torch.uint8) for _ in reader_keys]
    _, views = l1.reserve_write(reader_keys, OBJ)
    for v, p in zip(views, payloads):
        assert v is not None
        v.copy_(p)
    stored_views = views
    l1.finish_write(reader_keys)
    assert l1.reserve_read(reader_keys) == [R.SUCCESS] * 3
    _, held = l1.read(reader_keys)
    _, writing = l1.reserve_write(writer_keys, OBJ)
    rec.take()

    assert l1.clear(force=True) == 5
    assert rec.take() == [("deleted", reader_keys + writer_keys)]
    assert len(l1) == 0 and not any(k in l1 for k in reader_keys + writer_keys)
    # Gone for everyone else: no new read lock, no new STORE of the key, no touch, not evictable.
    assert l1.reserve_read(reader_keys) == [R.KEY_NOT_EXIST] * 3
    assert l1.reserve_write(reader_keys, OBJ).results == [R.KEY_NOT_WRITABLE] * 3
    assert l1.touch(reader_keys) == [R.KEY_NOT_EXIST] * 3
    assert not any(l1.is_key_evictable(k) for k in reader_keys)

    # Fill the rest of the arena with new objects: none lands on memory still in use.
    busy = [(v.data_ptr(), v.data_ptr() + SLOT) for v in [*held, *writing] if v is not None]
    new = keys(16 * MiB // SLOT, start=100)
    res, new_views = l1.reserve_write(new, OBJ)
    assert res.count(R.SUCCESS) == 16 * MiB // SLOT - 5 and res[-5:] == [R.OUT_OF_MEMORY] * 5
    for v in new_views:
        if v is not None:
            assert all(v.data_ptr() + SLOT <= lo or v.data_ptr() >= hi for lo, hi in busy)
            v.fill_(0xEE)
    assert l1.finish_write([k for k, r in zip(new, res) if r == R.SUCCESS]).count(R.SUCCESS) == len(new) - 5
    # The holders still read (and write) their own bytes.
    again = l1.read(reader_keys)
    assert again.results == [R.SUCCESS] * 3
    for v, old, p in zip(again.views, stored_views, payloads):
        assert v is not None and old is not None and v.data_ptr() == old.data_ptr() and torch.equal(v, p)
    assert l1.memcheck() == []
    # Letting go frees them; nobody is told twice.
    assert l1.finish_read(reader_keys) == [R.SUCCESS] * 3
    assert l1.finish_write(writer_keys) == [R.KEY_NOT_EXIST] * 2
    assert l1.report_status()["retired_object_count"] == 0
    assert all(event != "deleted" for event, _ in rec.take())
    assert l1.reserve_write(reader_keys, OBJ).results == [R.SUCCESS] * 3  # the key can be stored again


def test_a_retired_object_whose_holder_vanished_is_freed_when_the_lock_expires(
        l1: L1Manager, clock: FakeClock) -> None:
    a, b = keys(2)
    stored(l1, [a])
    l1.reserve_read([a])
    l1.reserve_write([b], OBJ)
    l1.clear(force=True)
    assert l1.get_memory_usage()[0] == 2 * SLOT
    clock.advance(301)  # the read lock expired; the write lock (600 s) not yet
    assert l1.reserve_write([a], OBJ).results == [R.SUCCESS]  # reclaimed on the way: a can be stored again
    assert l1.report_status()["retired_object_count"] == 1
    clock.advance(300)
    assert l1.report_status()["retired_object_count"] == 0
    assert l1.get_memory_usage()[0] == SLOT  # only the new a


def test_abandon_write_frees_a_writers_own_reservation(l1: L1Manager, rec: Recorder) -> None:
    a, b, c = keys(3)
    stored(l1, [c])
    l1.reserve_write([a, b], OBJ)
    rec.take()
    assert l1.abandon_write([a, c, keys(1, start=9)[0]]) == [R.SUCCESS, R.KEY_IN_WRONG_STATE, R.KEY_NOT_EXIST]
    assert rec.take() == [("deleted", [a])]
    l1.clear(force=True)  # b retired (its writer still holds it), c freed
    rec.take()
    assert l1.abandon_write([b]) == [R.SUCCESS]  # the writer gives up: freed at once, not reported again
    assert rec.take() == []
    assert l1.get_memory_usage()[0] == 0 and l1.report_status()["retired_object_count"] == 0


def test_lock_count_bounds(l1: L1Manager) -> None:
    ks = keys(1)
    stored(l1, ks)
    for bad in (0, 129, -1):
        with pytest.raises(ValueError):
            l1.reserve_read(ks, n=bad)
        with pytest.raises(ValueError):
            l1.finish_write_and_reserve_read(ks, n=bad)
    assert l1.reserve_read(ks, n=128) == [R.SUCCESS]
    with pytest.raises(ValueError):
        l1.reserve_write(ks, 0)


def test_duplicate_keys_in_one_reserve(l1: L1Manager) -> None:
    a, b = keys(2)
    res, views = l1.reserve_write([a, b, a], OBJ)
    assert res == [R.SUCCESS, R.SUCCESS, R.KEY_NOT_WRITABLE]
    assert views[2] is None
    assert l1.get_memory_usage()[0] == 2 * SLOT


# -- out of memory ---------------------------------------------------------------------------


def test_out_of_memory_is_prefix_partial_and_reserves_nothing_for_the_rest(clock: FakeClock) -> None:
    l1 = L1Manager(4 * SLOT, clock=clock, slab_bytes=SLOT)
    rec = Recorder()
    l1.register_listener(rec)
    before = sample("lmcache_mp_l1_allocation_failure_total", {"during": "l1_store"})
    try:
        stored(l1, keys(1))
        rec.take()
        ks = keys(6)  # key 0 is resident and is skipped without using memory
        res, views = l1.reserve_write(ks, OBJ)
        assert res == [R.KEY_NOT_WRITABLE, R.SUCCESS, R.SUCCESS, R.SUCCESS, R.OUT_OF_MEMORY, R.OUT_OF_MEMORY]
        assert [v is not None for v in views] == [False, True, True, True, False, False]
        assert ks[4] not in l1 and ks[5] not in l1
        assert l1.get_memory_usage() == (4 * SLOT, 4 * SLOT)
        assert rec.take() == [("created", ks[1:4])]
        assert sample("lmcache_mp_l1_allocation_failure_total", {"during": "l1_store"}) == before + 2
        # Nothing half-reserved: freeing the reserved ones leaves room for exactly those.
        assert l1.abandon_write(ks[1:4]) == [R.SUCCESS] * 3
        assert l1.reserve_write(ks[3:6], OBJ).results == [R.SUCCESS] * 3
        assert l1.reserve_write(keys(1, start=50), OBJ).results == [R.OUT_OF_MEMORY]
        assert l1.memcheck() == []
        assert l1.report_status()["allocator"]["failed_allocations"] == 2
    finally:
        l1.close()


def test_temporary_oom_is_counted_as_prefetch(clock: FakeClock) -> None:
    l1 = L1Manager(SLOT, clock=clock, slab_bytes=SLOT)
    before = sample("lmcache_mp_l1_allocation_failure_total", {"during": "l2_prefetch"})
    try:
        assert l1.reserve_write(keys(2), OBJ, temporary=True).results == [R.SUCCESS, R.OUT_OF_MEMORY]
        assert sample("lmcache_mp_l1_allocation_failure_total", {"during": "l2_prefetch"}) == before + 1
    finally:
        l1.close()


# -- TTL locks ------------------------------------------------------------------------------


def test_expired_write_lock_makes_key_evictable_and_deletable(l1: L1Manager, clock: FakeClock) -> None:
    (k,) = ks = keys(1)
    l1.reserve_write(ks, OBJ)
    clock.advance(599.9)
    assert not l1.is_key_evictable(k)
    clock.advance(0.2)
    assert l1.is_key_evictable(k)
    assert l1.report_status()["write_locked_count"] == 0
    assert l1.reserve_read(ks) == [R.KEY_NOT_EXIST]  # still not admitted
    assert l1.delete(ks) == [R.SUCCESS]


def test_expired_write_reservation_is_taken_over(l1: L1Manager, clock: FakeClock, rec: Recorder) -> None:
    a, b = ks = keys(2)
    _, old = l1.reserve_write(ks, OBJ)
    assert l1.reserve_write(ks, OBJ).results == [R.KEY_NOT_WRITABLE] * 2
    clock.advance(601)
    rec.take()
    # Same aligned size: the same memory is handed to the new writer.
    res, new = l1.reserve_write([a], OBJ - 100)
    assert res == [R.SUCCESS]
    assert new[0] is not None and old[0] is not None and new[0].data_ptr() == old[0].data_ptr()
    assert new[0].numel() == OBJ - 100
    assert rec.take() == [("created", [a])]
    # Another size: the old object is dropped and a new one allocated.
    res, new_b = l1.reserve_write([b], 3 * SLOT)
    assert res == [R.SUCCESS] and new_b[0] is not None and new_b[0].numel() == 3 * SLOT
    assert rec.take() == [("deleted", [b]), ("created", [b])]
    assert l1.get_memory_usage()[0] == SLOT + 3 * SLOT
    assert l1.finish_write(ks) == [R.SUCCESS] * 2
    assert l1.memcheck() == []


def test_expired_read_lock_overrides_its_count(l1: L1Manager, clock: FakeClock) -> None:
    (k,) = ks = keys(1)
    stored(l1, ks)
    l1.reserve_read(ks, n=5)
    clock.advance(300.1)
    assert l1.read(ks).results == [R.KEY_NOT_READABLE]
    assert l1.is_key_evictable(k)
    # A new lock restarts the count at n: one finish_read releases it.
    assert l1.reserve_read(ks, n=1) == [R.SUCCESS]
    assert l1.delete(ks) == [R.KEY_IS_LOCKED]
    assert l1.finish_read(ks) == [R.SUCCESS]
    assert l1.delete(ks) == [R.SUCCESS]


def test_expired_lock_is_deletable_without_force(l1: L1Manager, clock: FakeClock) -> None:
    ks = keys(1)
    stored(l1, ks)
    l1.reserve_read(ks, n=3)
    clock.advance(301)
    assert l1.delete(ks) == [R.SUCCESS]


def test_locking_again_extends_the_expiry(l1: L1Manager, clock: FakeClock) -> None:
    (k,) = ks = keys(1)
    stored(l1, ks)
    l1.reserve_read(ks)
    clock.advance(200)
    l1.reserve_read(ks)  # expiry now 500 s after the first lock
    clock.advance(200)
    assert not l1.is_key_evictable(k)
    assert l1.finish_read(ks, n=2) == [R.SUCCESS]
    assert l1.is_key_evictable(k)


def test_finish_read_after_expiry_is_wrong_state(l1: L1Manager, clock: FakeClock) -> None:
    ks = keys(1)
    stored(l1, ks)
    l1.reserve_read(ks)
    clock.advance(301)
    assert l1.finish_read(ks) == [R.KEY_IN_WRONG_STATE]
    assert ks[0] in l1  # a permanent object stays


# -- temporary objects ------------------------------------------------------------------------


def test_temporary_object_is_freed_after_its_last_reader(l1: L1Manager, rec: Recorder) -> None:
    ks = keys(2)
    assert l1.reserve_write(ks, OBJ, temporary=True).results == [R.SUCCESS] * 2
    assert l1.report_status()["temporary_count"] == 2
    assert l1.finish_write_and_reserve_read(ks, n=2) == [R.SUCCESS] * 2
    assert l1.read(ks).results == [R.SUCCESS] * 2
    assert l1.finish_read(ks) == [R.SUCCESS] * 2
    assert all(k in l1 for k in ks)
    assert l1.finish_read(ks[::-1]) == [R.SUCCESS] * 2
    assert not any(k in l1 for k in ks)
    assert l1.get_memory_usage()[0] == 0
    assert l1.report_status()["temporary_count"] == 0
    assert rec.take() == [
        ("created", ks),  # reserve_write
        ("created", ks),  # finish_write_and_reserve_read
        ("deleted", ks[::-1]),  # freed by the last finish_read, in request order
    ]


def test_temporary_finish_write_tells_no_listener(l1: L1Manager, rec: Recorder) -> None:
    ks = keys(2)
    l1.reserve_write(ks, OBJ, temporary=True)
    rec.take()
    assert l1.finish_write(ks) == [R.SUCCESS] * 2
    assert rec.take() == []
    # Admitted, readable, and freed after its reader.
    assert l1.reserve_read(ks) == [R.SUCCESS] * 2
    assert l1.finish_read(ks) == [R.SUCCESS] * 2
    assert len(l1) == 0


def test_temporary_with_only_expired_locks_is_freed_by_finish_read(l1: L1Manager, clock: FakeClock) -> None:
    ks = keys(1)
    l1.reserve_write(ks, OBJ, temporary=True)
    l1.finish_write_and_reserve_read(ks, n=1)
    clock.advance(301)
    assert l1.finish_read(ks) == [R.KEY_IN_WRONG_STATE]
    assert len(l1) == 0


def test_prefetch_handoff_of_permanent_keys_is_not_write_finished(l1: L1Manager, rec: Recorder) -> None:
    ks = keys(2)
    l1.reserve_write(ks, OBJ)
    rec.take()
    assert l1.finish_write_and_reserve_read(ks, n=3) == [R.SUCCESS] * 2
    assert rec.take() == [("created", ks)]
    assert l1.report_status()["read_locked_count"] == 2
    assert l1.finish_read(ks, n=3) == [R.SUCCESS] * 2
    assert all(k in l1 for k in ks)  # permanent: stays


# -- listeners ------------------------------------------------------------------------------


def test_listeners_see_keys_in_request_order(l1: L1Manager, rec: Recorder) -> None:
    ks = keys(4)
    l1.reserve_write(ks, OBJ)
    assert rec.take() == [("created", ks)]
    assert l1.finish_write([ks[2], ks[0], ks[3], ks[1]]) == [R.SUCCESS] * 4
    order = [ks[2], ks[0], ks[3], ks[1]]
    assert rec.take() == [("created", order), ("write_finished", order)]
    missing = key(99)
    l1.reserve_read([ks[3], missing, ks[1]])
    assert rec.take() == [("accessed", [ks[3], ks[1]])]
    l1.touch([missing, ks[0], ks[2]])
    assert rec.take() == [("accessed", [ks[0], ks[2]])]
    l1.delete([ks[3], ks[2], missing])  # ks[3] is read-locked
    assert rec.take() == [("deleted", [ks[2]])]
    l1.read(ks)
    l1.finish_read([ks[3], ks[1]])
    assert rec.take() == []  # reads and read releases are not events
    assert l1.clear() == 3
    ((event, cleared),) = rec.take()
    assert event == "deleted" and set(cleared) == {ks[0], ks[1], ks[3]} and len(cleared) == 3


def test_failed_ops_fire_no_events(l1: L1Manager, rec: Recorder) -> None:
    ks = keys(2)
    stored(l1, ks)
    rec.take()
    l1.reserve_write(ks, OBJ)
    l1.finish_write(ks)
    l1.finish_write_and_reserve_read(ks)
    l1.delete(keys(2, start=10))
    l1.finish_read(ks)
    assert rec.take() == []


def test_a_failing_listener_does_not_break_the_manager(
    l1: L1Manager, rec: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(L1Listener):
        def on_keys_created(self, keys: list[ObjectKey]) -> None:
            raise RuntimeError("boom")

    l1.register_listener(Broken())
    l1.register_listener(L1Listener())  # the base class is a valid no-op listener
    with caplog.at_level(logging.ERROR):
        assert l1.reserve_write(keys(1), OBJ).results == [R.SUCCESS]
    assert "boom" in caplog.text
    assert rec.take() == [("created", keys(1))]
    assert keys(1)[0] in l1


# -- clear, touch, usage, status ------------------------------------------------------------


def test_clear_keeps_locked_objects_unless_forced(l1: L1Manager, rec: Recorder) -> None:
    free, read_locked, writing = keys(3)
    stored(l1, [free, read_locked])
    l1.reserve_read([read_locked])
    l1.reserve_write([writing], OBJ)
    rec.take()
    assert l1.clear() == 1
    assert rec.take() == [("deleted", [free])]
    assert len(l1) == 2
    assert l1.clear(force=True) == 2
    assert len(l1) == 0 and l1.get_memory_usage()[0] == 2 * SLOT  # retired until their holders let go
    assert sorted(rec.take()[0][1], key=lambda k: k.chunk_hash) == [read_locked, writing]
    l1.finish_read([read_locked])
    l1.finish_write([writing])
    assert l1.get_memory_usage()[0] == 0


def test_usage_by_salt(l1: L1Manager) -> None:
    a = keys(3, salt="alice")
    b = keys(2, start=10, salt="bob")
    d = keys(1, start=20)
    stored(l1, a)
    stored(l1, b, nbytes=2 * SLOT)
    l1.reserve_write(d, 100)
    assert l1.usage_by_salt() == {"alice": 3 * SLOT, "bob": 4 * SLOT, "": 4 * KiB}
    assert l1.get_memory_usage()[0] == 7 * SLOT + 4 * KiB
    l1.delete(b)
    assert l1.usage_by_salt() == {"alice": 3 * SLOT, "": 4 * KiB}
    l1.abandon_write(d)
    l1.delete(a)
    assert l1.usage_by_salt() == {}


def test_report_status_fields(l1: L1Manager, clock: FakeClock) -> None:
    stored(l1, keys(3))
    l1.reserve_read(keys(2))
    l1.reserve_write(keys(1, start=10), OBJ)
    l1.reserve_write(keys(2, start=20), OBJ, temporary=True)
    s = l1.report_status()
    expected = {
        "is_healthy": True,
        "total_object_count": 6,
        "write_locked_count": 3,
        "read_locked_count": 2,
        "temporary_count": 2,
        "memory_used_bytes": 6 * SLOT,
        "memory_total_bytes": 16 * MiB,
        "write_ttl_seconds": 600.0,
        "read_ttl_seconds": 300.0,
    }
    assert {k: s[k] for k in expected} == expected
    assert s["memory_usage_ratio"] == pytest.approx(6 * SLOT / (16 * MiB))
    clock.advance(400)  # read locks expired; write locks not yet
    s = l1.report_status()
    assert (s["write_locked_count"], s["read_locked_count"]) == (3, 0)
    clock.advance(300)
    assert l1.report_status()["write_locked_count"] == 0


def test_close_frees_and_refuses_further_use(clock: FakeClock) -> None:
    l1 = L1Manager(4 * MiB, clock=clock)
    ks = keys(2)
    stored(l1, ks)
    l1.close()
    l1.close()
    assert l1.report_status()["is_healthy"] is False
    assert not l1.is_key_evictable(ks[0])
    for op in (
        lambda: l1.reserve_write(ks, OBJ),
        lambda: l1.reserve_read(ks),
        lambda: l1.read(ks),
        lambda: l1.finish_read(ks),
        lambda: l1.finish_write(ks),
        lambda: l1.delete(ks),
        lambda: l1.clear(),
        lambda: l1.touch(ks),
    ):
        with pytest.raises(L1ClosedError):
            op()
    assert l1.arena.closed


def test_shm_backed_l1(clock: FakeClock) -> None:
    name = f"lmcache-l1-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    l1 = L1Manager(8 * MiB, shm_name=name, clock=clock)
    try:
        ks = keys(1)
        _, (view,) = l1.reserve_write(ks, 4)
        assert view is not None
        view.copy_(torch.tensor([1, 2, 3, 4], dtype=torch.uint8))
        s = l1.report_status()
        assert s["shm_name"] == name
        assert s["pinned"] == torch.cuda.is_available()
        offset = view.data_ptr() - l1.arena.base_ptr
        with open(f"/dev/shm/{name}", "rb") as f:
            f.seek(offset)
            assert f.read(4) == bytes([1, 2, 3, 4])
    finally:
        l1.close()
    assert not os.path.exists(f"/dev/shm/{name}")


def test_a_huge_l1_starts_small(clock: FakeClock) -> None:
    """--l1-size-gb 64 must not take 64 GiB: only written objects become resident."""

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    before = rss()
    l1 = L1Manager(64 << 30, clock=clock)
    try:
        ks = keys(2048)
        res, views = l1.reserve_write(ks, MiB)
        assert res == [R.SUCCESS] * 2048
        assert rss() - before < 64 * MiB
        for v in views[:128]:
            assert v is not None
            v.fill_(1)
        assert rss() - before >= 128 * MiB
        assert l1.report_status()["memory_used_bytes"] == 2048 * MiB
    finally:
        l1.close()


# -- metrics -----------------------------------------------------------------------------


def test_metrics_count_reads_writes_and_evictions(l1: L1Manager) -> None:
    salt = f"m-{uuid.uuid4().hex[:6]}"
    lbl = {"cache_salt": metrics.salt_label(salt)}
    w0 = sample("lmcache_mp_l1_write_chunks_total", lbl)
    r0 = sample("lmcache_mp_l1_read_chunks_total", lbl)
    e0 = sample("lmcache_mp_l1_evicted_chunks_total", lbl)
    d0 = sample("lmcache_mp_l1_write_chunks_total", {"cache_salt": "_default"})
    ks = keys(3, salt=salt)
    stored(l1, ks)
    stored(l1, keys(2, start=50))
    l1.reserve_read(ks[:2])
    l1.read(ks)  # two readable
    l1.finish_read(ks[:2])
    l1.delete(ks[:1], evicted=True)
    l1.delete(ks[1:2])  # a plain delete is not an eviction
    assert sample("lmcache_mp_l1_write_chunks_total", lbl) == w0 + 3
    assert sample("lmcache_mp_l1_write_chunks_total", {"cache_salt": "_default"}) == d0 + 2
    assert sample("lmcache_mp_l1_read_chunks_total", lbl) == r0 + 2
    assert sample("lmcache_mp_l1_evicted_chunks_total", lbl) == e0 + 1


def test_usage_gauges_follow_the_bound_manager(l1: L1Manager) -> None:
    stored(l1, keys(4))
    assert sample("lmcache_mp_l1_memory_usage_bytes") == 4 * SLOT
    assert sample("lmcache_mp_l1_usage_ratio") == pytest.approx(4 * SLOT / (16 * MiB))


def test_metrics_reset_and_bounded_salt_labels(l1: L1Manager) -> None:
    stored(l1, keys(1, salt="x"))
    assert sample("lmcache_mp_l1_write_chunks_total", {"cache_salt": "x"}) >= 1
    metrics.reset()
    assert sample("lmcache_mp_l1_write_chunks_total", {"cache_salt": "x"}) == 0
    stored(l1, keys(1, start=5, salt="x"))
    assert sample("lmcache_mp_l1_write_chunks_total", {"cache_salt": "x"}) == 1
    labels = {metrics.salt_label(f"s{i}") for i in range(metrics.MAX_SALT_LABELS + 10)}
    assert metrics.OTHER_SALT_LABEL in labels
    assert len(labels) <= metrics.MAX_SALT_LABELS + 1
    assert metrics.salt_label("") == metrics.DEFAULT_SALT_LABEL
    metrics.reset()
