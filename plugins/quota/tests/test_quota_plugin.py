"""The quota plugin installs, is found through its entry point and loads."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.plugins import PluginHost


def test_quota_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "quota"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-quota"
    host = PluginHost(allow="quota")
    assert host.plugins["quota"].distribution == "lmcache-plugin-quota"
    assert not host.failed
