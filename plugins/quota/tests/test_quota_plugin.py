"""The quota plugin installs, is found through its entry point, loads, and contributes its routes."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.plugins import PluginHost


def test_quota_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "quota"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-quota"
    host = PluginHost(allow="quota")
    assert host.plugins["quota"].distribution == "lmcache-plugin-quota"
    assert not host.failed
    assert host.plugins["quota"].hooks == ["lmcache_register_routes"]


def test_quota_routes_are_in_the_openapi_schema(lmcache_server_factory, lmcache_http):
    import httpx

    url = lmcache_http(lmcache_server_factory(entry_points=True, allow="quota"))
    paths = httpx.get(f"{url}/schema/openapi.json", timeout=30).json()["paths"]
    assert set(paths["/quota/{cache_salt}"]) == {"put", "get", "delete"}
    assert set(paths["/quota"]) == {"get"}
