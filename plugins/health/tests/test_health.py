"""GET / and GET /healthcheck over real HTTP, exactly as the seed API documents them.

Every server state a probe can meet is covered: not started, ready, storage broken while the
engine stays wired, stopped, and an app whose state has no server at all.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

import lmcache_plugin_health.plugin as health
from lmcache_core.cli import build_parser
from lmcache_core.http.app import create_app
from lmcache_core.plugins import PluginHost
from lmcache_core.strategies import http_requests

JSON = "application/json"
ROOT = {"status": "ok", "service": "LMCache HTTP API"}
HEALTHY = {"status": "healthy"}
UNHEALTHY = {"status": "unhealthy", "reason": "engine not initialized"}
TIMEOUT = 30.0
OTHER_METHODS = ["POST", "PUT", "PATCH", "DELETE", "HEAD"]


def _get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, timeout=TIMEOUT, **kwargs)


def assert_json(resp: httpx.Response, status: int, body: dict[str, Any]) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == JSON
    assert resp.json() == body


def assert_root(url: str) -> None:
    resp = _get(f"{url}/")
    assert_json(resp, 200, ROOT)
    assert list(resp.json()) == ["status", "service"]  # field order as the seed shows it


def _with_token(token: str) -> Any:
    host = PluginHost(load_entry_points=False, extra_plugins=[("health", health)])
    return build_parser(host, environ={}).parse_args(["--http-admin-token", token])


# -- GET / --------------------------------------------------------------------------------------


def test_root_answers_the_static_payload_before_the_engine_starts(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory([("health", health)], start=False)
    assert_root(lmcache_http(server))
    assert server.storage is None and not server.ready  # answering did not start anything


def test_root_answers_while_ready_and_after_stop(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory([("health", health)])
    url = lmcache_http(server)
    assert_root(url)
    server.stop()
    assert_root(url)


def test_root_and_healthcheck_while_storage_is_broken(lmcache_server_factory, lmcache_http):
    """Storage closed under a wired engine: ``/`` is static and ``/healthcheck`` only checks the
    engine is wired (the seed: no deeper probe), so both stay 200; ``/status`` is where it shows."""
    server = lmcache_server_factory([("health", health)])
    url = lmcache_http(server)
    server.storage.close()
    assert server.status()["storage_manager"]["is_healthy"] is False
    assert server.status()["is_healthy"] is False
    assert_root(url)
    assert_json(_get(f"{url}/healthcheck"), 200, HEALTHY)


def test_root_answers_in_an_app_with_no_server_on_its_state(lmcache_server_factory, lmcache_serve_app):
    """The handler resolves no dependency: it answers even where there is no server to resolve."""
    app = create_app(lmcache_server_factory([("health", health)], start=False))
    del app.state.server
    url = lmcache_serve_app(app)
    assert_root(url)
    assert_json(_get(f"{url}/healthcheck"), 503, UNHEALTHY)


def test_root_ignores_query_strings_and_bodies(lmcache_server_factory, lmcache_http):
    url = lmcache_http(lmcache_server_factory([("health", health)]))
    assert_json(_get(f"{url}/", params={"verbose": "1", "x": ""}), 200, ROOT)
    resp = httpx.request("GET", f"{url}/", content=b"{not json", headers={"Content-Type": JSON}, timeout=TIMEOUT)
    assert_json(resp, 200, ROOT)


# -- GET /healthcheck ---------------------------------------------------------------------------


def test_healthcheck_is_503_with_reason_until_start_then_200_then_503_after_stop(lmcache_server_factory,
                                                                                 lmcache_http):
    server = lmcache_server_factory([("health", health)], start=False)
    url = lmcache_http(server)
    resp = _get(f"{url}/healthcheck")
    assert_json(resp, 503, UNHEALTHY)
    assert list(resp.json()) == ["status", "reason"]
    server.start()
    assert_json(_get(f"{url}/healthcheck"), 200, HEALTHY)
    server.stop()
    assert_json(_get(f"{url}/healthcheck"), 503, UNHEALTHY)


def test_health_routes_need_no_admin_token(lmcache_server_factory, lmcache_http):
    url = lmcache_http(lmcache_server_factory([("health", health)], options=_with_token("s3cr3t-token")))
    assert_root(url)
    assert_json(_get(f"{url}/healthcheck"), 200, HEALTHY)
    assert_json(_get(f"{url}/healthcheck", headers={"Authorization": "Bearer wrong"}), 200, HEALTHY)


# -- other methods ------------------------------------------------------------------------------


def test_other_methods_are_405_in_every_state(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory([("health", health)], start=False)
    url = lmcache_http(server)
    for state in ("not started", "ready", "stopped"):
        for path in ("/", "/healthcheck"):
            for method in OTHER_METHODS:
                resp = httpx.request(method, f"{url}{path}", content=b'{"a": 1}', timeout=TIMEOUT)
                assert resp.status_code == 405, (state, method, path)
                assert "GET" in resp.headers["allow"]
            resp = httpx.options(f"{url}{path}", timeout=TIMEOUT)
            assert resp.status_code == 204 and "GET" in resp.headers["allow"]
        if state == "not started":
            server.start()
        elif state == "ready":
            server.stop()


# -- fuzzing ------------------------------------------------------------------------------------

REQUESTS = http_requests(["/", "/healthcheck"])


def _fuzz(url: str, ready: bool, req: dict[str, Any]) -> None:
    resp = httpx.request(req["method"], f"{url}{req['path']}", params=req["params"], headers=req["headers"],
                         content=req["body"], timeout=TIMEOUT)
    assert resp.status_code < 500 or (resp.status_code == 503 and req["path"] == "/healthcheck" and not ready), \
        (req, resp.status_code, resp.text)
    if req["method"] == "GET":
        if req["path"] == "/":
            assert_json(resp, 200, ROOT)
        else:
            assert_json(resp, 200, HEALTHY) if ready else assert_json(resp, 503, UNHEALTHY)
    elif req["method"] == "OPTIONS":
        assert resp.status_code == 204
    else:
        assert resp.status_code == 405


@pytest.fixture
def ready_url(lmcache_server_factory: Any, lmcache_http: Any) -> str:
    """One ready server per test function (hypothesis reuses a function's fixtures across examples)."""
    return lmcache_http(lmcache_server_factory([("health", health)], options=_with_token("fuzz-token")))


@pytest.fixture
def unstarted_url(lmcache_server_factory: Any, lmcache_http: Any) -> str:
    return lmcache_http(lmcache_server_factory([("health", health)], options=_with_token("fuzz-token"), start=False))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=REQUESTS)
def test_fuzz_ready_server_never_5xx(ready_url, req):
    _fuzz(ready_url, True, req)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=REQUESTS)
def test_fuzz_unstarted_server_only_documented_503(unstarted_url, req):
    _fuzz(unstarted_url, False, req)


def test_installed_distribution_exposes_the_entry_point():
    from importlib.metadata import entry_points

    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "health"]
    assert ep.load() is health
    assert ep.dist.metadata["Name"] == "lmcache-plugin-health"
