"""How a plugin tests itself: the ``lmcache_server_factory`` and ``lmcache_http`` fixtures
(from ``lmcache_core.testing``, a pytest plugin installed with lmcache-core) build a
server with just this plugin and serve it over real HTTP."""

from __future__ import annotations

import httpx
import pytest

import lmcache_plugin_template.plugin as template
from lmcache_core.testing import parse_options

PLUGINS = [("template", template)]


def test_route_status_and_config(lmcache_server_factory, lmcache_http):
    options = parse_options(PLUGINS, ["--template-greeting", "bonjour"])
    server = lmcache_server_factory(PLUGINS, options=options)
    url = lmcache_http(server)
    assert httpx.get(f"{url}/template/greeting/2").json() == {"greeting": "bonjour bonjour", "chunk_size": 256}
    assert server.status()["template"] == {"greeting": "bonjour"}
    assert server.configs["template"] == template.TemplateConfig(greeting="bonjour")


def test_config_defaults_and_environment():
    assert parse_options(PLUGINS, []).template_greeting == "hello"
    assert parse_options(PLUGINS, [], {"LMCACHE_TEMPLATE_MAX_REPEAT": "9"}).template_max_repeat == 9


def test_a_value_outside_the_struct_bounds_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        parse_options(PLUGINS, ["--template-max-repeat", "0"])
    assert exc.value.code == 2


@pytest.mark.parametrize("times", [0, 4, 1000])
def test_out_of_range_is_a_400_in_the_groups_envelope(lmcache_server_factory, lmcache_http, times):
    url = lmcache_http(lmcache_server_factory(PLUGINS))
    resp = httpx.get(f"{url}/template/greeting/{times}")
    assert resp.status_code == 400
    assert resp.json() == {"error": f"times must be between 1 and 3, got {times}"}


def test_route_is_503_before_the_engine_is_ready(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory(PLUGINS, start=False)
    resp = httpx.get(f"{lmcache_http(server)}/template/greeting/1")
    assert resp.status_code == 503
    assert resp.json() == {"error": "engine not initialized"}
