"""The reconfigure plugin installs, is found through its entry point, loads and registers its routes."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.plugins import PluginHost


def test_reconfigure_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "reconfigure"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-reconfigure"
    host = PluginHost(allow="reconfigure")
    assert host.plugins["reconfigure"].distribution == "lmcache-plugin-reconfigure"
    assert host.plugins["reconfigure"].hooks == ["lmcache_register_routes"]
    assert not host.failed
