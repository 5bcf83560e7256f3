"""Tests for lmcache_core.storage.eviction: LRU, IsolatedLRU, noop and plan_eviction."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.keys import ObjectKey
from lmcache_core.storage import eviction
from lmcache_core.storage.eviction import (
    BUILTIN_POLICIES,
    EvictionPolicy,
    IsolatedLRUPolicy,
    IsolationRequiredError,
    LRUPolicy,
    NoopPolicy,
    plan_eviction,
    scan_limit,
)


def key(i: int, salt: str = "") -> ObjectKey:
    """A distinct key per (i, salt)."""
    return ObjectKey(i.to_bytes(32, "big"), "model", 0, 0, salt)


def every(_k: ObjectKey) -> bool:
    return True


def drain_order(policy: EvictionPolicy, salt: str | None = None) -> list[ObjectKey]:
    """The policy's whole eviction order (selection does not untrack keys)."""
    n = policy.tracked_count(salt)
    return policy.select_victims(n, every, cache_salt=salt)


# ---------------------------------------------------------------------- LRU


def test_builtin_registry():
    assert set(BUILTIN_POLICIES) == {"LRU", "IsolatedLRU", "noop"}
    for name, cls in BUILTIN_POLICIES.items():
        p = cls()
        assert p.name == name
        assert p.tracked_count() == 0
    assert BUILTIN_POLICIES["IsolatedLRU"].supports_isolation
    assert not BUILTIN_POLICIES["LRU"].supports_isolation
    assert LRUPolicy() is not LRUPolicy()


def test_lru_tail_chunk_evicted_first():
    p = LRUPolicy()
    a = [key(i) for i in range(3)]
    b = [key(10 + i) for i in range(2)]
    p.on_keys_created(a)
    p.on_keys_created(b)
    assert drain_order(p) == [a[2], a[1], a[0], b[1], b[0]]
    assert p.tracked_count() == 5


def test_lru_touch_moves_prefix_to_mru_in_reverse():
    p = LRUPolicy()
    a = [key(i) for i in range(3)]
    b = [key(10 + i) for i in range(2)]
    p.on_keys_created(a)
    p.on_keys_created(b)
    p.on_keys_touched([a[0], a[1]])
    assert drain_order(p) == [a[2], b[1], b[0], a[1], a[0]]


def test_lru_recreated_key_counts_as_touch_and_untracked_touch_is_ignored():
    p = LRUPolicy()
    a = [key(i) for i in range(3)]
    p.on_keys_created(a)
    p.on_keys_created([a[2]])
    p.on_keys_touched([key(99)])
    assert p.tracked_count() == 3
    assert drain_order(p) == [a[1], a[0], a[2]]


def test_lru_remove_and_selection_does_not_untrack():
    p = LRUPolicy()
    a = [key(i) for i in range(4)]
    p.on_keys_created(a)
    assert p.select_victims(2, every) == [a[3], a[2]]
    assert p.select_victims(2, every) == [a[3], a[2]]  # still tracked until removed
    p.on_keys_removed([a[3], key(99)])
    assert p.tracked_count() == 3
    assert p.select_victims(10, every) == [a[2], a[1], a[0]]
    p.clear()
    assert p.tracked_count() == 0 and p.select_victims(5, every) == []


def test_lru_skips_locked_and_rotates_them():
    p = LRUPolicy()
    a = [key(i) for i in range(3)]
    b = [key(10 + i) for i in range(2)]
    p.on_keys_created(a)
    p.on_keys_created(b)
    locked = {a[2]}
    assert p.select_victims(2, lambda k: k not in locked) == [a[1], a[0]]
    # a[2] was examined while locked and moved to the MRU end.
    assert drain_order(p) == [a[1], a[0], b[1], b[0], a[2]]


def test_lru_select_count_edges():
    p = LRUPolicy()
    p.on_keys_created([key(i) for i in range(3)])
    calls = []
    assert p.select_victims(0, lambda k: calls.append(k) or True) == []
    assert p.select_victims(-5, every) == []
    assert calls == []
    assert len(p.select_victims(100, every)) == 3
    assert p.select_victims(5, lambda k: False) == []
    assert p.tracked_count() == 3


def test_scan_is_bounded_and_locked_run_is_passed_over():
    p = LRUPolicy()
    n_locked = 5000
    keys = [key(i) for i in range(n_locked + 10)]
    # Created one per request, oldest first: keys[0] is at the LRU end.
    for k in keys:
        p.on_keys_created([k])
    locked = set(keys[:n_locked])
    calls = {"n": 0}

    def evictable(k: ObjectKey) -> bool:
        calls["n"] += 1
        return k not in locked

    ticks = 0
    victims: list[ObjectKey] = []
    while not victims:
        calls["n"] = 0
        victims = p.select_victims(1, evictable)
        assert calls["n"] <= scan_limit(1)
        ticks += 1
        assert ticks <= n_locked // scan_limit(1) + 2
    assert victims == [keys[n_locked]]


def test_is_evictable_called_without_policy_lock():
    # A predicate that calls back into the policy would deadlock if the lock were held.
    for p in (LRUPolicy(), IsolatedLRUPolicy()):
        p.on_keys_created([key(i, "s") for i in range(5)])
        out: list = []

        def reentrant(k: ObjectKey, p=p) -> bool:
            return p.tracked_count() > 0

        worker = threading.Thread(target=lambda p=p, f=reentrant: out.append(p.select_victims(3, f, "s")))
        worker.start()
        worker.join(10)
        assert not worker.is_alive()
        assert len(out[0]) == 3


def test_key_moving_between_snapshots_is_returned_once(monkeypatch):
    monkeypatch.setattr(eviction, "SCAN_SLACK", 1)
    monkeypatch.setattr(eviction, "SCAN_FACTOR", 2)
    p = LRUPolicy()
    a, b, c, d, e = (key(i) for i in range(5))
    for k in (a, b, c, d, e):
        p.on_keys_created([k])
    locked = {b, c, d}
    touched = []

    def evictable(k: ObjectKey) -> bool:
        if k == a and not touched:
            # Runs between the two snapshots (the predicate is called outside the lock).
            touched.append(k)
            p.on_keys_touched([a])
        return k not in locked

    # count 3: first snapshot [a, b, c, d]; a then moves to the MRU end (order b c d e a), so the
    # second snapshot, positions [4, 7), is [a] again (and e is missed this tick).
    assert p.select_victims(3, evictable) == [a]
    assert p.tracked_count() == 5


def test_lru_tracked_count_by_salt():
    p = LRUPolicy()
    p.on_keys_created([key(1, "a"), key(2, "a"), key(3, "b")])
    assert p.tracked_count("a") == 2 and p.tracked_count("b") == 1 and p.tracked_count("c") == 0
    assert p.tracked_salts() == []


# ---------------------------------------------------------------------- LRU model check


class LruModel:
    """A list-based reference model of LRUPolicy: index 0 is evicted first."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def create(self, ids: list[int]) -> None:
        for i in reversed(ids):
            if i in self.order:
                self.order.remove(i)
            self.order.append(i)

    def touch(self, ids: list[int]) -> None:
        for i in reversed(ids):
            if i in self.order:
                self.order.remove(i)
                self.order.append(i)

    def remove(self, ids: list[int]) -> None:
        self.order = [i for i in self.order if i not in ids]

    def select(self, count: int, locked: set[int]) -> list[int]:
        if count <= 0:
            return []
        victims, skipped = [], []
        for i in self.order[: scan_limit(count)]:
            if len(victims) == count:
                break
            (skipped if i in locked else victims).append(i)
        for i in skipped:
            self.order.remove(i)
            self.order.append(i)
        return victims


ids_batch = st.lists(st.integers(0, 30), min_size=0, max_size=8, unique=True)
operation = st.one_of(
    st.tuples(st.just("create"), ids_batch),
    st.tuples(st.just("touch"), ids_batch),
    st.tuples(st.just("remove"), ids_batch),
    st.tuples(st.just("select"), st.tuples(st.integers(0, 12), st.frozensets(st.integers(0, 30)))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=40))
def test_lru_matches_model(ops):
    check_against_model(ops)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=40))
def test_lru_matches_model_with_tight_scan_bound(ops):
    # Small bounds so both snapshots and the scan limit come into play with few keys.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(eviction, "SCAN_SLACK", 1)
        mp.setattr(eviction, "SCAN_FACTOR", 2)
        assert scan_limit(3) == 7
        check_against_model(ops)


def check_against_model(ops: list) -> None:
    """Apply ``ops`` to an LRUPolicy and to LruModel; they must agree after every step."""
    p, model = LRUPolicy(), LruModel()
    for op, arg in ops:
        if op == "select":
            count, locked = arg
            got = p.select_victims(count, lambda k: int.from_bytes(k.chunk_hash, "big") not in locked)
            assert [int.from_bytes(k.chunk_hash, "big") for k in got] == model.select(count, set(locked))
        else:
            hook = {"create": p.on_keys_created, "touch": p.on_keys_touched, "remove": p.on_keys_removed}[op]
            hook([key(i) for i in arg])
            getattr(model, op)(list(arg))
        assert p.tracked_count() == len(model.order)
    assert [int.from_bytes(k.chunk_hash, "big") for k in drain_order(p)] == model.order


# ---------------------------------------------------------------------- IsolatedLRU


def test_isolated_requires_salt():
    p = IsolatedLRUPolicy()
    p.on_keys_created([key(1, "a")])
    with pytest.raises(IsolationRequiredError):
        p.select_victims(1, every)
    with pytest.raises(ValueError):
        p.select_victims(1, every, cache_salt=None)


def test_isolated_orders_per_salt():
    p = IsolatedLRUPolicy()
    req = [key(0, "a"), key(1, "b"), key(2, "a"), key(3, ""), key(4, "a")]
    p.on_keys_created(req)
    p.on_keys_created([key(5, "a"), key(6, "b")])
    assert p.tracked_salts() == ["", "a", "b"]
    assert p.tracked_count() == 7
    assert (p.tracked_count("a"), p.tracked_count("b"), p.tracked_count(""), p.tracked_count("z")) == (4, 2, 1, 0)
    assert drain_order(p, "a") == [key(4, "a"), key(2, "a"), key(0, "a"), key(5, "a")]
    assert drain_order(p, "b") == [key(1, "b"), key(6, "b")]
    assert p.select_victims(3, every, cache_salt="z") == []
    p.on_keys_touched([key(0, "a"), key(6, "b"), key(99, "b")])
    assert drain_order(p, "a") == [key(4, "a"), key(2, "a"), key(5, "a"), key(0, "a")]
    assert drain_order(p, "b") == [key(1, "b"), key(6, "b")]
    assert p.tracked_count() == 7


def test_isolated_remove_forgets_empty_salts_and_skips_locked():
    p = IsolatedLRUPolicy()
    p.on_keys_created([key(0, "a"), key(1, "a"), key(2, "b")])
    locked = {key(1, "a")}
    assert p.select_victims(1, lambda k: k not in locked, cache_salt="a") == [key(0, "a")]
    p.on_keys_removed([key(2, "b"), key(77, "zz")])
    assert p.tracked_salts() == ["a"]
    assert p.tracked_count("b") == 0
    p.on_keys_removed([key(0, "a"), key(1, "a")])
    assert p.tracked_salts() == [] and p.tracked_count() == 0
    p.on_keys_created([key(3, "a")])
    assert drain_order(p, "a") == [key(3, "a")]
    p.clear()
    assert p.tracked_salts() == []


# ---------------------------------------------------------------------- noop


def test_noop_never_evicts():
    p = NoopPolicy()
    p.on_keys_created([key(i) for i in range(10)])
    p.on_keys_touched([key(1)])
    p.on_keys_removed([key(2)])
    assert p.tracked_count() == 0
    assert p.select_victims(5, every) == []
    assert plan_eviction(p, 100, 100, 0.8, 0.2, every) == []
    p.clear()


# ---------------------------------------------------------------------- plan_eviction (global)


def make_lru(n: int) -> tuple[LRUPolicy, list[ObjectKey]]:
    p = LRUPolicy()
    keys = [key(i) for i in range(n)]
    p.on_keys_created(keys)
    return p, keys


def test_plan_global_below_watermark_evicts_nothing():
    p, _ = make_lru(100)
    assert plan_eviction(p, 79, 100, 0.8, 0.2, every) == []


def test_plan_global_at_watermark_evicts_ratio():
    p, keys = make_lru(100)
    victims = plan_eviction(p, 80, 100, 0.8, 0.2, every)
    assert victims == list(reversed(keys))[:20]


def test_plan_global_at_least_one_key():
    p, keys = make_lru(10)
    assert plan_eviction(p, 100, 100, 0.8, 0.01, every) == [keys[-1]]


@pytest.mark.parametrize(("used", "capacity", "ratio"), [(100, 0, 0.2), (5, -1, 0.2), (100, 100, 0.0)])
def test_plan_global_no_trigger(used, capacity, ratio):
    p, _ = make_lru(10)
    assert plan_eviction(p, used, capacity, 0.8, ratio, every) == []


def test_plan_global_ratio_above_one_is_capped_and_locked_skipped():
    p, keys = make_lru(10)
    locked = set(keys[5:])
    victims = plan_eviction(p, 100, 100, 0.8, 5.0, lambda k: k not in locked)
    assert victims == list(reversed(keys[:5]))


def test_plan_global_empty_policy():
    assert plan_eviction(LRUPolicy(), 100, 100, 0.8, 0.2, every) == []


# ---------------------------------------------------------------------- plan_eviction (isolation)


def make_isolated(counts: dict[str, int]) -> IsolatedLRUPolicy:
    p = IsolatedLRUPolicy()
    base = 0
    for salt, n in counts.items():
        p.on_keys_created([key(base + i, salt) for i in range(n)])
        base += n
    return p


def salts_of(victims: list[ObjectKey]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in victims:
        out[k.cache_salt] = out.get(k.cache_salt, 0) + 1
    return out


def test_plan_isolation_quota_rules():
    p = make_isolated({"over": 10, "under": 10, "noquota": 4, "": 3, "idle": 5, "zero": 2})
    usage = {"over": 80, "under": 79, "noquota": 1, "": 7, "idle": 0, "zero": 9, "ghost": 50}
    quotas = {"over": 100, "under": 100, "zero": 0, "idle": 1}
    victims = plan_eviction(p, 0, 0, 0.8, 0.5, every, usage_by_salt=usage, quota_limits=quotas)
    # over: at watermark*limit -> half its keys; under: below -> none; noquota and "": allowlist ->
    # all; idle: no bytes -> none; zero quota: like none -> all; ghost: bytes but no keys -> none.
    assert salts_of(victims) == {"over": 5, "noquota": 4, "": 3, "zero": 2}
    over = [k for k in victims if k.cache_salt == "over"]
    assert over == drain_order(p, "over")[:5]


def test_plan_isolation_without_usage_or_quotas():
    p = make_isolated({"a": 3})
    assert plan_eviction(p, 100, 100, 0.8, 0.2, every) == []
    assert salts_of(plan_eviction(p, 0, 0, 0.8, 0.2, every, usage_by_salt={"a": 1})) == {"a": 3}


def test_plan_isolation_at_least_one_and_locked():
    p = make_isolated({"a": 10})
    locked = {key(9, "a")}  # the first victim in order
    victims = plan_eviction(
        p, 0, 0, 0.8, 0.01, lambda k: k not in locked, usage_by_salt={"a": 1000}, quota_limits={"a": 100}
    )
    assert victims == [key(8, "a")]


# ---------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("cls", [LRUPolicy, IsolatedLRUPolicy])
def test_concurrent_updates_and_selection(cls):
    p = cls()
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        try:
            for r in range(200):
                ks = [key(w * 100_000 + r * 10 + i, f"s{w % 2}") for i in range(10)]
                p.on_keys_created(ks)
                p.on_keys_touched(ks[:3])
                p.on_keys_removed(ks[5:])
        except BaseException as exc:
            errors.append(exc)

    def selector() -> None:
        try:
            while not stop.is_set():
                for salt in ("s0", "s1"):
                    victims = p.select_victims(7, every, cache_salt=salt)
                    assert all(k.cache_salt == salt for k in victims) or not p.supports_isolation
        except BaseException as exc:
            errors.append(exc)

    sel = threading.Thread(target=selector)
    sel.start()
    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(60)
    stop.set()
    sel.join(60)
    assert errors == []
    assert p.tracked_count() == 4 * 200 * 5
