"""The dax plugin installs, is found through its entry point, registers type ``dax`` and its launcher flag."""

from __future__ import annotations

from importlib.metadata import entry_points

from lmcache_core.cli import build_parser
from lmcache_core.plugins import PluginHost
from lmcache_plugin_dax.config import DaxAdapterConfig


def test_dax_plugin_is_discovered_and_registers_the_dax_type():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "dax"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-dax"
    host = PluginHost(allow="dax")
    assert host.plugins["dax"].distribution == "lmcache-plugin-dax"
    assert not host.failed
    registry = host.l2_adapter_types()
    assert registry.get("dax").config_type is DaxAdapterConfig


def test_the_allowed_path_flag_repeats_and_reads_its_environment_variable():
    host = PluginHost(allow="dax")
    args = build_parser(host, environ={}).parse_args(["--dax-allowed-path", "/a", "--dax-allowed-path", "/b"])
    assert args.dax_allowed_path == ["/a", "/b"]
    args = build_parser(host, environ={"LMCACHE_DAX_ALLOWED_PATH": "/c,/d"}).parse_args([])
    assert args.dax_allowed_path == ["/c", "/d"]
    assert build_parser(host, environ={}).parse_args([]).dax_allowed_path == []
