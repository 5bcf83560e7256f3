"""LookupTracker against a real L1: prefix locks, exactly-once results, lock accounting."""

from __future__ import annotations

import pytest

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager, L1Result
from lmcache_core.storage.lookups import LookupTracker

OBJ = 4096


@pytest.fixture
def l1():
    m = L1Manager(64 * OBJ, enable_metrics=False)
    yield m
    m.close()


def chunk_keys(n_chunks, ranks=(0x02000200, 0x02010201), salt=""):
    return [[ObjectKey(bytes([c]) * 32, "m", r, 0, salt) for r in ranks] for c in range(n_chunks)]


def store(l1, keys):
    flat = [k for ks in keys for k in ks]
    assert all(r == L1Result.SUCCESS for r in l1.reserve_write(flat, OBJ).results)
    l1.finish_write(flat)


def read_locked(l1) -> int:
    return l1.report_status()["read_locked_count"]


def test_hits_are_the_leading_run_of_complete_chunks_and_only_those_stay_locked(l1):
    keys = chunk_keys(4)
    store(l1, keys[:2] + [keys[2][:1]] + keys[3:])  # chunk 2 misses rank 1
    t = LookupTracker(l1)
    assert t.lookup("r", keys, readers=2) == 2
    assert read_locked(l1) == 4  # chunks 0 and 1, both ranks; chunk 3's locks were given back
    assert not l1.is_key_evictable(keys[0][0]) and l1.is_key_evictable(keys[3][0])
    assert t.take_result("r") == 2
    assert t.take_result("r") == 0  # exactly once
    assert t.take_result("unknown") == 0


def test_each_retrieve_releases_one_reader_lock_and_never_more(l1):
    keys = chunk_keys(2)
    store(l1, keys)
    t = LookupTracker(l1)
    t.lookup("r", keys, readers=2)
    rank0 = [ks[0] for ks in keys]
    assert t.holds("r", rank0)
    assert t.release_one("r", rank0) == 2
    assert t.holds("r", rank0)  # the second reader's lock
    assert t.release_one("r", rank0) == 2
    assert not t.holds("r", rank0)
    assert t.release_one("r", rank0) == 0  # nothing more to give back
    assert t.locked_object_count() == 2  # rank 1 still held
    assert t.release_request("r") == 2
    assert read_locked(l1) == 0


def test_free_lookup_locks_releases_only_its_chunk_range(l1):
    keys = chunk_keys(3)
    store(l1, keys)
    t = LookupTracker(l1)
    assert t.lookup("r", keys, readers=1) == 3
    assert t.release_chunks("r", 1, 3) == 4
    assert read_locked(l1) == 2
    assert t.release_chunks("r", 2, 1) == 0
    assert t.release_chunks("other", 0, 3) == 0
    t.release_request("r")
    assert read_locked(l1) == 0


def test_a_dead_connection_releases_only_its_own_requests(l1):
    keys = chunk_keys(2)
    store(l1, keys)
    t = LookupTracker(l1)
    t.lookup("a", keys, readers=1, owner=b"dead")
    t.lookup("b", keys, readers=1, owner=b"alive")
    assert t.release_owner(b"dead") == ["a"]
    assert t.locked_object_count() == 4  # request b keeps its locks
    assert t.take_result("a") == 0 and t.take_result("b") == 2
    t.release_request("b")
    assert read_locked(l1) == 0


def test_no_hits_takes_no_locks(l1):
    t = LookupTracker(l1)
    assert t.lookup("r", chunk_keys(2), readers=1) == 0
    assert read_locked(l1) == 0 and t.locked_object_count() == 0
    assert t.take_result("r") == 0
