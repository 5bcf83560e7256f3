"""The l2 plugin installs, is found through its entry point and loads."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.plugins import PluginHost


def test_l2_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "l2"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-l2"
    host = PluginHost(allow="l2")
    assert host.plugins["l2"].distribution == "lmcache-plugin-l2"
    assert not host.failed
