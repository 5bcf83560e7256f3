"""``GET /threads`` (stack dumps, text/plain) and the periodic-thread routes over real HTTP.

The threads inspected are real: a parked thread started here, and periodic threads registered in
the server's own registry (one that ticks, one never started, one whose run blocks until released).
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lmcache_core.observability.periodic import ThreadLevel

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
STATUS_FIELDS = {"name", "level", "interval", "init_wait", "is_running", "is_active", "last_run_time",
                 "last_run_ago", "total_runs", "failed_runs", "success_rate", "last_summary"}
EMPTY_BY_LEVEL = {lvl: {"total": 0, "running": 0, "active": 0} for lvl in ("critical", "high", "medium", "low")}


def poll(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """True once ``condition()`` holds; False after ``timeout_s`` (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def diag_parked_worker(release: threading.Event) -> None:
    release.wait(30)


@pytest.fixture
def parked() -> Iterator[threading.Thread]:
    release = threading.Event()
    thread = threading.Thread(target=diag_parked_worker, args=(release,), name="Diag-Parked-Thread", daemon=True)
    thread.start()
    yield thread
    release.set()
    thread.join(10)


def blocks(text: str) -> list[str]:
    """The per-thread blocks of a dump, checking the summary's count against them."""
    head, sep, summary = text.rpartition("=== Thread Summary ===\n")
    assert sep and (not head or head.endswith("\n\n")), text[-200:]
    count = int(re.fullmatch(r"Total threads: (\d+)", summary).group(1))  # type: ignore[union-attr]
    head = head.removesuffix("\n\n")
    found = re.split(r"\n\n(?=Thread: <)", head) if head else []
    assert len(found) == count
    return found


# -- /threads ----------------------------------------------------------------------------------


def test_threads_lists_every_live_thread_with_its_stack(diag, parked):
    d = diag()
    resp = d.get("/threads")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == TEXT
    found = blocks(resp.text)
    assert all(b.startswith("Thread: <") for b in found)
    assert len(found) >= 3  # at least: main, the parked thread, uvicorn
    [mine] = [b for b in found if "Diag-Parked-Thread" in b]
    assert mine.startswith(f"Thread: {parked!r}")
    assert "in diag_parked_worker" in mine and "release.wait(30)" in mine
    assert any(b.startswith("Thread: <_MainThread(MainThread") for b in found)


def test_threads_name_filter_is_a_case_insensitive_substring(diag, parked):
    d = diag()
    [mine] = blocks(d.get("/threads", params={"name": "diag-PARKED"}).text)
    assert "diag_parked_worker" in mine
    resp = d.get("/threads", params={"name": "no-such-thread-name"})
    assert (resp.status_code, resp.text) == (200, "=== Thread Summary ===\nTotal threads: 0")


def test_threads_thread_id_filter(diag, parked):
    d = diag()
    [mine] = blocks(d.get("/threads", params={"thread_id": str(parked.ident)}).text)
    assert "Diag-Parked-Thread" in mine
    # 0 and empty mean "no filter".
    assert len(blocks(d.get("/threads", params={"thread_id": "0"}).text)) >= 3
    assert len(blocks(d.get("/threads", params={"thread_id": ""}).text)) >= 3
    # An id no thread has matches nothing; both filters together must both match.
    assert blocks(d.get("/threads", params={"thread_id": "1"}).text) == []
    assert blocks(d.get("/threads", params={"thread_id": str(parked.ident), "name": "main"}).text) == []


@pytest.mark.parametrize("bad", ["abc", "-1", "1.5", "0x10", "１２", "9" * 21])
def test_threads_bad_thread_id_is_400_text(diag, bad):
    d = diag()
    resp = d.get("/threads", params={"thread_id": bad})
    assert resp.status_code == 400
    assert resp.headers["content-type"] == TEXT
    assert resp.text == f"Invalid thread_id: {bad}"


# -- /periodic-threads* ------------------------------------------------------------------------


@pytest.fixture
def registry_threads(diag) -> Iterator[tuple[Any, threading.Event]]:
    """A served server whose registry also holds: a fast critical ticker, a never-started low thread,
    and a high thread whose run blocks on ``release`` (so it stalls while running)."""
    d = diag()
    registry = d.server.threads
    release = threading.Event()
    ticker = registry.create("diag-ticker", 0.02, lambda: {"ticks": 1}, level=ThreadLevel.CRITICAL)
    registry.create("diag-idle", 5.0, lambda: None, level=ThreadLevel.LOW, start=False)
    registry.create("diag-stuck", 0.05, lambda: release.wait(30) and None, level=ThreadLevel.HIGH)
    assert ticker.wait_for_runs(1, 10)
    yield d, release
    release.set()


def test_periodic_threads_lists_the_registry_with_summary_counts(registry_threads):
    d, _ = registry_threads
    resp = d.get("/periodic-threads")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == JSON
    body = resp.json()
    assert list(body) == ["summary", "threads"]
    summary, threads = body["summary"], body["threads"]
    assert list(summary) == ["total_count", "running_count", "active_count", "by_level"]
    names = [t["name"] for t in threads]
    assert {"diag-ticker", "diag-idle", "diag-stuck", "SessionManager-cleanup-thread"} <= set(names)
    assert summary["total_count"] == len(threads) == len(d.server.threads)
    assert summary["running_count"] == sum(t["is_running"] for t in threads)
    assert summary["active_count"] == sum(t["is_active"] for t in threads)
    assert sum(v["total"] for v in summary["by_level"].values()) == summary["total_count"]
    assert summary["by_level"]["critical"]["total"] == 1 and summary["by_level"]["low"]["total"] == 1
    by_name = {t["name"]: t for t in threads}
    assert all(set(t) == STATUS_FIELDS for t in threads)
    ticker = by_name["diag-ticker"]
    assert ticker["level"] == "critical" and ticker["interval"] == 0.02 and ticker["is_running"]
    assert ticker["total_runs"] >= 1 and ticker["success_rate"] == 100.0
    assert ticker["last_summary"]["extra_info"] == {"ticks": 1}
    idle = by_name["diag-idle"]
    assert (idle["is_running"], idle["is_active"], idle["total_runs"], idle["last_run_ago"]) == (False, False, 0, None)


def test_periodic_threads_filters_apply_to_the_list_not_the_summary(registry_threads):
    d, _ = registry_threads
    full = d.get("/periodic-threads").json()["summary"]

    def names(**params: str) -> set[str]:
        body = d.get("/periodic-threads", params=params).json()
        assert body["summary"]["total_count"] == full["total_count"]
        assert {k: v["total"] for k, v in body["summary"]["by_level"].items()} == \
            {k: v["total"] for k, v in full["by_level"].items()}
        return {t["name"] for t in body["threads"]}

    assert names(level="critical") == {"diag-ticker"}
    assert names(level="LOW") == {"diag-idle"}
    assert names(level="high") >= {"diag-stuck"}
    running = names(running_only="true")
    assert "diag-idle" not in running and {"diag-ticker", "diag-stuck"} <= running
    assert "diag-idle" in names(running_only="false")
    assert "diag-ticker" in names(active_only="1") and "diag-idle" not in names(active_only="yes")
    assert names(level="low", running_only="on") == set()
    assert names(level="", running_only="", active_only="") >= {"diag-idle", "diag-ticker"}


@pytest.mark.parametrize("bad", ["x", "warning", "CRITICALS", " high"])
def test_periodic_threads_bad_level_is_400(registry_threads, bad):
    d, _ = registry_threads
    resp = d.get("/periodic-threads", params={"level": bad})
    assert resp.status_code == 400
    assert resp.headers["content-type"] == JSON
    assert resp.json() == {"error": f"Invalid level: {bad}. Valid values: critical, high, medium, low"}


@pytest.mark.parametrize("param", ["running_only", "active_only"])
def test_periodic_threads_bad_boolean_is_400(registry_threads, param):
    d, _ = registry_threads
    resp = d.get("/periodic-threads", params={param: "maybe"})
    assert resp.status_code == 400
    assert resp.json() == {"error": f"Invalid {param}: maybe. Valid values: true, false"}


def test_one_periodic_thread_and_the_404(registry_threads):
    d, _ = registry_threads
    resp = d.get("/periodic-threads/diag-ticker")
    assert resp.status_code == 200 and resp.headers["content-type"] == JSON
    body = resp.json()
    assert set(body) == STATUS_FIELDS and body["name"] == "diag-ticker" and body["level"] == "critical"
    resp = d.get("/periodic-threads/no-such-thread")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == JSON
    assert resp.json() == {"error": "Thread not found: no-such-thread"}


def test_a_thread_name_with_spaces_and_unicode_round_trips(registry_threads):
    d, _ = registry_threads
    d.server.threads.create("diag thread ü", 5.0, lambda: None, start=False)
    quoted = urllib.parse.quote("diag thread ü")
    assert d.get(f"/periodic-threads/{quoted}").json()["name"] == "diag thread ü"
    assert d.get(f"/periodic-threads/{urllib.parse.quote('nope ü')}").json() == {"error": "Thread not found: nope ü"}
    d.server.threads.create("diag/slashed", 5.0, lambda: None, start=False)
    assert d.get("/periodic-threads/diag/slashed").json()["name"] == "diag/slashed"
    assert d.get("/periodic-threads/diag%2Fslashed").json()["name"] == "diag/slashed"
    assert d.get("/periodic-threads/diag/other").json() == {"error": "Thread not found: diag/other"}


def test_health_flags_a_running_critical_or_high_thread_that_stopped_ticking(registry_threads):
    d, release = registry_threads

    def health() -> dict[str, Any]:
        resp = d.get("/periodic-threads-health")
        assert resp.status_code == 200 and resp.headers["content-type"] == JSON
        return resp.json()

    # diag-stuck's first run blocks: after init_wait + 3 intervals it is running but not active.
    assert poll(lambda: not health()["healthy"])
    body = health()
    assert list(body) == ["healthy", "unhealthy_count", "unhealthy_threads"]
    assert body["unhealthy_count"] == len(body["unhealthy_threads"]) == 1
    [entry] = body["unhealthy_threads"]
    assert set(entry) == {"name", "level", "last_run_ago", "interval"}
    assert (entry["name"], entry["level"], entry["interval"], entry["last_run_ago"]) == ("diag-stuck", "high", 0.05,
                                                                                         None)
    # Released, it completes runs and is healthy again.
    release.set()
    assert poll(lambda: health() == {"healthy": True, "unhealthy_count": 0, "unhealthy_threads": []})


def test_health_ignores_low_and_medium_and_stopped_threads(diag):
    d = diag()
    registry = d.server.threads
    release = threading.Event()
    try:
        for name, level in (("diag-low-stall", ThreadLevel.LOW), ("diag-medium-stall", ThreadLevel.MEDIUM)):
            registry.create(name, 0.01, lambda: release.wait(30) and None, level=level)
        registry.create("diag-critical-never-started", 0.01, lambda: None, level=ThreadLevel.CRITICAL, start=False)
        stopped = registry.create("diag-high-stopped", 0.01, lambda: None, level=ThreadLevel.HIGH)
        assert stopped.wait_for_runs(1, 10) and stopped.stop(10)
        assert poll(lambda: not registry.get("diag-low-stall").is_active and
                    not registry.get("diag-medium-stall").is_active)
        assert d.get("/periodic-threads-health").json() == {"healthy": True, "unhealthy_count": 0,
                                                             "unhealthy_threads": []}
    finally:
        release.set()


def test_periodic_routes_before_the_engine_starts_show_an_empty_registry(diag):
    d = diag(start=False)
    assert d.get("/periodic-threads").json() == {
        "summary": {"total_count": 0, "running_count": 0, "active_count": 0, "by_level": EMPTY_BY_LEVEL},
        "threads": []}
    assert d.get("/periodic-threads", params={"level": "nope"}).status_code == 400
    assert d.get("/periodic-threads/SessionManager-cleanup-thread").status_code == 404
    resp = d.get("/periodic-threads-health")
    assert (resp.status_code, resp.json()) == (200, {"healthy": True, "unhealthy_count": 0, "unhealthy_threads": []})


def test_odd_extra_info_is_stringified_not_a_500(diag):
    d = diag()
    thread = d.server.threads.create("diag-odd", 5.0, lambda: {"when": object(), "raw": b"\x00"})
    assert thread.wait_for_runs(1, 10)
    resp = d.get("/periodic-threads/diag-odd")
    assert resp.status_code == 200
    extra = resp.json()["last_summary"]["extra_info"]
    assert extra["when"].startswith("<object object at") and isinstance(extra["raw"], str)
