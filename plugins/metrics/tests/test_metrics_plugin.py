"""The metrics plugin installs, is found through its entry point and loads."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.plugins import PluginHost


def test_metrics_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "metrics"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-metrics"
    host = PluginHost(allow="metrics")
    assert host.plugins["metrics"].distribution == "lmcache-plugin-metrics"
    assert not host.failed
