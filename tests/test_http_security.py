"""Every route of every installed plugin, classified: admin-guarded or open, checked over real HTTP.

With ``--http-admin-token`` set, each guarded route answers 401 without the
token (or with a wrong one) and is served with it; each open route never asks
for it. A route that is in neither table fails the test, so a new route must
be classified (and its guard decided) by whoever adds it.
"""

from __future__ import annotations

import re

import httpx
import pytest

from lmcache_core.cli import build_parser
from lmcache_core.http.app import create_app
from lmcache_core.plugins import PluginHost

TOKEN = "correct-horse-battery-staple"

# (method, path template without converters) -> a concrete request: (path with query, JSON body or None)
GUARDED = {
    ("POST", "/clear-cache"): ("/clear-cache", None),
    ("POST", "/metrics/reset"): ("/metrics/reset", None),
    ("PUT", "/quota/{cache_salt}"): ("/quota/alice", {"limit_gb": 1.0}),
    ("DELETE", "/quota/{cache_salt}"): ("/quota/alice", None),
    ("DELETE", "/l2"): ("/l2?adapter=memory", {"keys": []}),
    ("POST", "/l2/prefetch"): ("/l2/prefetch", {"model_name": "m", "tokens": [1, 2, 3]}),
    ("POST", "/reconfigure/{backend}/{operation}"): ("/reconfigure/dax/resize", {"size": "1GiB"}),
    ("POST", "/reconfigure/{backend}/status"): ("/reconfigure/dax/status", {}),
    ("POST", "/cache/clear"): ("/cache/clear", None),
    ("DELETE", "/cache/objects"): ("/cache/objects", {"keys": [], "tier": "l1"}),
    ("POST", "/cache/prefetches"): ("/cache/prefetches", {"model_name": "m", "world_size": 1, "token_ids": []}),
    ("POST", "/reconfigure/{backend}/l2/{operation}"): ("/reconfigure/dax/l2/resize", {"size": "1GiB"}),
    ("POST", "/reconfigure/{backend}/l2/status"): ("/reconfigure/dax/l2/status", {}),
    ("GET", "/threads"): ("/threads", None),
    ("GET", "/env"): ("/env", None),
    ("POST", "/run_script"): ("/run_script", None),
    ("GET", "/periodic-threads"): ("/periodic-threads", None),
    ("GET", "/periodic-threads/{thread_name}"): ("/periodic-threads/l1-eviction", None),
}
# /loglevel serves reads and one write on one path: only the write (set) mode is guarded.
GUARDED_MODES = [("GET", "/loglevel?logger_name=lmcache-security-test&level=INFO")]

OPEN = {
    ("GET", "/"), ("GET", "/healthcheck"), ("GET", "/status"), ("GET", "/conf"), ("GET", "/version"),
    ("GET", "/lmc_version"), ("GET", "/commit_id"), ("GET", "/plugins"), ("GET", "/metrics"),
    ("GET", "/kvcache/check"), ("POST", "/cache/checksums"),
    ("GET", "/quota"), ("GET", "/quota/{cache_salt}"),
    ("GET", "/l2/adapters"), ("GET", "/l2/keys"), ("GET", "/l2/prefetch/{request_id}"),
    ("GET", "/reconfigure/backends"), ("GET", "/reconfigure/{backend}/status"),
    ("GET", "/loglevel"), ("GET", "/periodic-threads-health"),
    ("GET", "/config"), ("GET", "/config/adapters"), ("GET", "/cache/objects"),
    ("GET", "/cache/prefetches/{request_id}"), ("GET", "/reconfigure/{backend}/l2/status"),
}
OPEN_REQUESTS = {
    ("GET", "/quota/{cache_salt}"): "/quota/alice",
    ("GET", "/l2/prefetch/{request_id}"): "/l2/prefetch/nope",
    ("GET", "/reconfigure/{backend}/status"): "/reconfigure/dax/status",
    ("GET", "/cache/prefetches/{request_id}"): "/cache/prefetches/nope",
    ("GET", "/reconfigure/{backend}/l2/status"): "/reconfigure/dax/l2/status",
    ("GET", "/kvcache/check"): "/kvcache/check?instance_id=1&block_ids=0",
}


def _template(path: str) -> str:
    return re.sub(r"\{(\w+):[^}]+\}", r"{\1}", path)


def installed_routes(server) -> set[tuple[str, str]]:
    app = create_app(server)
    routes = set()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                if method not in ("HEAD", "OPTIONS") and not route.path.startswith("/schema"):
                    routes.add((method, _template(route.path)))
    return routes


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    from lmcache_core.testing import make_server, serving

    fs = tmp_path_factory.mktemp("fs-l2")
    options = build_parser(PluginHost(), environ={}).parse_args([
        "--http-admin-token", TOKEN, "--l1-size-gb", "0.05", "--l2-adapter", f'{{"type":"fs","base_path":"{fs}"}}'])
    server = make_server(entry_points=True, options=options)
    try:
        with serving(server) as url:
            yield server, url
    finally:
        server.stop()


def test_every_installed_route_is_classified(guarded_server):
    server, _ = guarded_server
    routes = installed_routes(server)
    unclassified = routes - set(GUARDED) - OPEN
    assert not unclassified, f"classify these routes as guarded or open: {sorted(unclassified)}"
    assert routes >= set(GUARDED) | OPEN, f"routes expected but not installed: {sorted((set(GUARDED) | OPEN) - routes)}"


def _request(client: httpx.Client, method: str, path: str, body, headers) -> httpx.Response:
    if path == "/run_script":
        return client.request(method, path, files={"script": ("s.py", b"result = 1")}, headers=headers)
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("route", sorted(GUARDED) + GUARDED_MODES, ids=lambda r: f"{r[0]} {r[1]}")
def test_a_guarded_route_needs_the_token(guarded_server, route):
    _, url = guarded_server
    method, template = route
    path, body = GUARDED.get(route, (template, None))
    with httpx.Client(base_url=url, timeout=30) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            refused = _request(client, method, path, body, headers)
            assert refused.status_code == 401, (route, headers, refused.status_code, refused.text[:200])
            assert refused.json() == {"error": "admin token required"}
        served = _request(client, method, path, body, {"Authorization": f"Bearer {TOKEN}"})
        assert served.status_code != 401 and served.status_code < 500 or served.status_code in (501, 503), \
            (route, served.status_code, served.text[:200])


@pytest.mark.parametrize("route", sorted(OPEN), ids=lambda r: f"{r[0]} {r[1]}")
def test_an_open_route_never_asks_for_the_token(guarded_server, route):
    _, url = guarded_server
    method, template = route
    path = OPEN_REQUESTS.get(route, template)
    with httpx.Client(base_url=url, timeout=30) as client:
        body = {} if method == "POST" else None
        resp = client.request(method, path, json=body)
        assert resp.status_code != 401, (route, resp.text[:200])
        assert resp.status_code < 500 or resp.status_code in (501, 503), (route, resp.status_code, resp.text[:200])
