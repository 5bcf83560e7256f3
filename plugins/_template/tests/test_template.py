"""How a plugin tests itself: the ``lmcache_server_factory`` and ``lmcache_http`` fixtures
(from ``lmcache_core.testing``, a pytest plugin installed with lmcache-core) build a
server with just this plugin and serve it over real HTTP."""

from __future__ import annotations

import argparse

import httpx

import lmcache_plugin_template.plugin as template


def options(**values):
    from lmcache_core.cli import build_parser
    from lmcache_core.plugins import PluginHost

    host = PluginHost(load_entry_points=False, extra_plugins=[("template", template)])
    return build_parser(host, environ={}).parse_args(
        [f"--{k.replace('_', '-')}={v}" for k, v in values.items()])


def test_route_status_and_option(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory([("template", template)], options=options(template_greeting="bonjour"))
    url = lmcache_http(server)
    assert httpx.get(f"{url}/template/greeting").json() == {"greeting": "bonjour", "chunk_size": 256}
    assert server.status()["template"] == {"greeting": "bonjour"}
    assert server.configs["template"].greeting == "bonjour"


def test_option_default_and_help():
    assert isinstance(options(), argparse.Namespace)
    assert options().template_greeting == "hello"


def test_route_is_503_before_the_engine_is_ready(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory([("template", template)], start=False)
    resp = httpx.get(f"{lmcache_http(server)}/template/greeting")
    assert resp.status_code == 503
    assert resp.json() == {"error": "engine not initialized"}
