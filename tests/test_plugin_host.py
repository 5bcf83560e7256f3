"""The plugin host: discovery through real entry points, selection, isolation, duplicates."""

from __future__ import annotations

import httpx
import pytest

from lmcache_core.plugins import DuplicateRegistrationError, PluginHost, PluginLoadError
from lmcache_core.server import CacheServer
from lmcache_core.testing import serving


def names(host: PluginHost) -> set[str]:
    return set(host.plugins)


def test_builtins_register_through_the_same_hooks_and_always_load():
    host = PluginHost(allow="health")
    assert {"core.eviction", "core.routes", "core.engine"} <= names(host)
    assert host.plugins["core.eviction"].hooks == ["lmcache_register_eviction_policies"]
    assert {"LRU", "IsolatedLRU", "noop"} <= set(host.eviction_policies().names())
    assert host.eviction_policies().plugin_of("LRU") == "core.eviction"


def test_entry_point_plugin_route_status_and_listing_over_http(fake_dists):
    fake_dists("lmcache-fixture-everything", {"everything": "everything"}, version="1.2.3")
    server = CacheServer(PluginHost(allow="everything,inspect"))
    server.start()
    try:
        with serving(server) as url:
            assert httpx.get(f"{url}/fixture/hello").json() == {"hello": "fixture"}
            status = httpx.get(f"{url}/status").json()
            assert status["fixture"] == {"greeting": "hi", "chunk_size": 256}
            listing = httpx.get(f"{url}/plugins").json()
    finally:
        server.stop()
    entry = next(p for p in listing["plugins"] if p["name"] == "everything")
    assert entry["distribution"] == "lmcache-fixture-everything"
    assert entry["version"] == "1.2.3"
    assert entry["builtin"] is False
    assert set(entry["hooks"]) == {
        "lmcache_add_options", "lmcache_register_config", "lmcache_register_l2_adapters",
        "lmcache_register_eviction_policies", "lmcache_register_routes", "lmcache_status", "lmcache_startup",
        "lmcache_shutdown",
    }
    assert "--everything-level" in listing_help()


def listing_help() -> str:
    """``--help`` of a launcher with the ``everything`` fixture (its ``lmcache_register_config`` section)."""
    from lmcache_core.cli import build_parser

    return build_parser(PluginHost(allow="everything"), {}).format_help()


def test_plugin_whose_import_raises_is_skipped_and_listed_as_failed(fake_dists):
    fake_dists("lmcache-fixture-broken", {"broken": "broken"})
    fake_dists("lmcache-fixture-everything", {"everything": "everything"})
    server = CacheServer(PluginHost(allow="broken,everything,health"))
    server.start()
    try:
        with serving(server) as url:
            listing = httpx.get(f"{url}/plugins").json()
            assert httpx.get(f"{url}/healthcheck").status_code == 200
    finally:
        server.stop()
    assert "broken" not in {p["name"] for p in listing["plugins"]}
    [failed] = listing["failed"]
    assert failed["name"] == "broken"
    assert failed["distribution"] == "lmcache-fixture-broken"
    assert "RuntimeError: boom: fixture plugin cannot import" in failed["error"]


def test_strict_host_refuses_a_failing_plugin_naming_it(fake_dists):
    fake_dists("lmcache-fixture-broken", {"broken": "broken"})
    with pytest.raises(PluginLoadError) as err:
        PluginHost(allow="broken", strict=True)
    assert err.value.plugin == "broken"
    assert "boom" in str(err.value)


def test_duplicate_l2_type_fails_startup_naming_both_plugins(fake_dists):
    fake_dists("lmcache-fixture-dup-a", {"dup_a": "dup_l2_a"})
    fake_dists("lmcache-fixture-dup-b", {"dup_b": "dup_l2_b"})
    with pytest.raises(DuplicateRegistrationError) as err:
        CacheServer(PluginHost(allow="dup_a,dup_b"))
    assert {err.value.first, err.value.second} == {"dup_a", "dup_b"}
    assert "'dup-type'" in str(err.value) and "dup_a" in str(err.value) and "dup_b" in str(err.value)


def test_duplicate_policy_name_with_a_builtin_fails_naming_both(fake_dists):
    fake_dists("lmcache-fixture-dup-policy", {"dup_policy": "dup_policy"})
    with pytest.raises(DuplicateRegistrationError) as err:
        CacheServer(PluginHost(allow="dup_policy"))
    assert {err.value.first, err.value.second} == {"core.eviction", "dup_policy"}


def test_registration_hook_that_raises_drops_the_plugin_whole(fake_dists):
    fake_dists("lmcache-fixture-bad-hooks", {"bad_hooks": "bad_hooks"})
    server = CacheServer(PluginHost(allow="bad_hooks,health"))
    server.start()
    try:
        with serving(server) as url:
            assert httpx.get(f"{url}/healthcheck").status_code == 200
            listing = httpx.get(f"{url}/plugins").json()
    finally:
        server.stop()
    assert [f["name"] for f in listing["failed"]] == ["bad_hooks"]
    assert "lmcache_register_routes raised ValueError: cannot build routes" in listing["failed"][0]["error"]
    assert "bad_hooks" not in {p["name"] for p in listing["plugins"]}


def test_invalid_registration_is_a_plugin_failure_and_fatal_when_strict(fake_dists):
    fake_dists("lmcache-fixture-bad-factory", {"bad_factory": "bad_factory"})
    host = PluginHost(allow="bad_factory")
    assert "not-callable" not in host.l2_adapter_types()
    assert [f.name for f in host.failed] == ["bad_factory"]
    with pytest.raises(PluginLoadError, match="bad_factory"):  # registrations are collected at load
        PluginHost(allow="bad_factory", strict=True)


def test_failing_status_hook_reports_its_error_and_status_still_answers(fake_dists):
    fake_dists("lmcache-fixture-bad-status", {"bad_status": "bad_status"})
    server = CacheServer(PluginHost(allow="bad_status,inspect"))
    server.start()
    try:
        with serving(server) as url:
            resp = httpx.get(f"{url}/status")
    finally:
        server.stop()
    assert resp.status_code == 200
    assert resp.json()["plugin_errors"] == {"bad_status": "RuntimeError: status exploded"}
    assert resp.json()["is_healthy"] is True


def test_deny_listing_health_makes_healthcheck_404():
    server = CacheServer(PluginHost(deny="health"))
    server.start()
    try:
        with serving(server) as url:
            assert httpx.get(f"{url}/healthcheck").status_code == 404
            assert httpx.get(f"{url}/status").status_code == 200
            assert "health" in httpx.get(f"{url}/plugins").json()["not_selected"]
    finally:
        server.stop()


def test_allow_listing_only_health_leaves_status_404():
    server = CacheServer(PluginHost(allow="health"))
    server.start()
    try:
        with serving(server) as url:
            assert httpx.get(f"{url}/healthcheck").status_code == 200
            assert httpx.get(f"{url}/status").status_code == 404
    finally:
        server.stop()


def test_l2_adapter_types_and_policies_from_plugins_are_usable(fake_dists):
    import msgspec

    from lmcache_core.config import StorageManagerConfig

    fake_dists("lmcache-fixture-everything", {"everything": "everything"})
    host = PluginHost(allow="everything")
    server = CacheServer(host, {"storage_manager": StorageManagerConfig(
        eviction_policy="fixture-fifo", l2_adapter=[{"type": "fixture-mem", "capacity_bytes": 5}])})
    adapter_type = server.l2_adapter_types.get("fixture-mem")
    config = msgspec.convert({"capacity_bytes": 5}, adapter_type.config_type)
    assert adapter_type.factory(config)["config"].capacity_bytes == 5
    assert server.eviction_policies.plugin_of("fixture-fifo") == "everything"


def test_unknown_l2_type_fails_naming_position_and_known_types(fake_dists):
    from lmcache_core.config import StorageManagerConfig

    fake_dists("lmcache-fixture-everything", {"everything": "everything"})
    with pytest.raises(ValueError, match=r"--l2-adapter #1: unknown type 'nope'; known types: fixture-mem"):
        CacheServer(PluginHost(allow="everything"), {"storage_manager": StorageManagerConfig(
            l2_adapter=[{"type": "fixture-mem"}, {"type": "nope"}])})


def test_startup_and_shutdown_hooks_run_once_each(fake_dists):
    import everything

    fake_dists("lmcache-fixture-everything", {"everything": "everything"})
    everything.CALLS.clear()
    server = CacheServer(PluginHost(allow="everything"))
    server.start()
    server.start()
    assert everything.CALLS == ["startup"]
    server.stop()
    server.stop()
    assert everything.CALLS == ["startup", "shutdown"]


def test_two_hosts_are_independent(fake_dists):
    fake_dists("lmcache-fixture-everything", {"everything": "everything"})
    a = PluginHost(allow="everything")
    b = PluginHost(deny="everything")
    assert "everything" in a.plugins and "everything" not in b.plugins
    assert a.pm is not b.pm


def test_openapi_document_is_served_at_schema_and_lists_plugin_routes():
    server = CacheServer(PluginHost(allow="health,inspect"))
    server.start()
    try:
        with serving(server) as url:
            doc = httpx.get(f"{url}/schema/openapi.json").json()
    finally:
        server.stop()
    assert {"/", "/healthcheck", "/status", "/plugins"} <= set(doc["paths"])
    assert "PluginsListing" in doc["components"]["schemas"]
