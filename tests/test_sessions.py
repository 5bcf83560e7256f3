"""Sessions: cached hashes per request, reuse rules, ranges, TTL expiry and listeners."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.hashing import InvalidTokenError, TokenHasher
from lmcache_core.sessions import EXPIRED, REMOVED, InvalidTokenRangeError, Session, SessionManager

C = 4  # small chunks keep the token lists short


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingHasher(TokenHasher):
    """The real hasher, recording which chunk ranges it was asked to hash."""

    def __init__(self, chunk_size: int = C) -> None:
        super().__init__(chunk_size)
        self.calls: list[tuple[int, int]] = []

    def hash_packed(self, packed, start_chunk=0, end_chunk=None, prefix=None):  # type: ignore[no-untyped-def]
        self.calls.append((start_chunk, end_chunk))
        return super().hash_packed(packed, start_chunk, end_chunk, prefix)


def expected(tokens: list[int]) -> list[bytes]:
    return TokenHasher(C).hash_chunks(tokens)


# -- Session -----------------------------------------------------------------------


def test_hashes_match_the_hasher_and_are_cached() -> None:
    hasher = CountingHasher()
    session = Session("r", hasher)
    tokens = list(range(100, 120))  # 5 chunks
    assert session.set_tokens(tokens) == 0
    assert session.get_hashes(0, 8) == expected(tokens)[:2]
    assert session.get_hashes(8, 20) == expected(tokens)[2:]
    assert session.get_hashes(0, 20) == expected(tokens)
    assert hasher.calls == [(0, 2), (2, 5)]  # the last call hashed nothing new
    assert session.cached_hashes() == expected(tokens)
    assert session.num_tokens == 20 and session.chunk_size == C


def test_extending_tokens_reuses_cached_hashes() -> None:
    hasher = CountingHasher()
    session = Session("r", hasher)
    tokens = list(range(12))
    session.hashes_for(tokens, 0, 12)
    longer = tokens + [50, 51, 52, 53, 54]
    assert session.set_tokens(longer) == 3
    assert session.get_hashes(12, 16) == expected(longer)[3:4]
    assert hasher.calls == [(0, 3), (3, 4)]


def test_changed_tokens_keep_only_the_common_prefix() -> None:
    hasher = CountingHasher()
    session = Session("r", hasher)
    tokens = list(range(24))  # 6 chunks
    session.hashes_for(tokens, 0, 24)
    changed = list(tokens)
    changed[13] = 999  # chunk 3 differs, so chunks 3.. must be recomputed
    assert session.set_tokens(changed) == 3
    assert session.get_hashes(0, 24) == expected(changed)
    assert hasher.calls[-1] == (3, 6)
    changed_first = [7] + tokens[1:]
    assert session.set_tokens(changed_first) == 0
    assert session.get_hashes(0, 24) == expected(changed_first)


def test_shorter_tokens_keep_the_hashes_they_still_cover() -> None:
    session = Session("r", TokenHasher(C))
    tokens = list(range(24))
    session.hashes_for(tokens, 0, 24)
    assert session.set_tokens(tokens[:10]) == 2
    assert session.cached_hashes() == expected(tokens)[:2]
    assert session.get_hashes(0, 10) == expected(tokens)[:2]


@given(
    st.lists(st.integers(0, 2**32 - 1), max_size=40),
    st.lists(st.lists(st.integers(0, 50), max_size=40), min_size=1, max_size=5),
)
@settings(max_examples=150, deadline=None)
def test_any_sequence_of_token_lists_gives_correct_hashes(first: list[int], later: list[list[int]]) -> None:
    session = Session("r", TokenHasher(C))
    for tokens in [first, *later]:
        session.set_tokens(tokens)
        end = len(tokens)
        assert session.get_hashes(0, end) == expected(tokens)
        assert session.cached_hashes() == expected(tokens)


def test_range_rules() -> None:
    session = Session("r", TokenHasher(C))
    session.set_tokens(list(range(10)))  # 2 full chunks + 2 tokens
    assert session.get_hashes(0, 10) == expected(list(range(10)))  # end = token count: partial tail dropped
    assert session.get_hashes(4, 8) == expected(list(range(10)))[1:2]
    assert session.get_hashes(8, 10) == []
    assert session.get_hashes(4, 4) == []
    for start, end in [(1, 8), (0, 6), (0, 11), (8, 4), (-4, 4), (0, 9)]:
        with pytest.raises(InvalidTokenRangeError):
            session.get_hashes(start, end)
    for start, end in [(0.0, 8), (0, True), ("0", 8)]:
        with pytest.raises(InvalidTokenRangeError):
            session.get_hashes(start, end)  # type: ignore[arg-type]


def test_empty_session_has_no_hashes() -> None:
    session = Session("r", TokenHasher(C))
    assert session.get_hashes(0, 0) == []
    with pytest.raises(InvalidTokenRangeError):
        session.get_hashes(0, 4)


def test_bad_tokens_leave_the_session_unchanged() -> None:
    session = Session("r", TokenHasher(C))
    session.hashes_for(list(range(8)), 0, 8)
    with pytest.raises(InvalidTokenError):
        session.set_tokens(list(range(8)) + [-1])  # checked even in the partial tail
    assert session.num_tokens == 8
    assert session.cached_hashes() == expected(list(range(8)))


def test_tensor_tokens_share_the_cache_with_lists() -> None:
    torch = pytest.importorskip("torch")
    hasher = CountingHasher()
    session = Session("r", hasher)
    tokens = list(range(16))
    session.hashes_for(tokens, 0, 16)
    assert session.set_tokens(torch.tensor(tokens + [1, 2, 3, 4])) == 4
    assert session.get_hashes(0, 20) == expected(tokens + [1, 2, 3, 4])


def test_accesses_update_last_access() -> None:
    clock = FakeClock()
    session = Session("r", TokenHasher(C), clock)
    assert session.last_access == 1000.0
    clock.advance(5)
    session.set_tokens([1, 2, 3, 4])
    assert session.last_access == 1005.0
    clock.advance(5)
    session.get_hashes(0, 4)
    assert session.last_access == 1010.0
    session.touch(now=2000.0)
    assert session.last_access == 2000.0


def test_concurrent_workers_get_correct_hashes_and_hash_each_chunk_once() -> None:
    hasher = CountingHasher(16)
    session = Session("r", hasher)
    base = list(range(16 * 64))
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    results: dict[int, list[bytes]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            # Every worker sends the same prompt, as a RETRIEVE from each TP rank does.
            results[i] = session.hashes_for(list(base), 0, len(base))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and not any(t.is_alive() for t in threads)
    want = TokenHasher(16).hash_chunks(base)
    assert all(results[i] == want for i in range(threads_n))
    assert sum(stop - start for start, stop in hasher.calls) == 64  # no chunk hashed twice


# -- SessionManager ------------------------------------------------------------------


def make_manager(ttl: float = 600.0) -> tuple[SessionManager, FakeClock]:
    clock = FakeClock()
    return SessionManager(TokenHasher(C), ttl_seconds=ttl, clock=clock), clock


def test_get_or_create_get_remove() -> None:
    manager, _ = make_manager()
    assert manager.get("a") is None
    a = manager.get_or_create("a")
    assert manager.get_or_create("a") is a and manager.get("a") is a
    assert manager.count() == 1
    assert manager.remove("a") is True
    assert manager.remove("a") is False
    assert manager.get("a") is None and manager.count() == 0
    assert manager.get_or_create("a") is not a  # a fresh session after removal


def test_cleanup_drops_only_sessions_idle_longer_than_ttl() -> None:
    manager, clock = make_manager(ttl=600)
    manager.get_or_create("old")
    clock.advance(300)
    manager.get_or_create("young")
    clock.advance(300)
    assert manager.cleanup() == 0  # "old" is idle exactly the ttl: not longer
    clock.advance(0.5)
    assert manager.cleanup() == 1
    assert manager.get("old") is None and manager.get("young") is not None
    assert manager.cleanup(now=clock.now + 10_000) == 1
    assert manager.count() == 0


def test_any_access_keeps_a_session_alive() -> None:
    manager, clock = make_manager(ttl=10)
    by_get = manager.get_or_create("by-get")
    by_tokens = manager.get_or_create("by-tokens")
    manager.get_or_create("idle")
    clock.advance(8)
    manager.get("by-get")
    by_tokens.set_tokens([1, 2, 3, 4])
    clock.advance(8)
    assert manager.cleanup() == 1
    assert manager.get("idle") is None
    assert manager.get("by-get") is by_get and manager.get("by-tokens") is by_tokens


def test_listeners_hear_removal_and_expiry() -> None:
    manager, clock = make_manager(ttl=1)
    events: list[tuple[str, str]] = []
    manager.add_destroy_listener(lambda s, reason: events.append((s.request_id, reason)))
    manager.get_or_create("a")
    manager.get_or_create("b")
    manager.remove("a")
    manager.remove("missing")
    clock.advance(2)
    manager.cleanup()
    assert events == [("a", REMOVED), ("b", EXPIRED)]


def test_a_failing_listener_does_not_stop_the_others() -> None:
    manager, clock = make_manager(ttl=1)
    seen: list[str] = []

    def broken(session: Session, reason: str) -> None:
        raise RuntimeError("boom")

    manager.add_destroy_listener(broken)
    manager.add_destroy_listener(lambda s, r: seen.append(s.request_id))
    for rid in ("a", "b", "c"):
        manager.get_or_create(rid)
    clock.advance(5)
    assert manager.cleanup() == 3
    assert sorted(seen) == ["a", "b", "c"]
    assert manager.remove_destroy_listener(broken) is True
    assert manager.remove_destroy_listener(broken) is False


def test_listeners_may_call_back_into_the_manager() -> None:
    manager, clock = make_manager(ttl=1)
    counts: list[int] = []
    manager.add_destroy_listener(lambda s, r: counts.append(manager.count()))
    manager.add_destroy_listener(lambda s, r: manager.get_or_create(s.request_id + "-next"))
    manager.get_or_create("a")
    clock.advance(2)
    assert manager.cleanup() == 1
    assert counts == [0]
    assert manager.get("a-next") is not None


def test_listener_gets_the_session_with_its_hashes() -> None:
    # END_SESSION uses the dropped session's hashes to touch its L1 keys.
    manager, _ = make_manager()
    captured: list[list[bytes]] = []
    manager.add_destroy_listener(lambda s, r: captured.append(s.cached_hashes()))
    manager.get_or_create("a").hashes_for(list(range(8)), 0, 8)
    manager.remove("a")
    assert captured == [expected(list(range(8)))]


def test_report_status() -> None:
    manager, _ = make_manager(ttl=30)
    manager.get_or_create("a")
    manager.get_or_create("b")
    assert manager.report_status() == {"active_sessions": 2, "session_ttl_seconds": 30.0}
    assert manager.ttl_seconds == 30.0 and manager.hasher.chunk_size == C


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), True, "600"])
def test_ttl_must_be_positive(ttl: object) -> None:
    with pytest.raises(ValueError):
        SessionManager(TokenHasher(C), ttl_seconds=ttl)  # type: ignore[arg-type]


def test_concurrent_get_or_create_yields_one_session() -> None:
    manager, _ = make_manager()
    n = 8
    barrier = threading.Barrier(n)
    got: list[Session] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait(timeout=10)
        for _ in range(200):
            s = manager.get_or_create("shared")
            with lock:
                got.append(s)

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(got) == n * 200 and len({id(s) for s in got}) == 1
    assert manager.count() == 1
