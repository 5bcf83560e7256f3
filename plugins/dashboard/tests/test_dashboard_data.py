"""``GET /dashboard/data`` and ``GET /dashboard/fleet`` over real HTTP, against real servers.

Each number the page shows is compared with what ``/status`` and ``/metrics`` say after a
workload driven over ZMQ by our client; the fleet is real servers, a closed port and a socket
that accepts and never answers; the admin token is checked on a real HTTP peer that records
what it was sent.
"""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest
from dash_support import (
    HTTP_TIMEOUT,
    Worker,
    expected_numbers,
    get_json,
    make_live,
    metric_sum,
    metrics,
    parse_options,
    tokens,
    wait_for,
    workload,
)
from litestar import Litestar, Request, Response, get

from lmcache_core.testing import free_port

STARTING = {"error": "engine not initialized", "state": "starting"}


def test_snapshot_equals_status_and_metrics(lmcache_server_factory: Any, lmcache_http: Any) -> None:
    server, port = make_live(lmcache_server_factory)
    url = lmcache_http(server)
    worker = Worker(port)
    try:
        workload(worker)
        server.storage.quotas.set_quota("tenant-a", 1 << 20)
        worker.store(tokens(77, 2), salt="tenant-a")
        want = expected_numbers(url)
        data = get_json(url, "/dashboard/data")
        # /status and the snapshot read the same live values; nothing runs between the two reads
        assert data["state"] == "ready" and data["healthy"] is True
        assert data["l1"]["used_bytes"] == want["l1-used"] > 0
        assert data["l1"]["capacity_bytes"] == want["l1-capacity"]
        assert data["l1"]["object_count"] == want["l1-objects"] > 0
        lk = data["lookups"]
        assert lk["hit_tokens_total"]["l1"] / lk["requested_tokens_total"] == pytest.approx(want["hit-l1"])
        assert lk["hit_tokens_total"]["l2"] / lk["requested_tokens_total"] == pytest.approx(want["hit-l2"])
        assert 0 < want["hit-l1"] < 1  # the workload has hits and misses
        assert data["traffic"]["requests_total"]["store"] == want["store-ops"] > 0
        assert data["traffic"]["requests_total"]["retrieve"] == want["retrieve-ops"] > 0
        assert data["traffic"]["requests_total"]["lookup"] == want["lookup-ops"] > 0
        assert lk["requests_total"] == want["lookups-total"]
        m = metrics(url)
        assert data["traffic"]["store_bytes_total"] == metric_sum(m, "lmcache_mp_store_bytes_total") > 0
        assert data["traffic"]["retrieve_bytes_total"] == metric_sum(m, "lmcache_mp_retrieve_bytes_total") > 0
        assert data["workers"]["registered"] == want["workers-registered"] == 1
        assert data["workers"]["active_sessions"] == want["sessions-active"]
        # LOOKUP is timed: percentiles over this workload's lookups, and the histogram Grafana reads
        assert lk["latency_samples"] >= 8
        assert 0 < lk["latency_p50_ms"] <= lk["latency_p99_ms"]
        assert metric_sum(m, "lmcache_mp_lookup_duration_seconds_count") >= lk["latency_samples"]
        # one memory L2 adapter, no breaker; the write-behind puts the stored objects there
        (adapter,) = data["l2"]["adapters"]
        assert adapter["name"] == "memory:0" and adapter["healthy"] is True and adapter["breaker"] is None
        l2 = server.storage.l2_adapters[0]
        wait_for(lambda: get_json(url, "/dashboard/data")["l2"]["adapters"][0]["used_bytes"] == l2.usage().total_bytes_used
                 and l2.usage().total_bytes_used > 0, "the L2 usage to show the write-behind's stores")
        # quotas: the salt with a limit comes first, its usage is the tiers' per-salt bytes
        row = data["quotas"][0]
        assert row["cache_salt"] == "tenant-a" and row["limit_bytes"] == 1 << 20
        assert row["used_bytes"] == server.storage.quotas.usage_by_salt()["tenant-a"] > 0
        assert {"cache_salt": "_default", "limit_bytes": None} .items() <= next(
            r for r in data["quotas"] if r["cache_salt"] == "_default").items()
        # the gauges the plugin exports for Grafana read the same sources
        m = metrics(url)
        assert metric_sum(m, "lmcache_mp_registered_workers", kind="lmcache_driven") == 1
        assert metric_sum(m, "lmcache_mp_active_sessions") == data["workers"]["active_sessions"]
        assert metric_sum(m, "lmcache_mp_quota_limit_bytes", cache_salt="tenant-a") == 1 << 20
        assert metric_sum(m, "lmcache_mp_quota_usage_bytes", cache_salt="tenant-a") == row["used_bytes"]
        assert metric_sum(m, "lmcache_mp_periodic_thread_active", name="l1-eviction-controller") == 1
        names = {t["name"] for t in data["threads"]}
        assert "l1-eviction-controller" in names and all(t["running"] for t in data["threads"])
        assert "dashboard" in data["plugins"]["loaded"] and data["plugins"]["failed"] == []
        assert data["peers"] == [] and data["uptime_seconds"] >= 0
    finally:
        worker.close()


def test_errors_are_counted_by_reason(lmcache_server_factory: Any, lmcache_http: Any) -> None:
    server, port = make_live(lmcache_server_factory, l2=0)
    url = lmcache_http(server)
    worker = Worker(port)
    try:
        before = {(e["source"], e["reason"]): e["count"] for e in get_json(url, "/dashboard/data")["errors"]}
        # a malformed frame, and a LOOKUP for a model no worker registered
        reply = worker.client.send_raw([b"\x00", b"not a request"])
        assert reply  # the error reply; the server keeps serving
        from lmcache_core.client import make_key
        key = make_key(tokens(3, 1), "unknown-model", model_name="never-registered", worker_id=0)
        assert worker.client.lookup(key) == 0
        data = get_json(url, "/dashboard/data")
        after = {(e["source"], e["reason"]): e["count"] for e in data["errors"]}
        grown = {k for k, v in after.items() if v > before.get(k, 0)}
        assert ("lookup", "early exit: no_gpu_context") in grown
        assert any(s == "zmq" and r.endswith(" malformed") for s, r in grown), grown
        assert data["l2"]["adapters"] == []  # no L2: an empty list, not an error
        assert data["errors"] == sorted(data["errors"], key=lambda e: (-e["count"], e["source"], e["reason"]))
    finally:
        worker.close()


def test_several_l2_and_a_breaker(lmcache_server_factory: Any, lmcache_http: Any) -> None:
    server, _ = make_live(lmcache_server_factory, l2=2)
    url = lmcache_http(server)
    data = get_json(url, "/dashboard/data")
    assert [a["name"] for a in data["l2"]["adapters"]] == ["memory:0", "memory:1"]
    # an adapter that reports a breaker (the S3 adapter's shape: an attribute or a method)
    second = server.storage.l2_adapters[1]
    second.breaker_state = "open"
    data = get_json(url, "/dashboard/data")
    assert data["l2"]["adapters"][1]["breaker"] == "open" and data["l2"]["adapters"][1]["healthy"] is False
    assert data["healthy"] is False
    second.breaker_state = lambda: "closed"
    data = get_json(url, "/dashboard/data")
    assert data["l2"]["adapters"][1]["breaker"] == "closed" and data["healthy"] is True


def test_before_start_and_after_stop(lmcache_server_factory: Any, lmcache_http: Any) -> None:
    server, _ = make_live(lmcache_server_factory, start=False)
    url = lmcache_http(server)
    resp = httpx.get(f"{url}/dashboard/data", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 503 and resp.json() == STARTING
    fleet = get_json(url, "/dashboard/fleet")
    assert [n["state"] for n in fleet["nodes"]] == ["starting"] and fleet["totals"]["up"] == 0
    page = httpx.get(f"{url}/dashboard", timeout=HTTP_TIMEOUT)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    server.start()
    assert get_json(url, "/dashboard/data")["state"] == "ready"
    server.stop()
    resp = httpx.get(f"{url}/dashboard/data", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 503 and resp.json() == STARTING


def test_page_and_assets(lmcache_server_factory: Any, lmcache_http: Any) -> None:
    server, _ = make_live(lmcache_server_factory)
    url = lmcache_http(server)
    page = httpx.get(f"{url}/dashboard", timeout=HTTP_TIMEOUT)
    assert page.status_code == 200 and "dashboard/dashboard.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    for path, kind in (("/dashboard/dashboard.js", "text/javascript"), ("/dashboard/dashboard.css", "text/css")):
        resp = httpx.get(f"{url}{path}", timeout=HTTP_TIMEOUT)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith(kind) and resp.content
        assert "https://" not in resp.text
    assert httpx.get(f"{url}/dashboard/nope.js", timeout=HTTP_TIMEOUT).status_code == 404
    assert httpx.post(f"{url}/dashboard/data", timeout=HTTP_TIMEOUT).status_code == 405
    doc = get_json(url, "/schema/openapi.json")
    for path in ("/dashboard", "/dashboard/data", "/dashboard/fleet"):
        assert "get" in doc["paths"][path], path
    data_doc = doc["paths"]["/dashboard/data"]["get"]["responses"]
    assert {"200", "503"} <= set(data_doc)


# -- fleet -----------------------------------------------------------------------------------


def _hung_socket() -> socket.socket:
    """A listening socket that accepts connections (the kernel does) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def test_fleet_rows_and_totals(lmcache_server_factory: Any, lmcache_http: Any) -> None:
    peer, peer_port = make_live(lmcache_server_factory)
    peer_url = lmcache_http(peer)
    hung = _hung_socket()
    closed = f"http://127.0.0.1:{free_port()}"
    hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
    try:
        server, port = make_live(lmcache_server_factory, argv=[
            "--dashboard-peer", peer_url + "/", closed, f"{hung_url},{peer_url}",  # the last one twice
            "--dashboard-peer-timeout-seconds", "0.5"])
        url = lmcache_http(server)
        worker = Worker(peer_port)
        try:
            workload(worker, rounds=2)
        finally:
            worker.close()
        assert get_json(url, "/dashboard/data")["peers"] == [peer_url, closed, hung_url]
        fleet = get_json(url, "/dashboard/fleet")
        rows = {n["url"]: n for n in fleet["nodes"]}
        assert [n["url"] for n in fleet["nodes"]] == ["", peer_url, closed, hung_url]
        assert rows[""]["state"] == "up" and rows[peer_url]["state"] == "up" and rows[peer_url]["healthy"]
        peer_data = get_json(peer_url, "/dashboard/data")
        assert rows[peer_url]["l1_used_bytes"] == peer_data["l1"]["used_bytes"] > 0
        assert rows[closed]["state"] == "down" and rows[closed]["error"].startswith("unreachable")
        assert rows[hung_url]["state"] == "down" and rows[hung_url]["error"] == "no answer within 0.5 s"
        totals = fleet["totals"]
        assert (totals["nodes"], totals["up"], totals["down"]) == (4, 2, 2)
        assert totals["l1_used_bytes"] == rows[""]["l1_used_bytes"] + rows[peer_url]["l1_used_bytes"]
        assert totals["requested_tokens_total"] == rows[""]["requested_tokens_total"] + \
            rows[peer_url]["requested_tokens_total"]
        conf = get_json(url, "/conf")["dashboard"]
        assert conf == {"peer": [peer_url + "/", closed, hung_url, peer_url], "peer_timeout_seconds": 0.5}
    finally:
        hung.close()


def test_peers_are_fetched_with_the_admin_token(lmcache_server_factory: Any, lmcache_http: Any,
                                                lmcache_serve_app: Any) -> None:
    seen: list[str | None] = []

    @get("/dashboard/data", sync_to_thread=False)
    def peer_data(request: Request[Any, Any, Any]) -> dict[str, Any]:
        seen.append(request.headers.get("authorization"))
        return {"node": "recorder", "healthy": True, "version": "x", "l1": {"used_bytes": 5, "capacity_bytes": 10},
                "lookups": {"requested_tokens_total": 4, "hit_tokens_total": {"l1": 1, "l2": 1}}}

    peer_url = lmcache_serve_app(Litestar([peer_data]))
    server, _ = make_live(lmcache_server_factory, argv=["--dashboard-peer", peer_url,
                                                        "--http-admin-token", "fleet-secret"])
    url = lmcache_http(server)
    fleet = get_json(url, "/dashboard/fleet")  # a read: open without the token
    assert seen == ["Bearer fleet-secret"]
    row = fleet["nodes"][1]
    assert (row["name"], row["state"], row["l1_used_bytes"], row["hit_rate"]) == ("recorder", "up", 5, 0.5)
    assert "fleet-secret" not in httpx.get(f"{url}/conf", timeout=HTTP_TIMEOUT).text


def test_peer_that_answers_nonsense_is_down(lmcache_server_factory: Any, lmcache_http: Any,
                                            lmcache_serve_app: Any) -> None:
    @get("/dashboard/data", sync_to_thread=False)
    def not_a_node() -> list[int]:
        return [1, 2, 3]

    @get("/huge/dashboard/data", sync_to_thread=False)
    def huge() -> Response[bytes]:
        return Response(b"[" + b"0," * (1 << 20) + b"0]", media_type="application/json")

    @get("/teapot/dashboard/data", sync_to_thread=False)
    def teapot() -> Response[bytes]:
        return Response(b"{}", status_code=418)

    peer_url = lmcache_serve_app(Litestar([not_a_node, huge, teapot]))
    starting, _ = make_live(lmcache_server_factory, start=False)
    starting_url = lmcache_http(starting)
    server, _ = make_live(lmcache_server_factory, argv=["--dashboard-peer", peer_url, starting_url,
                                                        f"{peer_url}/huge", f"{peer_url}/teapot"])
    url = lmcache_http(server)
    nodes = get_json(url, "/dashboard/fleet")["nodes"]
    assert (nodes[1]["state"], nodes[1]["error"]) == ("down", "unexpected answer: not a JSON object")
    assert nodes[2]["state"] == "starting"
    assert (nodes[3]["state"], nodes[3]["error"]) == ("down", "unexpected answer: larger than 1048576 bytes")
    assert (nodes[4]["state"], nodes[4]["error"]) == ("down", "answered HTTP 418")


@pytest.mark.parametrize("bad", ["ftp://host", "localhost:8080", "http://", "http://h:99999", "http://h?x=1",
                                 "http://user:pw@h"])
def test_bad_peer_url_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_options(["--dashboard-peer", bad])
    assert exc.value.code == 2
    assert "--dashboard-peer" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "61", "soon"])
def test_bad_peer_timeout_is_a_usage_error(bad: str) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_options(["--dashboard-peer-timeout-seconds", bad])
    assert exc.value.code == 2


def test_peers_from_the_environment(lmcache_server_factory: Any) -> None:
    from lmcache_core.cli import build_parser
    from lmcache_core.plugins import PluginHost
    from dash_support import plugin_specs

    host = PluginHost(load_entry_points=False, extra_plugins=plugin_specs())
    env = {"LMCACHE_DASHBOARD_PEER": "http://10.0.0.1:8080, http://10.0.0.2:8080/",
           "LMCACHE_DASHBOARD_PEER_TIMEOUT_SECONDS": "2.5"}
    args = build_parser(host, environ=env).parse_args([])
    assert (args.dashboard_peer, args.dashboard_peer_timeout_seconds) == (
        ["http://10.0.0.1:8080", "http://10.0.0.2:8080/"], 2.5)
    # a flag beats its variable
    assert build_parser(host, environ=env).parse_args(["--dashboard-peer", "http://h:1"]).dashboard_peer == \
        ["http://h:1"]
    # the server names them without the trailing slash (how a row and /dashboard/data show them)
    server, _ = make_live(lmcache_server_factory, argv=["--dashboard-peer", "http://10.0.0.2:8080/", "https://[::1]"])
    assert server.configs["dashboard"].peer == ["http://10.0.0.2:8080/", "https://[::1]"]
    from lmcache_plugin_dashboard.plugin import _snapshot
    assert _snapshot(server).peers == ["http://10.0.0.2:8080", "https://[::1]"]


def test_bad_environment_value_names_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    from lmcache_core.cli import build_parser
    from lmcache_core.plugins import PluginHost
    from dash_support import plugin_specs

    host = PluginHost(load_entry_points=False, extra_plugins=plugin_specs())
    with pytest.raises(SystemExit) as exc:
        build_parser(host, environ={"LMCACHE_DASHBOARD_PEER": "ftp://nope"}).parse_args([])
    assert exc.value.code == 2 and "LMCACHE_DASHBOARD_PEER" in capsys.readouterr().err
