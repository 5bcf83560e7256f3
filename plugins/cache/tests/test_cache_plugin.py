"""The cache plugin installs, is found through its entry point and loads."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.plugins import PluginHost


def test_cache_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "cache"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-cache"
    host = PluginHost(allow="cache")
    assert host.plugins["cache"].distribution == "lmcache-plugin-cache"
    assert not host.failed
