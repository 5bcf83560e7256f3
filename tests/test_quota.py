"""Tests for lmcache_core.storage.quota: QuotaManager and the GiB conversions."""

from __future__ import annotations

import logging
import math
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmcache_core.storage.quota import GIB, QuotaManager, bytes_to_gib, gib_to_bytes

# ---------------------------------------------------------------------- conversions


@pytest.mark.parametrize(
    ("gib", "expected"),
    [
        (0, 0),
        (0.0, 0),
        (1, GIB),
        (1.5, 1_610_612_736),
        (0.1, 107_374_182),  # truncated, like LMCache's int(limit_gb * 2**30)
        (1e-12, 0),  # below one byte
        (2**40, 2**70),  # ints stay exact however large
        (1e15, int(1e15 * GIB)),
    ],
)
def test_gib_to_bytes(gib, expected):
    assert gib_to_bytes(gib) == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1, -0.5, 1e308, True, "1", None])
def test_gib_to_bytes_rejects(bad):
    with pytest.raises(ValueError):
        gib_to_bytes(bad)


def test_bytes_to_gib():
    assert bytes_to_gib(0) == 0.0
    assert bytes_to_gib(GIB) == 1.0
    assert bytes_to_gib(GIB // 2) == 0.5
    assert bytes_to_gib(2**80) == 2.0**50


@pytest.mark.parametrize("bad", [-1, 1.0, True, "5", None])
def test_bytes_to_gib_rejects(bad):
    with pytest.raises(ValueError):
        bytes_to_gib(bad)


@given(st.integers(min_value=0, max_value=2**53))
def test_bytes_round_trip_exact_up_to_2_53(n):
    # n / 2**30 is exact in a double while n fits the 53-bit mantissa.
    assert gib_to_bytes(bytes_to_gib(n)) == n


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_gib_to_bytes_truncates_and_is_monotonic(gib):
    b = gib_to_bytes(gib)
    assert isinstance(b, int)
    # Truncation of the exact float product (Python compares int and float exactly).
    assert 0 <= b <= gib * GIB < b + 1
    assert gib_to_bytes(gib * 2) >= b


# ---------------------------------------------------------------------- quotas


def test_set_get_delete_list():
    q = QuotaManager()
    assert q.get_quota("a") is None
    assert q.get_limit_bytes("a") == 0  # unregistered: allowlist limit 0
    q.set_quota("a", 100)
    q.set_quota("", 7)  # the default salt is an ordinary salt
    assert q.get_quota("a") == 100 and q.get_limit_bytes("a") == 100
    assert q.get_quota("") == 7
    assert q.list_quotas() == {"a": 100, "": 7}
    q.set_quota("a", 200)
    assert q.get_limit_bytes("a") == 200
    assert q.delete_quota("a") is True
    assert q.delete_quota("a") is False
    assert q.get_quota("a") is None
    assert q.list_quotas() == {"": 7}


def test_zero_quota_is_listed_and_limits_to_zero():
    q = QuotaManager()
    q.set_quota("z", 0)
    assert q.get_quota("z") == 0
    assert q.get_limit_bytes("z") == 0
    assert q.list_quotas() == {"z": 0}


def test_huge_quota():
    q = QuotaManager()
    q.set_quota("big", 2**100)
    assert q.get_limit_bytes("big") == 2**100
    q.set_quota("from-gib", gib_to_bytes(1e12))
    assert q.get_quota("from-gib") == int(1e12 * GIB)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", None])
def test_set_quota_rejects_bad_limits(bad):
    q = QuotaManager()
    with pytest.raises(ValueError):
        q.set_quota("a", bad)
    assert q.list_quotas() == {}


def test_set_quota_rejects_non_str_salt():
    with pytest.raises(ValueError):
        QuotaManager().set_quota(None, 1)  # type: ignore[arg-type]


def test_list_quotas_is_a_copy():
    q = QuotaManager()
    q.set_quota("a", 1)
    listed = q.list_quotas()
    listed["b"] = 2
    assert q.list_quotas() == {"a": 1}


# ---------------------------------------------------------------------- usage


def test_usage_is_the_largest_tier_with_a_breakdown():
    # Each tier enforces the full limit, so the usage compared with it is the largest tier's (issue 18).
    q = QuotaManager()
    assert q.usage_by_salt() == {}
    q.register_usage_provider("l1", lambda: {"a": 10, "": 5})
    q.register_usage_provider("fs", lambda: {"a": 1, "b": 2})
    assert q.usage_by_salt() == {"a": 10, "": 5, "b": 2}
    assert q.usage_by_tier() == {"l1": {"a": 10, "": 5}, "fs": {"a": 1, "b": 2}}
    assert q.usage_bytes("a") == 10
    assert q.usage_bytes("nope") == 0
    assert q.unregister_usage_provider("fs") is True
    assert q.unregister_usage_provider("fs") is False
    assert q.usage_by_salt() == {"a": 10, "": 5}


def test_usage_provider_replaced_by_name():
    q = QuotaManager()
    q.register_usage_provider("l1", lambda: {"a": 1})
    q.register_usage_provider("l1", lambda: {"a": 5})
    assert q.usage_bytes("a") == 5


def test_usage_is_live():
    q = QuotaManager()
    usage = {"a": 1}
    q.register_usage_provider("l1", lambda: usage)
    usage["a"] = 99
    assert q.usage_bytes("a") == 99


class _HalfBroken(dict):
    """A mapping whose iteration fails after the first item."""

    def items(self):
        it = iter(super().items())
        yield next(it)
        raise OSError("adapter went away")


def test_failing_provider_is_skipped_and_logged_once(caplog):
    q = QuotaManager()

    def broken():
        raise RuntimeError("no usage")

    q.register_usage_provider("ok", lambda: {"a": 3})
    q.register_usage_provider("broken", broken)
    q.register_usage_provider("half", lambda: _HalfBroken(a=100, b=100))
    with caplog.at_level(logging.DEBUG, logger="lmcache_core.storage.quota"):
        for _ in range(3):
            # The half-broken provider contributes nothing, not its first item.
            assert q.usage_by_salt() == {"a": 3}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert sorted(r.args[0] for r in errors) == ["broken", "half"]
    assert all(r.exc_info for r in errors)


def test_register_non_callable_provider():
    with pytest.raises(ValueError):
        QuotaManager().register_usage_provider("x", 5)  # type: ignore[arg-type]


def test_concurrent_quota_updates():
    q = QuotaManager()

    def worker(i: int) -> None:
        for j in range(200):
            q.set_quota(f"s{i}-{j}", j)
            if j % 2:
                assert q.delete_quota(f"s{i}-{j}")

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    quotas = q.list_quotas()
    assert len(quotas) == 8 * 100
    assert all(v % 2 == 0 for v in quotas.values())
