"""The page in a real headless Chromium (Selenium), against real servers driven over ZMQ.

* After a workload, the numbers on the page equal what ``/status`` and ``/metrics`` say (the
  workload has stopped, so "within one poll" means: once the page has polled after it), the
  charts have points, the console has no errors; a screenshot is kept as a test artefact
  (``$LMCACHE_DASHBOARD_SCREENSHOT`` names where, else the test's ``tmp_path``).
* At phone width nothing overflows sideways.
* Before the engine is ready the page says "starting", then goes live without a reload (two L2 adapters: a row each).
* A fleet of two servers, the second a separate ``lmcache-server`` process that is first stopped
  (SIGSTOP: it hangs), then resumed, then killed: its row turns ``down`` within a bound each time
  (and ``up`` again once resumed), and the page keeps polling its own node meanwhile.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from dash_support import Worker, expected_numbers, get_json, make_live, tokens, wait_for, workload

from lmcache_core.client import make_key
from lmcache_core.testing import free_port, server_process

DOWN_WITHIN_S = 10.0
"""The bound for a killed peer to show as down: the peer timeout (1 s) plus two fleet polls (2 s each), doubled."""


def console_errors(browser: Any, *, allow: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    entries = browser.get_log("browser")
    return [e for e in entries if e["level"] == "SEVERE" and not any(a in e["message"] for a in allow)]


def page_values(browser: Any, ids: list[str]) -> dict[str, str]:
    return browser.execute_script(
        "const out = {}; for (const id of arguments[0]) out[id] = document.getElementById(id).dataset.value;"
        "return out;", ids)


def polls(browser: Any) -> int:
    return int(browser.execute_script("return window.lmcacheDashboard ? window.lmcacheDashboard.polls : 0"))


def close_enough(shown: str, want: float) -> bool:
    if shown in ("", None):
        return False
    return abs(float(shown) - want) <= 1e-9 * max(1.0, abs(want))


def test_page_matches_status_and_metrics(browser: Any, lmcache_server_factory: Any, lmcache_http: Any,
                                         tmp_path: Path) -> None:
    # skip_l1: stored chunks leave L1 once the write-behind put them in L2, so lookups hit both tiers
    server, port = make_live(lmcache_server_factory, storage={"l2_store_policy": "skip_l1"})
    url = lmcache_http(server)
    worker = Worker(port)
    try:
        browser.get(f"{url}/dashboard")
        wait_for(lambda: polls(browser) >= 2, "the page to poll")
        # the workload runs while the page polls a few times, so its charts see traffic; a salt with
        # a quota, and a lookup for a model no worker registered (an error row)
        server.storage.quotas.set_quota("tenant-a", 4 << 20)
        seen = polls(browser)
        for r in range(400):
            workload(worker, rounds=1, first=r)
            worker.store(tokens(200_000 + r, 1), salt="tenant-a")
            if polls(browser) >= seen + 6:
                break
        assert worker.client.lookup(make_key(tokens(7, 1), "stray", model_name="unregistered-model")) == 0
        wait_for(lambda: server.storage.l2_adapters[0].usage().total_bytes_used > 0, "the write-behind")
        want = expected_numbers(url)
        start = polls(browser)

        def matches() -> bool:
            shown = page_values(browser, list(want))
            return polls(browser) > start and all(close_enough(shown[k], v) for k, v in want.items())

        try:
            wait_for(matches, "the page to show what /status and /metrics say", 15.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: want {want}, the page shows {page_values(browser, list(want))}") from None
        assert browser.find_element("id", "state").get_attribute("data-state") == "live"
        assert browser.find_element("id", "state").text == "live"
        # charts: a point per poll per series since the page opened
        for chart in ("chart-l1", "chart-hits", "chart-latency", "chart-gbps", "chart-ops"):
            points = int(browser.find_element("id", chart).get_attribute("data-points") or 0)
            assert points >= 2, chart
        # rates were seen while the workload ran: the STORE GB/s chart has a point above zero
        assert browser.execute_script(
            "return window.lmcacheDashboard.history.some((d, i, h) => i > 0 && "
            "d.traffic.store_bytes_total > h[i - 1].traffic.store_bytes_total)")
        # the L2 adapter row, the thread table, the plugins
        l2_rows = browser.find_elements("css selector", "#l2-table tbody tr")
        assert len(l2_rows) == 1 and l2_rows[0].text.startswith("memory:0 healthy")
        assert len(browser.find_elements("css selector", "#thread-table tbody tr")) == len(server.threads.get_all())
        assert "dashboard" in browser.find_element("id", "plugins-loaded").text
        assert browser.find_element("id", "card-fleet").is_displayed() is False  # no peers
        assert len(browser.find_elements("css selector", "#quota-table tbody tr")) == 2  # tenant-a, _default
        assert "early exit: no_gpu_context" in browser.find_element("id", "error-table").text
        shot = Path(os.environ.get("LMCACHE_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1280, height + 140)  # the window's frame: the page fits whole
        wait_for(lambda: polls(browser) > start + 1, "a poll at the new size")
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        assert console_errors(browser) == []
    finally:
        worker.close()


def test_phone_width_and_no_l2_no_workers(browser: Any, lmcache_server_factory: Any, lmcache_http: Any) -> None:
    server, _ = make_live(lmcache_server_factory, l2=0)
    url = lmcache_http(server)
    browser.set_window_size(390, 844)
    browser.get(f"{url}/dashboard")
    wait_for(lambda: polls(browser) >= 2 and browser.find_element("id", "state").text == "live", "the page")
    assert browser.find_element("id", "l2-none").is_displayed()
    assert not browser.find_element("id", "l2-table").is_displayed()
    assert page_values(browser, ["workers-registered"]) == {"workers-registered": "0"}
    widths = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
    card = browser.find_element("id", "card-l1").rect
    assert card["x"] >= 0 and card["x"] + card["width"] <= widths[1]
    assert console_errors(browser) == []


def test_starting_then_live_without_reload(browser: Any, lmcache_server_factory: Any, lmcache_http: Any) -> None:
    server, _ = make_live(lmcache_server_factory, start=False, l2=2)
    url = lmcache_http(server)
    browser.get(f"{url}/dashboard")
    wait_for(lambda: browser.find_element("id", "state").get_attribute("data-state") == "starting", "'starting'")
    assert "starting" in browser.find_element("id", "banner").text
    server.start()
    wait_for(lambda: browser.find_element("id", "state").get_attribute("data-state") == "live", "'live'")
    assert not browser.find_element("id", "banner").is_displayed()
    rows = browser.find_elements("css selector", "#l2-table tbody tr")  # several L2 adapters: one row each
    assert [r.text.split()[0] for r in rows] == ["memory:0", "memory:1"]
    # the only console errors are the browser's own notes of the 503 answers while starting
    assert console_errors(browser, allow=("503",)) == []


def test_fleet_node_killed_shows_down(browser: Any, lmcache_server_factory: Any, lmcache_http: Any,
                                      tmp_path: Path) -> None:
    http_port, zmq_port = free_port(), free_port()
    peer_url = f"http://127.0.0.1:{http_port}"
    cmd = [str(Path(sys.executable).with_name("lmcache-server")), "--http-host", "127.0.0.1",
           "--http-port", str(http_port), "--host", "127.0.0.1", "--port", str(zmq_port), "--l1-size-gb", "0.05",
           "--plugins", "dashboard,health", "--log-level", "WARNING"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    with server_process(cmd, f"{peer_url}/healthcheck", env=env, log=tmp_path / "peer.log") as proc:
        server, _ = make_live(lmcache_server_factory, argv=["--dashboard-peer", peer_url])
        url = lmcache_http(server)
        browser.get(f"{url}/dashboard")

        def row_state() -> str | None:
            return browser.execute_script(
                "const r = document.querySelector('#fleet-table tbody tr[data-url=\"' + arguments[0] + '\"]');"
                "return r ? r.dataset.state : null;", peer_url)

        wait_for(lambda: row_state() == "up", "the peer's row to be up")
        assert browser.find_element("id", "card-fleet").is_displayed()
        assert len(browser.find_elements("css selector", "#fleet-table tbody tr")) == 2
        assert browser.find_element("id", "fleet-up").get_attribute("data-value") == "2"
        peer_node = get_json(peer_url, "/dashboard/data")["node"]
        assert peer_node in browser.find_element("css selector", f'#fleet-table tr[data-url="{peer_url}"]').text

        # a hung peer (stopped: its kernel still accepts connections, nothing answers) is down after the
        # peer timeout, and the page keeps polling its own node all the while
        os.killpg(proc.pid, signal.SIGSTOP)
        before = polls(browser)
        wait_for(lambda: row_state() == "down", "the hung peer's row to be down", DOWN_WITHIN_S)
        assert "no answer within 1 s" in browser.find_element("css selector", f'#fleet-table tr[data-url="{peer_url}"]').text
        assert polls(browser) > before
        os.killpg(proc.pid, signal.SIGCONT)
        wait_for(lambda: row_state() == "up", "the peer's row to be up again", DOWN_WITHIN_S)

        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        before = polls(browser)
        wait_for(lambda: row_state() == "down", "the killed peer's row to be down", DOWN_WITHIN_S)
        # the page kept polling its own node meanwhile, and still says it is live
        assert polls(browser) > before
        assert browser.find_element("id", "state").get_attribute("data-state") == "live"
        assert browser.find_element("id", "fleet-up").get_attribute("data-value") == "1"
        assert console_errors(browser) == []
