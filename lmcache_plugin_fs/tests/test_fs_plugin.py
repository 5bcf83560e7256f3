"""The fs plugin installs, is found through its entry point and loads."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.plugins import PluginHost


def test_fs_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "fs"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-fs"
    host = PluginHost(allow="fs")
    assert host.plugins["fs"].distribution == "lmcache-plugin-fs"
    assert not host.failed
