"""GET / and GET /healthcheck over real HTTP, exactly as the seed API documents them."""

from __future__ import annotations

import httpx

import lmcache_plugin_health.plugin as health


def test_root_is_static_and_answers_before_the_engine_is_ready(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory([("health", health)], start=False)
    url = lmcache_http(server)
    resp = httpx.get(f"{url}/")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"status": "ok", "service": "LMCache HTTP API"}


def test_healthcheck_is_503_with_reason_until_the_engine_is_ready(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory([("health", health)], start=False)
    url = lmcache_http(server)
    resp = httpx.get(f"{url}/healthcheck")
    assert resp.status_code == 503
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"status": "unhealthy", "reason": "engine not initialized"}
    server.start()
    resp = httpx.get(f"{url}/healthcheck")
    assert resp.status_code == 200
    assert resp.json() == {"status": "healthy"}
    server.stop()
    assert httpx.get(f"{url}/healthcheck").status_code == 503


def test_health_routes_reject_other_methods(lmcache_server_factory, lmcache_http):
    url = lmcache_http(lmcache_server_factory([("health", health)]))
    assert httpx.post(f"{url}/healthcheck").status_code == 405
    assert httpx.delete(f"{url}/").status_code == 405


def test_installed_distribution_exposes_the_entry_point():
    from importlib.metadata import entry_points

    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "health"]
    assert ep.load() is health
    assert ep.dist.metadata["Name"] == "lmcache-plugin-health"
