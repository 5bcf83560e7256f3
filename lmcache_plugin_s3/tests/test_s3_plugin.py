"""The s3 plugin installs, is found through its entry point and loads."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.plugins import PluginHost


def test_s3_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "s3"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-s3"
    host = PluginHost(allow="s3")
    assert host.plugins["s3"].distribution == "lmcache-plugin-s3"
    assert not host.failed
