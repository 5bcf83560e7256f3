"""Every route of every installed plugin, classified admin-guarded or open, checked over real HTTP.

The classification is read off the routes (:func:`lmcache_core.testing.route_table`: a handler is
guarded when ``require_admin`` sits on it or on a router above it), so an installed third-party
plugin's routes are classified by their own guards and never fail this module: each guarded one
is checked to answer 401 without the token; an open one is not called (this module does not know
what it does). With ``--http-admin-token`` set, each guarded route of the project's own plugins
answers 401 without the token (or with a wrong one) and is served with it; each open one never
asks for it. Their expected classification is written out below, so an in-tree route that loses
(or gains) its guard fails here, as does a new in-tree route no table names.
"""

from __future__ import annotations

import re

import httpx
import pytest

from lmcache_core.http.app import create_app
from lmcache_core.http_contract import path_template
from lmcache_core.testing import parse_options, route_table

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
    # they list every tenant's cache_salt (92e8d16)
    ("GET", "/l2/keys"): ("/l2/keys", None),
    ("GET", "/quota"): ("/quota", None),
}
# /loglevel serves reads and one write on one path: only the write (set) mode is guarded.
GUARDED_MODES = [("GET", "/loglevel?logger_name=lmcache-security-test&level=INFO")]

OPEN = {
    ("GET", "/"), ("GET", "/healthcheck"), ("GET", "/status"), ("GET", "/conf"), ("GET", "/version"),
    ("GET", "/lmc_version"), ("GET", "/commit_id"), ("GET", "/plugins"), ("GET", "/metrics"),
    ("GET", "/kvcache/check"), ("POST", "/cache/checksums"),
    ("GET", "/quota/{cache_salt}"),
    ("GET", "/l2/adapters"), ("GET", "/l2/prefetch/{request_id}"),
    ("GET", "/reconfigure/backends"), ("GET", "/reconfigure/{backend}/status"),
    ("GET", "/loglevel"), ("GET", "/periodic-threads-health"),
    ("GET", "/config"), ("GET", "/config/adapters"), ("GET", "/cache/objects"),
    ("GET", "/cache/prefetches/{request_id}"), ("GET", "/reconfigure/{backend}/l2/status"),
    ("GET", "/dashboard"), ("GET", "/dashboard/dashboard.css"), ("GET", "/dashboard/dashboard.js"),
    ("GET", "/dashboard/fleet"),
}
OPEN_REQUESTS = {
    ("GET", "/quota/{cache_salt}"): "/quota/alice",
    ("GET", "/l2/prefetch/{request_id}"): "/l2/prefetch/nope",
    ("GET", "/reconfigure/{backend}/status"): "/reconfigure/dax/status",
    ("GET", "/cache/prefetches/{request_id}"): "/cache/prefetches/nope",
    ("GET", "/reconfigure/{backend}/l2/status"): "/reconfigure/dax/l2/status",
    ("GET", "/kvcache/check"): "/kvcache/check?instance_id=1&block_ids=0",
}


IN_TREE_MODULES = ("lmcache_core.", "lmcache_plugin_")
"""Modules of the plugins this repository ships: their routes are classified by name here, any other by its guard."""


def in_tree_routes(app) -> set[tuple[str, str]]:
    """``(method, path template)`` of every route whose handler function is defined in this repository's code."""
    return {(method, path_template(route.path)) for route in app.routes if not route.path.startswith("/schema")
            for handler in getattr(route, "route_handlers", []) if handler.fn.__module__.startswith(IN_TREE_MODULES)
            for method in handler.http_methods if method not in ("HEAD", "OPTIONS")}


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    from lmcache_core.testing import make_server, serving

    fs = tmp_path_factory.mktemp("fs-l2")
    options = parse_options((), ["--http-admin-token", TOKEN, "--l1-size-gb", "0.05",
                                 "--l2-adapter", f'{{"type":"fs","base_path":"{fs}"}}'])
    server = make_server(entry_points=True, options=options)
    try:
        with serving(server) as url:
            yield server, url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def table(guarded_server) -> dict[tuple[str, str], bool]:
    return route_table(create_app(guarded_server[0]))


def test_the_in_tree_routes_carry_the_guards_written_here(table):
    expected = {**{route: True for route in GUARDED}, **{route: False for route in OPEN}}
    missing = sorted(set(expected) - set(table))
    assert not missing, f"routes expected but not installed: {missing}"
    wrong = sorted(route for route in expected if table[route] != expected[route])
    assert not wrong, f"these routes' guard differs from the table here (guarded: True/False): " \
                      f"{[(r, table[r]) for r in wrong]}"


def test_every_in_tree_route_is_classified(guarded_server):
    """A new route of the project's own plugins must be classified here (its guard decided) by whoever adds it."""
    unclassified = in_tree_routes(create_app(guarded_server[0])) - set(GUARDED) - OPEN
    assert not unclassified, f"classify these routes as guarded or open: {sorted(unclassified)}"


def _request(client: httpx.Client, method: str, path: str, body, headers) -> httpx.Response:
    if path == "/run_script":
        return client.request(method, path, files={"script": ("s.py", b"result = 1")}, headers=headers)
    return client.request(method, path, json=body, headers=headers)


def _refused_without_the_token(client: httpx.Client, method: str, path: str, body, route) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        refused = _request(client, method, path, body, headers)
        assert refused.status_code == 401, (route, headers, refused.status_code, refused.text[:200])
        assert refused.json() == {"error": "admin token required"}


@pytest.mark.parametrize("route", sorted(GUARDED) + GUARDED_MODES, ids=lambda r: f"{r[0]} {r[1]}")
def test_a_guarded_route_needs_the_token(guarded_server, route):
    _, url = guarded_server
    method, template = route
    path, body = GUARDED.get(route, (template, None))
    with httpx.Client(base_url=url, timeout=30) as client:
        _refused_without_the_token(client, method, path, body, route)
        served = _request(client, method, path, body, {"Authorization": f"Bearer {TOKEN}"})
        assert served.status_code != 401 and served.status_code < 500 or served.status_code in (501, 503), \
            (route, served.status_code, served.text[:200])


def test_every_other_guarded_route_refuses_a_request_without_the_token(guarded_server, table):
    """Routes of plugins from elsewhere that carry ``require_admin``: 401 before their handler runs."""
    _, url = guarded_server
    others = sorted(route for route, guarded in table.items() if guarded and route not in GUARDED)
    with httpx.Client(base_url=url, timeout=30) as client:
        for method, template in others:
            path = re.sub(r"\{\w+\}", "1", template)  # "1" passes an int, str or path parameter alike
            _refused_without_the_token(client, method, path, None, (method, template))


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


def test_third_party_routes_are_classified_by_their_own_guards():
    """A route plugin from elsewhere (a guarded route, an open one) needs no entry in this module."""
    from litestar import Router, get

    from lmcache_core import api
    from lmcache_core.testing import make_server

    @get("/third-party/secret", guards=[api.require_admin], sync_to_thread=False)
    def secret() -> dict[str, str]:
        return {"secret": "yes"}

    @get("/open", sync_to_thread=False)
    def open_() -> dict[str, str]:
        return {"open": "yes"}

    class ThirdParty:
        @staticmethod
        @api.hookimpl
        def lmcache_register_routes(register):
            register(secret, Router("/third-party", route_handlers=[open_]))

    server = make_server([("third_party", ThirdParty())], start=False)
    table = route_table(create_app(server))
    assert table[("GET", "/third-party/secret")] is True and table[("GET", "/third-party/open")] is False
    assert not {route for route in in_tree_routes(create_app(server)) if route[1].startswith("/third-party")}
    assert {route for route in table if route[1].startswith("/third-party")} == {
        ("GET", "/third-party/secret"), ("GET", "/third-party/open")}
