"""Helpers for the core test suite (importable: ``tests`` is on pytest's pythonpath)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

FIXTURE_PLUGINS = Path(__file__).parent / "fixture_plugins"
if str(FIXTURE_PLUGINS) not in sys.path:
    sys.path.insert(0, str(FIXTURE_PLUGINS))


def subprocess_env(extra_paths: list[Path], **env: str) -> dict[str, str]:
    """The environment for a child ``lmcache-server``: fixture dists and modules importable."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    paths = [str(p) for p in extra_paths] + [str(FIXTURE_PLUGINS)]
    if out.get("PYTHONPATH"):
        paths.append(out["PYTHONPATH"])
    out["PYTHONPATH"] = os.pathsep.join(paths)
    out.update(env)
    return out


# -- a small real L2 adapter (objects in a dict), for tests of the L2 machinery ------------

from lmcache_core.keys import ObjectKey  # noqa: E402
from lmcache_core.storage.l2.base import L2Adapter  # noqa: E402


class MemoryAdapter(L2Adapter):
    """Objects in a dict (what an author writes: five small methods)."""

    def __init__(self, config, context, preloaded=None):
        self.objects: dict[ObjectKey, bytes] = dict(preloaded or {})
        self.fail_puts = False
        super().__init__(config, context)

    def _put(self, key, data):
        if self.fail_puts:
            raise OSError("disk full")
        self.objects[key] = bytes(data)

    def _get(self, key, out):
        data = self.objects.get(key)
        if data is None or len(data) != out.nbytes:
            return False
        out[:] = data
        return True

    def _size(self, key):
        data = self.objects.get(key)
        return None if data is None else len(data)

    def _remove(self, key):
        data = self.objects.pop(key, None)
        return None if data is None else len(data)

    def _recover(self):
        return [(k, len(v)) for k, v in self.objects.items()]


class MemoryPlugin:
    """A plugin registering the 'memory' L2 adapter type (as an L2 plugin does)."""

    from lmcache_core import hookimpl as _hookimpl
    from lmcache_core.storage.l2.base import L2AdapterConfig as _Base

    class Config(_Base, kw_only=True, forbid_unknown_fields=True):
        note: str = ""

    @staticmethod
    @_hookimpl
    def lmcache_register_l2_adapters(register):
        register("memory", MemoryPlugin.Config, lambda config, context: MemoryAdapter(config, context))


# -- a live server with one memory L2 and one registered CPU worker ------------------------

import contextlib  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402


@contextlib.contextmanager
def memory_l2_worker(factory: Any, model: str) -> Iterator[tuple[Any, Any, Any, MemoryAdapter]]:
    """``(server, client, kv, adapter)``: a started server (0.1 GiB L1, a ``memory`` L2, no worker
    reaping) with one NHD CPU worker (instance 1: 2 layers of ``(2, 64, 16, 2, 8)`` fp16)
    registered for ``model`` through a real ZMQ client. ``factory`` is ``lmcache_server_factory``."""
    from lmcache_core.client import LMCacheClient
    from lmcache_core.config import MPConfig, StorageManagerConfig
    from lmcache_core.testing import free_port
    from lmcache_core.transfer.client_kv import WorkerKVCache

    port = free_port()
    server = factory([("memory-l2", MemoryPlugin())], configs={
        "mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.1, l2_adapter=[{"type": "memory"}]),
    })
    kv = WorkerKVCache(2, (2, 64, 16, 2, 8))
    client = LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=20)
    try:
        client.register_kv_cache(1, kv.descriptors(), model, 1, {"kv_layout": "NHD"})
        yield server, client, kv, server.storage.l2_adapters[0]
    finally:
        client.close()
        kv.close()
