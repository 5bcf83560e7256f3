"""The dax plugin installs, is found through its entry point and loads."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.plugins import PluginHost


def test_dax_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "dax"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-dax"
    host = PluginHost(allow="dax")
    assert host.plugins["dax"].distribution == "lmcache-plugin-dax"
    assert not host.failed
