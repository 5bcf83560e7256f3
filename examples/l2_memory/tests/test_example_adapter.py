"""The worked example of docs/l2-adapters.md, under test: the contract kit, a full backend, a live server.

The plugin module is registered in-process (it is not installed by ``make install``).
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lmcache_core.api import L2AdapterContext, ObjectKey  # noqa: E402
from lmcache_core.l2_contract import check_l2_adapter  # noqa: E402
from lmcache_example_l2_memory import plugin  # noqa: E402

_stores = itertools.count()


def make_factory(**config):
    config.setdefault("store", f"test-{next(_stores)}")

    def make():
        adapter = plugin.MemoryL2Adapter(plugin.MemoryConfig(**config), L2AdapterContext(0, plugin.TYPE_NAME))
        adapter.start()
        return adapter
    return make


def test_the_example_keeps_the_whole_l2_contract():
    report = check_l2_adapter(make_factory(), persistent=True)
    assert report == {name: "passed" for name in ("round_trip", "absent", "wrong_size_buffer", "locks", "overwrite",
                                                  "usage", "concurrency", "listing", "persistence", "close")}


def test_a_full_backend_skips_stores_without_counting_failures():
    adapter = make_factory(capacity_mb=1)()
    try:
        keys = [ObjectKey(bytes([i]) * 32, "m", 0, 0, "") for i in range(6)]
        ok = adapter.store(keys, [bytearray(256 << 10) for _ in keys]).result(30)
        assert ok == [True] * 4 + [False] * 2  # 4 x 256 KiB fill 1 MiB
        status = adapter.report_status()
        assert status["skipped_full"] == 2
        assert status["failures"]["store"] == 0
        assert status["max_capacity_bytes"] == 1 << 20  # the backend's capacity, passed to the base
    finally:
        adapter.close()


def test_bad_config_is_refused_with_the_field_named():
    import msgspec

    with pytest.raises(msgspec.ValidationError, match="capacity_mb"):
        msgspec.convert({"capacity_mb": 0}, plugin.MemoryConfig)
    with pytest.raises(msgspec.ValidationError, match="unknown"):
        msgspec.convert({"no_such_key": 1}, plugin.MemoryConfig)


def test_a_server_with_the_example_l2_hits_from_it_after_l1_is_cleared(lmcache_server_factory):
    from lmcache_core.client import LMCacheClient, make_key
    from lmcache_core.config import MPConfig, StorageManagerConfig
    from lmcache_core.testing import free_port
    from lmcache_core.transfer.client_kv import WorkerKVCache

    port = free_port()
    server = lmcache_server_factory([("example-l2-memory", plugin)], configs={
        "mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.1, l2_adapter=[
            {"type": plugin.TYPE_NAME, "store": f"server-{next(_stores)}"}]),
    })
    kv = WorkerKVCache(2, (2, 64, 16, 2, 8))
    client = LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=20)
    try:
        client.register_kv_cache(1, kv.descriptors(), "m", 1, {"kv_layout": "NHD"})
        for layer in kv.layers:
            layer[:, :32].random_()
        tokens = list(range(512))
        assert client.store(make_key(tokens, "s", model_name="m", worker_id=0), 1, [list(range(32))]) == (b"", True)
        client.end_session("s")
        adapter = server.storage.l2_adapters[0]
        deadline = time.monotonic() + 30  # the write-behind to L2 runs in the background: poll for it
        while adapter.report_status()["stored_object_count"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert adapter.report_status()["stored_object_count"] == 2
        client.clear(True)
        for layer in kv.layers:
            layer[:, 32:64].zero_()
        assert client.lookup(make_key(tokens, "r", model_name="m")) == 2
        assert client.retrieve(make_key(tokens, "r", model_name="m", worker_id=0), 1,
                               [list(range(32, 64))]) == (b"", True)
        assert all(bool((layer[:, :32] == layer[:, 32:64]).all()) for layer in kv.layers)
        client.end_session("r")
    finally:
        client.close()
        kv.close()
