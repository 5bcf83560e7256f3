"""Several threads hammer one L1Manager; every invariant must hold throughout and at the end.

Each thread writes a key's bytes with a value derived from the key alone, so a
reader holding a read lock must always see exactly that value: two live
objects sharing memory (a double allocation) would show up as foreign bytes.
A checker thread runs ``memcheck`` (no overlap, used == sum of live objects,
per-salt usage consistent) while the workers run. Iterations and wall time are
both bounded.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l1 import L1Listener, L1Manager, L1Result

R = L1Result
THREADS = 4
ITERATIONS = 1500
DEADLINE_S = 30.0
KEYSPACE = 160
SIZES = (4096, 10_000, 20_000)
SALTS = ("", "a", "b")

KEYS = [ObjectKey(i.to_bytes(32, "big"), "m", 0, 0, SALTS[i % 3]) for i in range(KEYSPACE)]
VALUE = {k: (i % 251) + 1 for i, k in enumerate(KEYS)}


class LiveSet(L1Listener):
    """Tracks which keys exist from created/deleted events alone."""

    def __init__(self) -> None:
        self.live: set[ObjectKey] = set()
        self.created = 0
        self.deleted = 0

    def on_keys_created(self, keys: list[ObjectKey]) -> None:
        self.live.update(keys)
        self.created += len(keys)

    def on_keys_deleted(self, keys: list[ObjectKey]) -> None:
        for k in keys:
            assert k in self.live, "deleted a key never created"
            self.live.discard(k)
        self.deleted += len(keys)


def worker(l1: L1Manager, seed: int, start: threading.Barrier, stop_at: float, stats: Counter[str]) -> None:
    rng = random.Random(seed)
    held: Counter[ObjectKey] = Counter()  # read locks this thread holds
    start.wait()
    for _ in range(ITERATIONS):
        if time.monotonic() > stop_at:
            break
        batch = rng.sample(KEYS, rng.randint(1, 8))
        op = rng.random()
        if op < 0.35:
            temporary = rng.random() < 0.2
            res, views = l1.reserve_write(batch, rng.choice(SIZES), temporary=temporary)
            assert set(res) <= {R.SUCCESS, R.KEY_NOT_WRITABLE, R.OUT_OF_MEMORY}, res
            mine = [k for k, r in zip(batch, res) if r is R.SUCCESS]
            for k, r, v in zip(batch, res, views):
                assert (v is not None) == (r is R.SUCCESS)
                if v is not None:
                    v.fill_(VALUE[k])
            stats["reserved"] += len(mine)
            stats["oom"] += res.count(R.OUT_OF_MEMORY)
            if temporary:
                # Nobody else can touch our live reservation: the hand-off must succeed.
                assert l1.finish_write_and_reserve_read(mine, n=1) == [R.SUCCESS] * len(mine)
                held.update(mine)
            else:
                assert l1.finish_write(mine) == [R.SUCCESS] * len(mine)
        elif op < 0.65:
            n = rng.randint(1, 3)
            res = l1.reserve_read(batch, n=n)
            assert set(res) <= {R.SUCCESS, R.KEY_NOT_EXIST}, res
            for k, r in zip(batch, res):
                if r is R.SUCCESS:
                    held[k] += n
        elif op < 0.8:
            res = l1.delete(batch, evicted=rng.random() < 0.5)
            assert set(res) <= {R.SUCCESS, R.KEY_NOT_EXIST, R.KEY_IS_LOCKED}, res
            for k, r in zip(batch, res):
                # A key we hold a read lock on can never be deleted under us.
                assert not (held[k] and r is not R.KEY_IS_LOCKED), (k, r)
            stats["deleted"] += res.count(R.SUCCESS)
        elif op < 0.85:
            assert set(l1.touch(batch)) <= {R.SUCCESS, R.KEY_NOT_EXIST}
        # Read and release some of what we hold: the data must be intact.
        if held and rng.random() < 0.6:
            ks = rng.sample(sorted(held, key=KEYS.index), rng.randint(1, len(held)))
            res, views = l1.read(ks)
            assert res == [R.SUCCESS] * len(ks), res
            for k, v in zip(ks, views):
                assert v is not None and bool(v.eq(VALUE[k]).all()), f"foreign bytes in {k!r}"
            counts = [held[k] for k in ks]
            for k, c in zip(ks, counts):
                assert l1.finish_read([k], n=c) == [R.SUCCESS]
                del held[k]
            stats["read"] += len(ks)
    # Release everything still held.
    for k, c in held.items():
        assert l1.finish_read([k], n=c) == [R.SUCCESS]


def test_concurrent_operations_keep_every_invariant() -> None:
    l1 = L1Manager(
        3 << 19, write_ttl_seconds=600, read_ttl_seconds=600, slab_bytes=128 << 10, enable_metrics=False
    )
    live = LiveSet()
    l1.register_listener(live)
    stats: Counter[str] = Counter()
    stats_lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS + 1)
    stop_at = time.monotonic() + DEADLINE_S
    checks = 0

    def run(seed: int) -> None:
        mine: Counter[str] = Counter()  # per thread: Counter updates are not atomic
        try:
            worker(l1, seed, start, stop_at, mine)
            with stats_lock:
                stats.update(mine)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"l1-stress-{i}") for i in range(THREADS)]
    for t in threads:
        t.start()
    start.wait()
    try:
        # Check consistent snapshots while the workers run.
        while any(t.is_alive() for t in threads) and time.monotonic() < stop_at + 10:
            problems = l1.memcheck()
            assert problems == [], problems
            used, total = l1.get_memory_usage()
            assert 0 <= used <= total
            checks += 1
            for t in threads:
                t.join(timeout=0.05)
    finally:
        for t in threads:
            t.join(timeout=DEADLINE_S)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    if errors:
        raise errors[0]

    assert checks > 0
    assert stats["reserved"] > 0 and stats["read"] > 0 and stats["deleted"] > 0 and stats["oom"] > 0, stats
    assert l1.memcheck() == []
    status = l1.report_status()
    assert status["write_locked_count"] == 0 and status["read_locked_count"] == 0, status
    assert status["temporary_count"] == 0, "every temporary was freed by its last reader"
    present = {k for k in KEYS if k in l1}
    assert live.live == present, "listener view diverged from the manager"
    assert status["total_object_count"] == len(present)
    # Nothing is locked: a plain delete removes everything and frees all memory.
    res = l1.delete(KEYS)
    assert R.KEY_IS_LOCKED not in res
    assert l1.get_memory_usage()[0] == 0 and l1.usage_by_salt() == {} and len(l1) == 0
    assert live.live == set()
    # The allocator got its memory back in one piece: the whole arena fits one big batch.
    assert l1.reserve_write(KEYS[:48], 32 << 10).results == [R.SUCCESS] * 48
    l1.close()
