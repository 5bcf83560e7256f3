"""GET /status over real HTTP: merged contributions, 503 envelope with ``error``."""

from __future__ import annotations

import httpx

import lmcache_plugin_inspect.plugin as inspect_plugin


class _Section:
    """A plugin contributing a status section (hook implementations may be any object)."""

    from lmcache_core import hookimpl

    @staticmethod
    @hookimpl
    def lmcache_status(server):
        return {"extra_section": {"ok": True}}


def test_status_merges_core_fields_and_plugin_sections(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory([("inspect", inspect_plugin), ("extra", _Section())])
    resp = httpx.get(f"{lmcache_http(server)}/status")
    assert resp.status_code == 200
    body = resp.json()
    assert body["is_healthy"] is True
    assert body["chunk_size"] == 256 and body["hash_algorithm"] == "blake3"
    assert body["extra_section"] == {"ok": True}


def test_status_is_503_with_error_until_the_engine_is_ready(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory([("inspect", inspect_plugin)], start=False)
    resp = httpx.get(f"{lmcache_http(server)}/status")
    assert resp.status_code == 503
    assert resp.json() == {"error": "engine not initialized"}
