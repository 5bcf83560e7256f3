"""The 0.5.6 routes over real HTTP against a real server (ZMQ worker, FS/memory/knob L2 adapters)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from api056_live import CHUNK, MODEL, Live, chunk_keys, encoded, wait_for

from lmcache_core.storage.l1 import L1Result

TOKENS = list(range(3 * CHUNK))


def stored(live: Live, tokens: list[int] = TOKENS) -> list[Any]:
    """Register a worker, store ``tokens``, wait for the write-behind to the FS adapter; their keys."""
    live.worker()
    live.store(tokens)
    keys = chunk_keys(tokens)
    wait_for(lambda: live.fs_files() >= len(keys), "the FS write-behind")
    return keys


# -- /config --------------------------------------------------------------------------------------


def test_config_is_the_indented_masked_config_document(make_live: Any) -> None:
    live = make_live("--http-admin-token", "s3cret")
    resp = live.request("GET", "/config")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.text.startswith('{\n  "')  # indented by 2, as 0.5.6 renders it
    doc = resp.json()
    assert {"mp", "storage_manager", "http"} <= set(doc)
    assert doc["mp"]["chunk_size"] == CHUNK
    assert [a["type"] for a in doc["storage_manager"]["l2_adapter"]] == ["fs", "memory", "knob"]
    assert doc["http"]["http_admin_token"] == "***"
    assert "s3cret" not in resp.text


def test_config_adapters_lists_every_adapter_with_tier_and_reconfigurable(make_live: Any) -> None:
    live = make_live()
    resp = live.request("GET", "/config/adapters")
    assert resp.status_code == 200
    assert resp.json() == {"adapters": [
        {"index": 0, "type_name": "fs", "tier": "l2", "primary": True, "reconfigurable": False},
        {"index": 1, "type_name": "memory", "tier": "l2", "primary": False, "reconfigurable": False},
        {"index": 2, "type_name": "knob", "tier": "l2", "primary": False, "reconfigurable": True}]}
    assert make_live(adapters=[]).request("GET", "/config/adapters").json() == {"adapters": []}


def test_before_the_engine_starts_each_group_answers_503_in_its_envelope(make_live: Any) -> None:
    live = make_live(start=False)
    assert live.request("GET", "/config").status_code == 200  # configs exist from construction on
    for method, path, body in [("GET", "/config/adapters", None), ("POST", "/cache/clear", None),
                               ("GET", "/cache/objects", None), ("DELETE", "/cache/objects", {"keys": []}),
                               ("POST", "/cache/prefetches", {}), ("GET", "/cache/prefetches/x", None)]:
        resp = live.request(method, path, body)
        assert (resp.status_code, resp.json()) == (503, {"detail": "server not initialized"}), path
    for method, path in [("GET", "/reconfigure/knob/l2/status"), ("POST", "/reconfigure/knob/l2/set")]:
        resp = live.request(method, path, {})
        assert (resp.status_code, resp.json()) == (503, {"error": "engine not initialized"}), path


# -- POST /cache/clear ----------------------------------------------------------------------------


def test_clear_empties_l1_and_bad_bodies_change_nothing(make_live: Any) -> None:
    live = make_live()
    stored(live)
    assert live.l1_count() == 3
    refused = [({"tier": "l2"}, 400, {"detail": "tier 'l2' not supported; only 'l1'"}),
               ({"tier": "all"}, 400, {"detail": "tier 'all' not supported; only 'l1'"}),
               ({"tier": "L1"}, 422, None), ({"force": "maybe"}, 422, None), ([1], 422, None)]
    for body, status, answer in refused:
        resp = live.request("POST", "/cache/clear", body)
        assert resp.status_code == status, (body, resp.text)
        if answer is not None:
            assert resp.json() == answer
        assert live.l1_count() == 3
    resp = live.request("POST", "/cache/clear", raw=b"{not json")
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["type"] == "json_invalid"
    assert live.l1_count() == 3
    resp = live.request("POST", "/cache/clear", raw=b"")  # lmcache kvcache clear sends {"tier": "l1"}
    assert (resp.status_code, resp.json()) == (200, {"status": "ok", "cleared": {"tier": "l1"}})
    assert live.l1_count() == 0


def test_clear_without_force_keeps_objects_a_reader_holds(make_live: Any) -> None:
    live = make_live()
    keys = stored(live)
    storage = live.server.storage
    assert storage is not None
    assert storage.l1.reserve_read(keys[:1]) == [L1Result.SUCCESS]
    assert live.request("POST", "/cache/clear", {"tier": "l1"}).status_code == 200
    assert live.l1_count() == 1
    assert live.request("POST", "/cache/clear", {"tier": "l1", "force": "yes"}).status_code == 200
    assert live.l1_count() == 0


# -- GET /cache/objects ---------------------------------------------------------------------------


def test_objects_pages_through_the_fs_adapter(make_live: Any) -> None:
    live = make_live()
    keys = stored(live)
    seen: list[dict[str, Any]] = []
    token: str | None = ""
    for _ in range(10):
        resp = live.request("GET", "/cache/objects", params={"page_size": 2, "page_token": token})
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert page["adapter"] == "fs" and page["shared"] is False
        assert len(page["entries"]) <= 2
        seen += page["entries"]
        token = page["next_page_token"]
        if token is None:
            break
    assert sorted(e["key"]["chunk_hash_hex"] for e in seen) == sorted(k.chunk_hash.hex() for k in keys)
    assert all(e["key"]["model_name"] == MODEL and e["size_bytes"] > 0 for e in seen)
    filtered = live.request("GET", "/cache/objects", params={"tier": "l2", "adapter": "fs", "model_name": "other"})
    assert filtered.json()["entries"] == []


def test_objects_refusals(make_live: Any) -> None:
    live = make_live()
    cases = [
        ({"tier": "l1"}, 400, {"detail": "tier 'l1' not supported; only 'l2'"}),
        ({"adapter": "nope"}, 404, {"detail": "no L2 adapter with type_name='nope'"}),
        ({"adapter": "memory"}, 503, None),
        ({"model_name": "a@b"}, 400, None),
        ({"page_token": "not-a-token"}, 400, None),
    ]
    for params, status, body in cases:
        resp = live.request("GET", "/cache/objects", params=params)
        assert resp.status_code == status, (params, resp.text)
        if body is not None:
            assert resp.json() == body
        assert isinstance(resp.json()["detail"], str)
    assert "does not support listing" in live.request("GET", "/cache/objects?adapter=memory").json()["detail"]
    bad = live.request("GET", "/cache/objects", params={"tier": "x", "page_size": "0"})
    assert bad.status_code == 422
    assert bad.json() == {"detail": [
        {"type": "enum", "loc": ["query", "tier"], "msg": "Input should be 'l1', 'l2' or 'all'", "input": "x",
         "ctx": {"expected": "'l1', 'l2' or 'all'"}},
        {"type": "greater_than_equal", "loc": ["query", "page_size"],
         "msg": "Input should be greater than or equal to 1", "input": "0", "ctx": {"ge": 1}}]}
    for size in ("5001", "abc", "1.5", ""):
        assert live.request("GET", "/cache/objects", params={"page_size": size}).status_code == 422, size
    assert live.request("GET", "/cache/objects", params={"page_size": " 5000 "}).status_code == 200
    no_l2 = make_live(adapters=[])
    resp = no_l2.request("GET", "/cache/objects")
    assert (resp.status_code, resp.json()) == (503, {"detail": "no L2 adapters configured"})


# -- DELETE /cache/objects ------------------------------------------------------------------------


def test_delete_per_tier(make_live: Any) -> None:
    live = make_live()
    keys = stored(live)
    body = [encoded(k) for k in keys[:2]]
    resp = live.request("DELETE", "/cache/objects", {"keys": body, "tier": "l1"})
    assert (resp.status_code, resp.json()) == (200, {"deleted": 2, "skipped": 0, "ok": True})
    assert live.l1_count() == 1 and live.fs_files() == 3
    resp = live.request("DELETE", "/cache/objects", {"keys": body})  # tier l2 (the default), the primary
    assert (resp.status_code, resp.json()) == (200, {"deleted": 2, "skipped": 0, "ok": True})
    assert live.fs_files() == 1
    storage = live.server.storage
    assert storage is not None
    assert storage.l1.reserve_read(keys[2:]) == [L1Result.SUCCESS]
    resp = live.request("DELETE", "/cache/objects", {"keys": [encoded(keys[2])], "tier": "all", "adapter": "fs"})
    assert resp.json() == {"deleted": 1, "skipped": 1, "ok": True}  # the L2 copy goes; the held L1 copy stays
    assert (live.l1_count(), live.fs_files()) == (1, 0)
    resp = live.request("DELETE", "/cache/objects", {"keys": [encoded(keys[2])], "tier": "l1", "force": True})
    assert resp.json() == {"deleted": 1, "skipped": 0, "ok": True}
    assert live.l1_count() == 0


def test_delete_refusals_change_nothing(make_live: Any) -> None:
    live = make_live()
    keys = stored(live)
    good = encoded(keys[0])
    cases = [
        ({"keys": [good] * 10_001, "tier": "all"}, 400,
         {"detail": "too many keys in a single request (limit=10000, got=10001)"}),
        ({"keys": [good, {**good, "chunk_hash_hex": "zz"}], "tier": "all"}, 400,
         {"detail": "keys[1]: non-hexadecimal number found in fromhex() arg at position 0"}),
        ({"keys": [{**good, "model_name": "a@b"}], "tier": "l1"}, 400, None),
        ({"keys": [{**good, "kv_rank": 2**32}], "tier": "l1"}, 400, None),
        ({"keys": [good], "tier": "all", "adapter": "nope"}, 404, {"detail": "no L2 adapter with type_name='nope'"}),
        ({"keys": [good], "tier": "nope"}, 422, None),
        ({"keys": good}, 422, None),
        ({}, 422, {"detail": [{"type": "missing", "loc": ["body", "keys"], "msg": "Field required", "input": {}}]}),
    ]
    for body, status, answer in cases:
        resp = live.request("DELETE", "/cache/objects", body)
        assert resp.status_code == status, (str(body)[:80], resp.text[:200])
        if answer is not None:
            assert resp.json() == answer
        assert (live.l1_count(), live.fs_files()) == (3, 3)
    resp = live.request("DELETE", "/cache/objects", raw=b"")
    assert (resp.status_code, resp.json()) == (422, {"detail": [
        {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]})
    resp = live.request("DELETE", "/cache/objects", {"keys": [{"chunk_hash_hex": 1, "kv_rank": "x"}], "force": 2})
    assert resp.status_code == 422
    assert [(i["type"], i["loc"]) for i in resp.json()["detail"]] == [
        ("string_type", ["body", "keys", 0, "chunk_hash_hex"]), ("missing", ["body", "keys", 0, "model_name"]),
        ("int_parsing", ["body", "keys", 0, "kv_rank"]), ("bool_parsing", ["body", "force"])]
    no_l2 = make_live(adapters=[])
    resp = no_l2.request("DELETE", "/cache/objects", {"keys": []})
    assert (resp.status_code, resp.json()) == (503, {"detail": "no L2 adapters configured"})
    resp = no_l2.request("DELETE", "/cache/objects", {"keys": [], "tier": "l1"})
    assert (resp.status_code, resp.json()) == (200, {"deleted": 0, "skipped": 0, "ok": True})


# -- POST /cache/prefetches, GET /cache/prefetches/{request_id} ------------------------------------


def test_prefetch_warms_l1_from_l2_and_is_polled_once(make_live: Any) -> None:
    live = make_live()
    stored(live)
    assert live.request("POST", "/cache/clear", {"force": True}).status_code == 200
    resp = live.request("POST", "/cache/prefetches", {"model_name": MODEL, "world_size": 1, "token_ids": TOKENS})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["chunks"] == 3 and body["status"] == "submitted"
    request_id = body["request_id"]

    def completed() -> dict[str, Any] | None:
        state = live.request("GET", f"/cache/prefetches/{request_id}")
        assert state.status_code == 200, state.text
        doc = state.json()
        assert doc["request_id"] == request_id
        return doc if doc["status"] == "completed" else None

    done = wait_for(completed, "the warm prefetch")
    assert done == {"request_id": request_id, "status": "completed", "found_keys": 3, "total_keys": 3}
    assert live.l1_count() == 3
    resp = live.request("GET", f"/cache/prefetches/{request_id}")
    assert resp.status_code == 404
    assert resp.json() == {"detail": f"unknown prefetch request_id={request_id!r} "
                                     "(already completed or never submitted)"}


def test_prefetch_refusals(make_live: Any) -> None:
    live = make_live()
    live.worker()
    base = {"model_name": MODEL, "world_size": 1, "token_ids": TOKENS}
    cases = [
        ({**base, "source_tier": "l1"}, 400, {"detail": "unsupported prefetch direction 'l1'->'l1'; only 'l2'->'l1'"}),
        ({**base, "model_name": "other"}, 503, {"detail": "no layout registered for model_name='other' world_size=1; "
                                                          "the model has not allocated KV cache on this node yet"}),
        ({**base, "world_size": 2}, 503, None),
        ({**base, "token_ids": [0] * 1_000_001}, 400,
         {"detail": "too many token_ids in a single request (limit=1000000, got=1000001)"}),
        ({**base, "token_ids": [-1] * CHUNK}, 400, None),
        ({**base, "cache_salt": "a/b"}, 400, None),
        ({**base, "token_ids": TOKENS[:10]}, 202, {"chunks": 0, "status": "noop"}),
        ({"model_name": MODEL}, 422, None),
        ({**base, "token_ids": [1.5]}, 422, None),
    ]
    for body, status, answer in cases:
        resp = live.request("POST", "/cache/prefetches", body)
        assert resp.status_code == status, (str(body)[:80], resp.text[:200])
        if answer is not None:
            assert resp.json() == answer
    jobs = live.server.status()["storage_manager"]["warm_prefetch_jobs"]
    assert jobs["pending_jobs"] + jobs["completed_unpolled_jobs"] == 0  # no refusal (nor the noop) made a job
    no_l2 = make_live(adapters=[])
    no_l2.worker()
    resp = no_l2.request("POST", "/cache/prefetches", base)  # nothing to load from: done at once, as in 0.5.6
    assert resp.status_code == 202 and resp.json()["chunks"] == 3
    request_id = resp.json()["request_id"]
    assert no_l2.request("GET", f"/cache/prefetches/{request_id}").json() == {
        "request_id": request_id, "status": "completed", "found_keys": 0, "total_keys": 3}
    assert no_l2.request("GET", f"/cache/prefetches/{request_id}").status_code == 404


# -- /reconfigure/{backend}/l2 ---------------------------------------------------------------------


def test_reconfigure_status_and_operation_on_a_reconfigurable_adapter(make_live: Any) -> None:
    live = make_live()
    resp = live.request("GET", "/reconfigure/ Knob /l2/status")
    assert resp.status_code == 200
    assert resp.json() == {"enabled": True, "backend": "knob", "num_adapters": 1, "adapters": [
        {"backend": "knob", "supported_operations": ["set", "explode"], "status": {"value": 0},
         "adapter_index": 0, "l2_adapter_index": 2}]}
    resp = live.request("POST", "/reconfigure/knob/l2/SET", {"value": 7})
    assert (resp.status_code, resp.json()) == (200, {"value": 7, "adapter_index": 0, "l2_adapter_index": 2})
    assert live.request("GET", "/reconfigure/knob/l2/status").json()["adapters"][0]["status"] == {"value": 7}
    assert live.request("GET", "/reconfigure/dax/l2/status").json() == {
        "enabled": False, "backend": "dax", "num_adapters": 0, "adapters": []}


def test_reconfigure_refusals(make_live: Any) -> None:
    live = make_live()
    cases: list[tuple[str, Any, int, Any]] = [
        ("knob/l2/set", {"value": 1, "adapter_index": 1}, 404, {"error": "knob adapter not found"}),
        ("fs/l2/set", {}, 404, {"error": "fs adapter not found"}),
        ("knob/l2/frob", {}, 400, {"error": "unsupported knob reconfigure operation: frob"}),
        ("knob/l2/set", {"value": "x"}, 400, {"error": "value must be an integer"}),
        ("knob/l2/set", {"value": 1, "busy": True}, 409, {"error": "busy"}),
        ("knob/l2/explode", {}, 507, {"error": "no room", "needed": 1}),
        ("knob/l2/set", {"adapter_index": "x"}, 422, {"detail": [
            {"type": "int_parsing", "loc": ["adapter_index"],
             "msg": "Input should be a valid integer, unable to parse string as an integer", "input": "x"}]}),
        ("knob/l2/set", [1], 422, {"detail": [
            {"type": "dict_type", "loc": ["body"], "msg": "Input should be a valid dictionary", "input": [1]}]}),
        ("%20/l2/set", {}, 400, {"error": "backend must be non-empty"}),
        ("knob/l2/%20", {}, 400, {"error": "operation must be non-empty"}),
        ("dax/l2/frob", {}, 400, {"error": "unsupported dax reconfigure operation: frob"}),
        ("dax/l2/add", {"device_path": "/dev/dax0.0", "size": "lots"}, 400,
         {"error": "size must be a positive integer byte count or a string like '100GiB'"}),
        ("dax/l2/add", {"device_path": "/dev/dax0.0", "size": "1GiB"}, 404, {"error": "dax adapter not found"}),
        ("dax/l2/remove", {"device_path": "/dev/dax0.0", "mode": "later", "extra": 1}, 422, {"detail": [
            {"type": "literal_error", "loc": ["mode"], "msg": "Input should be 'migrate', 'evict' or 'drain'",
             "input": "later", "ctx": {"expected": "'migrate', 'evict' or 'drain'"}},
            {"type": "extra_forbidden", "loc": ["extra"], "msg": "Extra inputs are not permitted", "input": 1}]}),
        ("dax/l2/resize", {"size": 1.5}, 422, {"detail": [
            {"type": "missing", "loc": ["device_path"], "msg": "Field required", "input": {"size": 1.5}},
            {"type": "int_type", "loc": ["size", "int"], "msg": "Input should be a valid integer", "input": 1.5},
            {"type": "string_type", "loc": ["size", "str"], "msg": "Input should be a valid string", "input": 1.5}]}),
    ]
    for path, body, status, answer in cases:
        resp = live.request("POST", f"/reconfigure/{path}", body)
        assert (resp.status_code, resp.json()) == (status, answer), path
    resp = live.request("POST", "/reconfigure/knob/l2/set", raw=b"")
    assert resp.json() == {"detail": [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]}
    assert live.request("POST", "/reconfigure/knob/l2/status", {}).json() == {
        "error": "unsupported knob reconfigure operation: status"}
    assert live.request("GET", "/reconfigure/%20/l2/status").json() == {"error": "backend must be non-empty"}
    assert live.request("GET", "/reconfigure/knob/l2/status").json()["adapters"][0]["status"] == {"value": 0}


# -- the admin guard ------------------------------------------------------------------------------


def test_state_changing_routes_need_the_admin_token(make_live: Any) -> None:
    live = make_live("--http-admin-token", "tok")
    stored(live)
    guarded = [("POST", "/cache/clear", {}), ("DELETE", "/cache/objects", {"keys": [], "tier": "l1"}),
               ("POST", "/cache/prefetches", {"model_name": MODEL, "world_size": 1, "token_ids": []}),
               ("POST", "/reconfigure/knob/l2/set", {"value": 3})]
    for method, path, body in guarded:
        resp = live.request(method, path, body)
        assert (resp.status_code, resp.json()) == (401, {"error": "admin token required"}), path
    assert live.l1_count() == 3
    for path in ["/config", "/config/adapters", "/cache/objects", "/reconfigure/knob/l2/status"]:
        assert live.request("GET", path).status_code == 200, path
    auth = {"Authorization": "Bearer tok"}
    for method, path, body in guarded:
        assert live.request(method, path, body, headers=auth).status_code < 300, path
    assert live.l1_count() == 0


def test_openapi_tags_every_route_with_its_generation(make_live: Any) -> None:
    live = make_live()
    doc = json.loads(live.request("GET", "/schema/openapi.json").text)
    ops = {(m.upper(), p): op for p, item in doc["paths"].items() for m, op in item.items()
           if m in ("get", "post", "delete", "put")}
    ours = [("GET", "/config"), ("GET", "/config/adapters"), ("POST", "/cache/clear"), ("GET", "/cache/objects"),
            ("DELETE", "/cache/objects"), ("POST", "/cache/prefetches"), ("GET", "/cache/prefetches/{request_id}"),
            ("GET", "/reconfigure/{backend}/l2/status"), ("POST", "/reconfigure/{backend}/l2/{operation}")]
    for key in ours:
        assert "generation:0.5.6" in ops[key]["tags"], key
    assert 422 in {int(s) for s in ops[("DELETE", "/cache/objects")]["responses"]}


def test_config_is_503_without_configs_and_renders_non_finite_numbers(make_live: Any, lmcache_serve_app: Any) -> None:
    from litestar import Litestar

    import lmcache_plugin_api056.plugin as api056

    url = lmcache_serve_app(Litestar(route_handlers=[api056.config_router]))  # no server on the app's state
    resp = httpx.get(f"{url}/config", timeout=30)
    assert (resp.status_code, resp.json()) == (503, {"error": "configs not initialized"})
    live = make_live(start=False)
    live.server.storage_config.eviction_ratio = float("nan")  # what a plugin's config could hold
    doc = live.request("GET", "/config").json()
    assert doc["storage_manager"]["eviction_ratio"] == "NaN"
    live.server.configs.clear()
    resp = live.request("GET", "/config")
    assert (resp.status_code, resp.json()) == (503, {"error": "configs not initialized"})
