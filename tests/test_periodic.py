"""Tests for lmcache_core.observability.periodic: PeriodicThread and PeriodicThreadRegistry."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from lmcache_core.observability.periodic import (
    IrrecoverableError,
    PeriodicThread,
    PeriodicThreadRegistry,
    ThreadLevel,
    ThreadRunSummary,
)

STATUS_FIELDS = {
    "name",
    "level",
    "interval",
    "init_wait",
    "is_running",
    "is_active",
    "last_run_time",
    "last_run_ago",
    "total_runs",
    "failed_runs",
    "success_rate",
    "last_summary",
}


class FakeClock:
    """A settable clock for the activity checks."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def threads():
    """Collects started threads and stops them whatever the test outcome."""
    started: list[PeriodicThread] = []
    yield started
    for t in started:
        t.stop(timeout=5)


def test_level_values():
    assert [lvl.value for lvl in ThreadLevel] == ["critical", "high", "medium", "low"]
    assert ThreadLevel("high") is ThreadLevel.HIGH
    assert ThreadLevel.LOW == "low"


def test_runs_repeatedly_and_stops(threads):
    calls = []
    t = PeriodicThread("rep", 0.001, lambda: calls.append(1))
    threads.append(t)
    t.start()
    assert t.wait_for_runs(5, timeout=10)
    assert t.is_running
    assert t.stop(timeout=5)
    assert not t.is_running
    assert t.total_runs == len(calls) >= 5
    assert t.failed_runs == 0
    assert t.get_status()["success_rate"] == 100.0


def test_stop_interrupts_long_interval_and_init_wait(threads):
    t1 = PeriodicThread("long-interval", 3600, lambda: None)
    t2 = PeriodicThread("long-init", 1, lambda: None, init_wait=3600)
    threads.extend([t1, t2])
    t1.start()
    t2.start()
    assert t1.wait_for_runs(1, timeout=10)
    t0 = time.monotonic()
    assert t1.stop(timeout=10)
    assert t2.stop(timeout=10)
    # Far below the interval/init_wait: the waits are interruptible.
    assert time.monotonic() - t0 < 5
    assert t1.total_runs == 1
    assert t2.total_runs == 0


def test_exception_is_failed_run_and_loop_continues(threads, caplog):
    n = {"calls": 0}

    def fn():
        n["calls"] += 1
        if n["calls"] % 2:
            raise ValueError("boom")
        return "ok"

    t = PeriodicThread("flaky", 0.001, fn)
    threads.append(t)
    with caplog.at_level(logging.DEBUG, logger="lmcache_core.observability.periodic"):
        t.start()
        assert t.wait_for_runs(6, timeout=10)
        t.stop()
    total, failed = t.total_runs, t.failed_runs
    assert total >= 6
    assert failed == (total + 1) // 2
    status = t.get_status()
    assert status["success_rate"] == pytest.approx((total - failed) * 100.0 / total)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    # Logged with traceback once, however often it repeats.
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "boom" in errors[0].getMessage()


def test_distinct_error_messages_each_logged_once(caplog):
    msgs = iter(["a", "a", "b", "a", "b", "c"])

    def fn():
        raise RuntimeError(next(msgs))

    t = PeriodicThread("errs", 1, fn)
    with caplog.at_level(logging.ERROR, logger="lmcache_core.observability.periodic"):
        for _ in range(6):
            summary = t.run_once()
            assert not summary.success
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 3
    assert t.failed_runs == 6
    assert t.last_summary.message == "RuntimeError: c"


def test_irrecoverable_error_stops_loop(threads):
    n = {"calls": 0}

    def fn():
        n["calls"] += 1
        if n["calls"] == 2:
            raise IrrecoverableError("fatal")

    t = PeriodicThread("doomed", 0.001, fn)
    threads.append(t)
    t.start()
    assert t.join(timeout=10)
    assert not t.is_running
    assert not t.is_active
    assert (t.total_runs, t.failed_runs, n["calls"]) == (2, 1, 2)
    assert t.last_summary.message == "IrrecoverableError: fatal"


def test_run_once_return_values():
    results = iter([None, "hello", {"evicted": 3}, 42])
    t = PeriodicThread("manual", 1, lambda: next(results))
    s1, s2, s3, s4 = (t.run_once() for _ in range(4))
    assert isinstance(s1, ThreadRunSummary)
    assert (s1.success, s1.message, s1.extra_info) == (True, "", {})
    assert (s2.message, s2.extra_info) == ("hello", {})
    assert (s3.message, s3.extra_info) == ("", {"evicted": 3})
    assert s4.message == "42"
    assert s1.duration_ms >= 0
    assert t.total_runs == 4
    # Not started: never running, never active.
    assert not t.is_running and not t.is_active


def test_run_once_reraises_irrecoverable():
    def fn():
        raise IrrecoverableError("x")

    t = PeriodicThread("manual-fatal", 1, fn)
    with pytest.raises(IrrecoverableError):
        t.run_once()
    assert (t.total_runs, t.failed_runs) == (1, 1)


def test_is_active_after_runs_uses_three_intervals(threads):
    clock = FakeClock(1000.0)
    t = PeriodicThread("act", 100, lambda: None, clock=clock)
    threads.append(t)
    t.start()
    assert t.wait_for_runs(1, timeout=10)  # the next run is 100 real seconds away
    assert t.is_active
    clock.now = 1299.999
    assert t.is_active
    clock.now = 1300.0
    assert not t.is_active
    status = t.get_status()
    assert status["is_running"] and not status["is_active"]
    assert status["last_run_time"] == 1000.0
    assert status["last_run_ago"] == pytest.approx(300.0)


def test_is_active_before_first_run_allows_init_wait(threads):
    clock = FakeClock(0.0)
    t = PeriodicThread("warming", 10, lambda: None, init_wait=100, clock=clock)
    threads.append(t)
    t.start()
    clock.now = 129.999
    assert t.is_active
    clock.now = 130.0
    assert not t.is_active
    s = t.get_status()
    assert s["last_run_time"] is None and s["last_run_ago"] is None
    assert s["total_runs"] == 0 and s["success_rate"] == 100.0


def test_get_status_fields(threads):
    clock = FakeClock(50.0)
    t = PeriodicThread("st", 2.5, lambda: {"k": 1}, level=ThreadLevel.HIGH, init_wait=0.5, clock=clock)
    threads.append(t)
    before = t.get_status()
    assert set(before) == STATUS_FIELDS
    assert before["is_running"] is False and before["last_summary"] is None
    t.start()
    assert t.wait_for_runs(1, timeout=10)
    s = t.get_status()
    assert set(s) == STATUS_FIELDS
    assert s["name"] == "st"
    assert s["level"] == "high"
    assert s["interval"] == 2.5 and s["init_wait"] == 0.5
    assert s["is_running"] is True and s["is_active"] is True
    assert s["total_runs"] == 1 and s["failed_runs"] == 0
    assert s["last_summary"]["success"] is True
    assert s["last_summary"]["extra_info"] == {"k": 1}
    assert s["last_summary"]["timestamp"] == 50.0


def test_restart_after_stop(threads):
    t = PeriodicThread("again", 0.001, lambda: None)
    threads.append(t)
    t.start()
    assert t.wait_for_runs(1, timeout=10)
    assert t.stop()
    runs = t.total_runs
    t.start()
    assert t.is_running
    assert t.wait_for_runs(runs + 2, timeout=10)
    assert t.stop()


def test_start_twice_is_noop(threads):
    t = PeriodicThread("twice", 3600, lambda: None)
    threads.append(t)
    t.start()
    first = t._thread
    t.start()
    assert t._thread is first


def test_stop_from_inside_fn(threads):
    holder: dict[str, PeriodicThread] = {}
    result = {}

    def fn():
        result["stop"] = holder["t"].stop()

    t = PeriodicThread("self-stop", 0.001, fn)
    holder["t"] = t
    threads.append(t)
    t.start()
    assert t.join(timeout=10)
    assert result["stop"] is False  # cannot join itself, but the loop still ends
    assert t.total_runs == 1


@pytest.mark.parametrize("kwargs", [{"interval": 0}, {"interval": -1}, {"init_wait": -0.1}, {"name": ""}])
def test_invalid_arguments(kwargs):
    args = {"name": "x", "interval": 1.0, "fn": lambda: None, **kwargs}
    with pytest.raises(ValueError):
        PeriodicThread(**args)


# ---------------------------------------------------------------------- registry


@pytest.fixture
def registry():
    reg = PeriodicThreadRegistry()
    yield reg
    assert reg.stop_all(timeout=10) == []


def test_registry_create_get_unregister(registry):
    t = registry.create("a", 3600, lambda: None, ThreadLevel.LOW)
    assert registry.get("a") is t
    assert t.is_running
    assert registry.get_all() == [t]
    assert "a" in registry and len(registry) == 1
    assert registry.get("missing") is None
    assert registry.unregister("a", stop=True) is t
    assert not t.is_running
    assert registry.get("a") is None
    assert registry.unregister("a") is None


def test_registry_create_without_start(registry):
    t = registry.create("idle", 1, lambda: None, start=False)
    assert not t.is_running
    assert registry.get_running_count() == 0
    # Not running is not stalled: unhealthy() and /periodic-threads-health agree (issue 18).
    assert not t.is_stalled
    assert registry.unhealthy(levels=[ThreadLevel.MEDIUM]) == []


def test_registry_duplicate_name_replaces_and_stops_old(registry, caplog):
    old = registry.create("dup", 3600, lambda: None)
    new = PeriodicThread("dup", 3600, lambda: None)
    with caplog.at_level(logging.WARNING, logger="lmcache_core.observability.periodic"):
        registry.register(new)
    assert registry.get("dup") is new
    assert not old.is_running
    assert any("dup" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    registry.register(new)  # same object again: no-op
    assert registry.get_all() == [new]


def test_registry_counts_and_summary():
    clock = FakeClock(0.0)
    reg = PeriodicThreadRegistry(clock=clock)
    try:
        # Intervals far longer than the test: each started thread runs exactly once.
        crit = reg.create("crit", 100, lambda: None, ThreadLevel.CRITICAL)
        reg.create("high", 100, lambda: None, ThreadLevel.HIGH)
        reg.create("low1", 100, lambda: None, ThreadLevel.LOW, init_wait=3600)
        reg.create("low2", 100, lambda: None, ThreadLevel.LOW, start=False)
        assert crit.wait_for_runs(1, timeout=10)
        assert reg.get("high").wait_for_runs(1, timeout=10)
        assert [t.name for t in reg.get_by_level("low")] == ["low1", "low2"]
        assert reg.get_running_count() == 3
        assert reg.get_active_count() == 3
        by_level = reg.get_count_by_level()
        assert by_level == {
            "critical": {"total": 1, "running": 1, "active": 1},
            "high": {"total": 1, "running": 1, "active": 1},
            "medium": {"total": 0, "running": 0, "active": 0},
            "low": {"total": 2, "running": 1, "active": 1},
        }
        summary = reg.get_summary()
        assert set(summary) == {"total_count", "running_count", "active_count", "by_level", "threads"}
        assert (summary["total_count"], summary["running_count"], summary["active_count"]) == (4, 3, 3)
        assert summary["by_level"] == by_level
        assert [s["name"] for s in summary["threads"]] == ["crit", "high", "low1", "low2"]
        assert all(set(s) == STATUS_FIELDS for s in summary["threads"])
        assert reg.unhealthy() == []

        # Jump past 3 intervals: the two that ran stall; low1 is still within init_wait.
        clock.now = 300.0
        assert reg.get_active_count() == 1
        assert reg.unhealthy() == [
            {"name": "crit", "level": "critical", "last_run_ago": 300.0, "interval": 100.0},
            {"name": "high", "level": "high", "last_run_ago": 300.0, "interval": 100.0},
        ]
        assert reg.unhealthy(levels=["low"]) == []  # low2 never started: not stalled, low1 within init_wait
    finally:
        assert reg.stop_all(timeout=10) == []


def test_stop_all_reports_stuck_threads(registry):
    release = threading.Event()
    entered = threading.Event()

    def blocked():
        entered.set()
        release.wait(30)

    stuck = registry.create("stuck", 3600, blocked)
    registry.create("fine", 3600, lambda: None)
    assert entered.wait(10)
    assert registry.stop_all(timeout=1.0) == ["stuck"]
    release.set()
    assert stuck.join(timeout=10)
    assert registry.get_running_count() == 0


def test_registry_is_per_instance():
    a, b = PeriodicThreadRegistry(), PeriodicThreadRegistry()
    a.create("only-in-a", 1, lambda: None, start=False)
    assert b.get("only-in-a") is None and len(b) == 0


def test_registry_concurrent_registration(registry):
    def worker(i: int) -> None:
        for j in range(50):
            registry.create(f"w{i}-{j}", 1, lambda: None, start=False)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert len(registry) == 400
    assert registry.get_count_by_level()["medium"]["total"] == 400
