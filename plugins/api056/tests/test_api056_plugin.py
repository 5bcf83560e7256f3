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
