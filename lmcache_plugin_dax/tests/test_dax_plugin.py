"""The dax plugin installs, is found through its entry point, registers type ``dax`` and its config section."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

import lmcache_plugin_dax.plugin as dax_plugin
from lmcache_core.plugins import PluginHost
from lmcache_core.testing import parse_options
from lmcache_plugin_dax.config import DaxAdapterConfig

PLUGINS = [("dax", dax_plugin)]


def test_dax_plugin_is_discovered_and_registers_the_dax_type():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "dax"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-dax"
    host = PluginHost(allow="dax")
    assert host.plugins["dax"].distribution == "lmcache-plugin-dax"
    assert not host.failed
    assert host.l2_adapter_types().get("dax").config_type is DaxAdapterConfig


def test_allowed_paths_come_from_the_flag_or_its_environment_variable(lmcache_server_factory):
    args = parse_options(PLUGINS, ["--dax-allowed-paths", "/a", "/b,/c"])
    assert args.dax_allowed_paths == ["/a", "/b", "/c"]
    assert parse_options(PLUGINS, [], {"LMCACHE_DAX_ALLOWED_PATHS": "/d,/e"}).dax_allowed_paths == ["/d", "/e"]
    assert parse_options(PLUGINS, []).dax_allowed_paths == []
    server = lmcache_server_factory(PLUGINS, options=parse_options(PLUGINS, ["--dax-allowed-paths", "/srv/dax"]))
    assert server.configs["dax"].allowed_paths == ["/srv/dax"]


def test_a_relative_allowed_path_is_a_startup_error(lmcache_server_factory):
    with pytest.raises(ValueError, match="absolute"):
        lmcache_server_factory(PLUGINS, options=parse_options(PLUGINS, ["--dax-allowed-paths", "rel/dir"]))
