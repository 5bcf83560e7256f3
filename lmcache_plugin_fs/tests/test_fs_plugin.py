"""The fs plugin installs, is found through its entry point, and registers adapter type ``fs``."""

from __future__ import annotations

from importlib.metadata import entry_points

import msgspec
import torch
from lmcache_plugin_fs.adapter import FSAdapterConfig, FSL2Adapter

from lmcache_core.config import StorageManagerConfig
from lmcache_core.keys import ObjectKey
from lmcache_core.plugins import PluginHost
from lmcache_core.storage.l2.base import L2AdapterContext


def test_fs_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "fs"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-fs"
    host = PluginHost(allow="fs")
    assert host.plugins["fs"].distribution == "lmcache-plugin-fs"
    assert not host.failed


def test_fs_type_registers_and_builds_a_working_adapter_from_cli_json(tmp_path):
    host = PluginHost(allow="fs")
    adapter_type = host.l2_adapter_types().get("fs")
    assert host.l2_adapter_types().plugin_of("fs") == "fs"
    assert adapter_type.config_type is FSAdapterConfig
    doc = {"type": "fs", "base_path": str(tmp_path / "l2"), "checksum": "crc32"}
    config = msgspec.convert({k: v for k, v in doc.items() if k != "type"}, adapter_type.config_type)
    adapter = adapter_type.factory(config, L2AdapterContext(0, "fs"))
    try:
        assert isinstance(adapter, FSL2Adapter)
        adapter.start()
        key = ObjectKey(b"\x07" * 32, "m", 0x01000100, 0, "")
        data = torch.arange(256, dtype=torch.int32).view(torch.uint8)
        assert adapter.store([key], [data]).result(10) == [True]
        out = torch.zeros_like(data)
        assert adapter.load([key], [out]).result(10) == [True] and torch.equal(out, data)
    finally:
        adapter.close()


def test_server_accepts_fs_in_l2_adapter_config(lmcache_server_factory, tmp_path):
    from lmcache_plugin_fs import plugin

    server = lmcache_server_factory(
        plugins=[("fs", plugin)], start=False,
        configs={"storage_manager": StorageManagerConfig(l2_adapter=[{"type": "fs", "base_path": str(tmp_path)}])},
    )
    assert "fs" in server.l2_adapter_types
