"""The api056 plugin installs, is found through its entry point, loads, and can be deny-listed."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.plugins import PluginHost


def test_api056_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "api056"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-api056"
    host = PluginHost(allow="api056")
    assert host.plugins["api056"].distribution == "lmcache-plugin-api056"
    assert not host.failed


def test_api056_can_be_denied():
    host = PluginHost(deny="api056")
    assert "api056" not in host.plugins


def test_every_operation_of_every_installed_plugin_is_tagged_with_its_generation(lmcache_server_factory,
                                                                                  lmcache_http):
    import httpx

    from lmcache_core.cli import build_parser

    options = build_parser(PluginHost(), environ={}).parse_args(["--l1-size-gb", "0.05"])
    server = lmcache_server_factory(entry_points=True, options=options, start=False)
    doc = httpx.get(f"{lmcache_http(server)}/schema/openapi.json", timeout=30).json()
    tags = {(m.upper(), p): {t for t in op.get("tags", []) if t.startswith("generation:")}
            for p, item in doc["paths"].items() for m, op in item.items() if isinstance(op, dict)}
    assert all(tags.values()), sorted(k for k, v in tags.items() if not v)
    both = {"generation:seed", "generation:0.5.6"}
    assert tags[("GET", "/status")] == tags[("PUT", "/quota/{cache_salt}")] == both
    assert tags[("GET", "/conf")] == tags[("DELETE", "/l2")] == {"generation:seed"}
    assert tags[("POST", "/reconfigure/{backend}/{operation}")] == {"generation:seed"}
    assert tags[("GET", "/config")] == tags[("POST", "/cache/checksums")] == {"generation:0.5.6"}
    assert tags[("GET", "/plugins")] == {"generation:lmcache-server"}
