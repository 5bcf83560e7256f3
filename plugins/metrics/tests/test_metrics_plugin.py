"""GET /metrics and POST /metrics/reset over real HTTP."""

from __future__ import annotations

from importlib.metadata import entry_points

import httpx

import lmcache_plugin_metrics.plugin as metrics_plugin
from lmcache_core.keys import ObjectKey
from lmcache_core.plugins import PluginHost


def sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "metrics"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-metrics"
    host = PluginHost(allow="metrics")
    assert host.plugins["metrics"].hooks == ["lmcache_register_routes"]


def test_metrics_are_prometheus_text_and_reset_zeroes_counters(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory([("metrics", metrics_plugin)])
    url = lmcache_http(server)
    l1 = server.storage.l1
    keys = [ObjectKey(bytes([i]) * 32, "m", 0x01000100) for i in range(3)]
    l1.reserve_write(keys, 4096)
    l1.finish_write(keys)
    resp = httpx.get(f"{url}/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert sample(resp.text, "lmcache_mp_l1_memory_usage_bytes") == 3 * 4096.0
    assert sample(resp.text, "lmcache_mp_l1_write_chunks_total") >= 3
    reset = httpx.post(f"{url}/metrics/reset")
    assert (reset.status_code, reset.text) == (200, "ok")
    assert reset.headers["content-type"].startswith("text/plain")
    after = httpx.get(f"{url}/metrics").text
    assert sample(after, "lmcache_mp_l1_write_chunks_total") in (None, 0.0)
    assert sample(after, "lmcache_mp_l1_memory_usage_bytes") == 3 * 4096.0  # gauges are live, not reset


def test_metrics_answer_before_the_engine_is_ready_and_refuse_other_methods(lmcache_server_factory, lmcache_http):
    url = lmcache_http(lmcache_server_factory([("metrics", metrics_plugin)], start=False))
    assert httpx.get(f"{url}/metrics").status_code == 200
    assert httpx.delete(f"{url}/metrics").status_code == 405
    assert httpx.get(f"{url}/metrics/reset").status_code == 405
