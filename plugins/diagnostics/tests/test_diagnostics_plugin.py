"""The diagnostics plugin installs, is found through its entry point and loads."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.plugins import PluginHost


def test_diagnostics_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "diagnostics"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-diagnostics"
    host = PluginHost(allow="diagnostics")
    assert host.plugins["diagnostics"].distribution == "lmcache-plugin-diagnostics"
    assert not host.failed
