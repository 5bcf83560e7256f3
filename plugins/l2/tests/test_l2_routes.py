"""``GET /l2/adapters``, ``DELETE /l2`` and ``GET /l2/keys`` through real HTTP, against the FS adapter
writing real files under ``tmp_path`` (and the in-memory test adapter where a second type is needed).

Chunks reach L2 the way they do in production: a worker STOREs over ZMQ, the write-behind puts them in
the adapter. Keys are built with the data path's own hasher, so a deleted key is the key a LOOKUP asks for.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from l2_live import JSON, MODEL, L2Live, chunk_keys, encoded, wait_for

from lmcache_core.keys import ObjectKey, fs_file_name, kv_rank_for_worker

TOKENS = list(range(512))  # two chunks
RANK = kv_rank_for_worker(1, 0)


def detail(resp: Any, status: int) -> str:
    """Assert the ``{"detail": "<message>"}`` envelope with ``status``; the message."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == JSON
    body = resp.json()
    assert list(body) == ["detail"] and isinstance(body["detail"], str) and body["detail"], body
    return body["detail"]


def stored_in_l2(live: L2Live, tokens: list[int] = TOKENS, **store: Any) -> list[ObjectKey]:
    """Register a worker, STORE ``tokens`` over ZMQ, wait for their files; their keys."""
    if 1 not in live.workers:
        live.worker()
    before = len(live.data_files())
    live.store(tokens, **store)
    keys = chunk_keys(tokens, salt=store.get("salt", ""))
    live.wait_files(before + len(keys))
    assert {fs_file_name(k) for k in keys} <= live.data_files()
    return keys


def direct_keys(n: int, model: str = MODEL, salt: str = "", start: int = 0) -> list[ObjectKey]:
    return [ObjectKey(i.to_bytes(32, "big"), model, RANK, 0, salt) for i in range(start, start + n)]


def put(live: L2Live, keys: list[ObjectKey], size: int = 64, index: int = 0) -> None:
    """Store objects straight through adapter ``index`` (for listings of many keys)."""
    import torch

    adapter = live.server.storage.l2_adapters[index]
    objs = [torch.full((size,), i % 251, dtype=torch.uint8) for i in range(len(keys))]
    assert adapter.store(keys, objs).result(30) == [True] * len(keys)


# -- GET /l2/adapters ------------------------------------------------------------------------


def test_adapters_in_configuration_order_primary_first(make_live: Any, tmp_path: Any) -> None:
    live = make_live(adapters=[{"type": "fs", "base_path": str(tmp_path / "a")}, {"type": "memory"},
                               {"type": "fs", "base_path": str(tmp_path / "b")}])
    resp = live.get("/l2/adapters")
    assert resp.status_code == 200 and resp.headers["content-type"] == JSON
    assert resp.json() == {"adapters": [
        {"index": 0, "type_name": "fs", "primary": True, "health": {"is_healthy": True}},
        {"index": 1, "type_name": "memory", "primary": False, "health": {"is_healthy": True}},
        {"index": 2, "type_name": "fs", "primary": False, "health": {"is_healthy": True}},
    ]}


def test_adapters_empty_list_without_l2(make_live: Any) -> None:
    resp = make_live(adapters=[]).get("/l2/adapters")
    assert resp.status_code == 200 and resp.json() == {"adapters": []}


# -- 503 before the engine is ready ----------------------------------------------------------------


def _assert_all_unavailable(live: L2Live) -> None:
    key = encoded(direct_keys(1)[0])
    answers = [
        live.get("/l2/adapters"),
        live.get("/l2/keys"),
        live.get("/l2/keys", params={"page_size": "0"}),  # a 422 request is a 503 first
        live.delete({"keys": [key]}),
        live.delete(None, raw=b"not json"),
        live.prefetch({"model_name": MODEL, "world_size": 1, "token_ids": TOKENS}),
        live.poll("0" * 32),
    ]
    for resp in answers:
        assert detail(resp, 503) == "engine not initialized", resp.request.url


def test_every_route_is_503_before_start(make_live: Any) -> None:
    live = make_live(start=False)
    _assert_all_unavailable(live)
    assert not (live.base and live.base.exists() and live.data_files())


def test_every_route_is_503_after_stop(make_live: Any) -> None:
    live = make_live()
    assert live.get("/l2/adapters").status_code == 200
    live.server.stop()
    _assert_all_unavailable(live)


def test_routes_needing_an_adapter_are_503_without_one(make_live: Any) -> None:
    live = make_live(adapters=[])
    key = encoded(direct_keys(1)[0])
    assert detail(live.delete({"keys": [key]}), 503) == "no L2 adapters configured"
    assert detail(live.delete({"keys": [key]}, adapter="fs"), 503) == "no L2 adapters configured"
    assert detail(live.get("/l2/keys"), 503) == "no L2 adapters configured"
    # Client mistakes are still named first.
    detail(live.delete({"keys": "x"}), 422)
    detail(live.delete({"keys": [{**key, "chunk_hash_hex": "z"}]}), 400)
    detail(live.get("/l2/keys", params={"page_size": "0"}), 422)


# -- DELETE /l2 --------------------------------------------------------------------------------------


def test_delete_removes_the_files_and_the_keys_stop_hitting(make_live: Any) -> None:
    live = make_live()
    keys = stored_in_l2(live)
    live.client.clear(True)
    assert live.l1_count() == 0
    assert live.lookup(TOKENS, request_id="before") == 2  # from L2
    live.client.end_session("before")
    live.client.clear(True)

    resp = live.delete({"keys": [encoded(k) for k in keys]})
    assert resp.status_code == 200 and resp.headers["content-type"] == JSON
    assert resp.json() == {"requested": 2, "adapter": "fs", "ok": True}
    assert live.data_files() == set()
    adapter = live.server.storage.l2_adapters[0]
    assert adapter.usage().total_bytes_used == 0
    assert live.lookup(TOKENS, request_id="after") == 0
    live.client.end_session("after")
    assert live.server.status()["storage_manager"]["l2_adapters"][0]["locked_key_count"] == 0


def test_delete_leaves_l1_untouched(make_live: Any) -> None:
    live = make_live()
    keys = stored_in_l2(live)
    assert live.l1_count() == 2
    assert live.delete({"keys": [encoded(k) for k in keys]}).json()["ok"] is True
    assert live.data_files() == set()
    assert live.l1_count() == 2
    assert live.lookup(TOKENS, request_id="l1") == 2  # still served from L1, as the seed documents
    live.client.end_session("l1")


def test_delete_is_idempotent_and_counts_every_requested_key(make_live: Any) -> None:
    live = make_live()
    keys = stored_in_l2(live)
    body = {"keys": [encoded(keys[0]), encoded(keys[0]), encoded(direct_keys(1, start=99)[0])]}
    assert live.delete(body).json() == {"requested": 3, "adapter": "fs", "ok": True}
    assert live.data_files() == {fs_file_name(keys[1])}
    assert live.delete(body).json() == {"requested": 3, "adapter": "fs", "ok": True}
    assert live.delete({"keys": []}).json() == {"requested": 0, "adapter": "fs", "ok": True}
    assert live.data_files() == {fs_file_name(keys[1])}


def test_locked_keys_survive_a_delete(make_live: Any) -> None:
    live = make_live()
    keys = stored_in_l2(live)
    adapter = live.server.storage.l2_adapters[0]
    # A lookup in flight holds its key locked in L2 until it unlocks.
    assert adapter.lookup_and_lock([keys[0]]).result(10) == [True]
    resp = live.delete({"keys": [encoded(k) for k in keys]})
    assert resp.json() == {"requested": 2, "adapter": "fs", "ok": True}  # skipped silently, as the seed says
    assert live.data_files() == {fs_file_name(keys[0])}
    adapter.unlock([keys[0]])
    assert live.delete({"keys": [encoded(keys[0])]}).json()["ok"] is True
    assert live.data_files() == set()


def test_deletions_reach_the_adapter_listeners_even_for_another_servers_files(make_live: Any) -> None:
    """A second adapter on the same directory (another server sharing the FS tier) writes an object ours
    never accounted; deleting it through the route still tells our listeners, as the seed says."""
    from lmcache_plugin_fs.adapter import FSAdapterConfig, FSL2Adapter

    from lmcache_core.storage.l2.base import L2AdapterContext, L2Listener

    live = make_live()
    ours = stored_in_l2(live)
    assert live.base is not None
    other = FSL2Adapter(FSAdapterConfig(base_path=str(live.base)), L2AdapterContext(0, "fs"))
    try:
        foreign = direct_keys(1, start=5)[0]
        assert other.store([foreign], [bytes(64)]).result(30) == [True]
    finally:
        other.close()
    adapter = live.server.storage.l2_adapters[0]
    heard: list[ObjectKey] = []

    class Recorder(L2Listener):
        def on_l2_keys_deleted(self, adapter: Any, keys: Any) -> None:
            heard.extend(keys)

    adapter.register_listener(Recorder())
    used = adapter.usage().total_bytes_used
    body = {"keys": [encoded(foreign), encoded(ours[0]), encoded(direct_keys(1, start=6)[0])]}
    assert live.delete(body).json() == {"requested": 3, "adapter": "fs", "ok": True}
    assert set(heard) == {foreign, ours[0]} and len(heard) == 2  # the absent third key is not an event
    assert adapter.usage().total_bytes_used == used // 2  # only our own object was ever accounted
    assert live.data_files() == {fs_file_name(ours[1])}


def test_adapter_selector_targets_the_first_adapter_of_that_type(make_live: Any, tmp_path: Any) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    live = make_live(adapters=[{"type": "memory"}, {"type": "fs", "base_path": str(a)},
                               {"type": "fs", "base_path": str(b)}])
    keys = direct_keys(3)
    for index in range(3):
        put(live, keys, index=index)
    memory = live.server.storage.l2_adapters[0]
    names = {fs_file_name(k) for k in keys}
    body = {"keys": [encoded(keys[0])]}

    assert live.delete(body, adapter="fs").json() == {"requested": 1, "adapter": "fs", "ok": True}
    assert {p.name for p in a.iterdir() if p.suffix == ".data"} == names - {fs_file_name(keys[0])}
    assert {p.name for p in b.iterdir() if p.suffix == ".data"} == names  # first match wins
    assert set(memory.objects) == set(keys)

    assert live.delete(body).json() == {"requested": 1, "adapter": "memory", "ok": True}  # the primary
    assert set(memory.objects) == set(keys[1:])
    assert live.delete({"keys": [encoded(keys[1])]}, adapter="memory").json()["adapter"] == "memory"
    assert set(memory.objects) == {keys[2]}
    # An empty selector is the same as none: the primary.
    assert live.delete({"keys": [encoded(keys[2])]}, adapter="").json()["adapter"] == "memory"
    assert memory.objects == {}


def test_delete_404_for_an_unknown_adapter_changes_nothing(make_live: Any) -> None:
    live = make_live()
    keys = stored_in_l2(live)
    before = live.data_files()
    message = detail(live.delete({"keys": [encoded(k) for k in keys]}, adapter="s3"), 404)
    assert message == "no L2 adapter with type_name='s3'"
    detail(live.delete({"keys": [encoded(k) for k in keys]}, adapter="FSL2Adapter"), 404)
    assert live.data_files() == before


def test_delete_400_over_ten_thousand_keys(make_live: Any) -> None:
    live = make_live()
    keys = stored_in_l2(live)
    filler = [encoded(k) for k in direct_keys(10_000 - 1, start=1000)]
    body = {"keys": [encoded(keys[0]), *filler, encoded(keys[1])]}  # 10,001
    assert detail(live.delete(body), 400) == "too many keys in a single request (limit=10000, got=10001)"
    assert live.data_files() == {fs_file_name(k) for k in keys}
    body["keys"].pop()  # exactly 10,000: accepted
    assert live.delete(body).json() == {"requested": 10_000, "adapter": "fs", "ok": True}
    assert live.data_files() == {fs_file_name(keys[1])}


BAD_KEYS = [
    ({"chunk_hash_hex": "zz"}, "chunk_hash_hex is not valid hex"),
    ({"chunk_hash_hex": "abc"}, "chunk_hash_hex is not valid hex"),
    ({"chunk_hash_hex": "00" * 65}, "chunk_hash_hex must encode at most 64 bytes"),
    ({"model_name": "org@model"}, "model_name must not contain '@'"),
    ({"model_name": "m\x00"}, "model_name must not contain NUL"),
    ({"cache_salt": "a/b"}, "cache_salt must not contain"),
    ({"cache_salt": "a\\b"}, "cache_salt must not contain"),
    ({"cache_salt": "a@b"}, "cache_salt must not contain"),
    ({"cache_salt": "a\x00"}, "cache_salt must not contain"),
    ({"cache_salt": "s" * 129}, "cache_salt must be at most 128 characters"),
    ({"kv_rank": -1}, "kv_rank must be in [0, 2**32)"),
    ({"kv_rank": 2**32}, "kv_rank must be in [0, 2**32)"),
    ({"object_group_id": -1}, "object_group_id must be in [0, 2**32)"),
    ({"object_group_id": 2**32}, "object_group_id must be in [0, 2**32)"),
]


@pytest.mark.parametrize(("change", "reason"), BAD_KEYS, ids=[r for _, r in BAD_KEYS])
def test_delete_400_names_the_first_key_that_breaks_an_invariant(make_live: Any, change: dict[str, Any],
                                                                 reason: str) -> None:
    live = make_live()
    keys = stored_in_l2(live)
    good = encoded(keys[0])
    body = {"keys": [good, {**good, **change}, {**good, "chunk_hash_hex": "q"}]}
    message = detail(live.delete(body), 400)
    assert message.startswith(f"keys[1]: {reason}"), message
    assert live.data_files() == {fs_file_name(k) for k in keys}  # nothing deleted, not even keys[0]


BAD_BODIES = [
    b"",
    b"not json",
    b'{"keys": [',
    b"[]",
    b"null",
    b"{}",
    b'{"keys": "aa"}',
    b'{"keys": {"chunk_hash_hex": "aa"}}',
    b'{"keys": [1]}',
    b'{"keys": [{"model_name": "m", "kv_rank": 0}]}',
    b'{"keys": [{"chunk_hash_hex": "aa", "kv_rank": 0}]}',
    b'{"keys": [{"chunk_hash_hex": "aa", "model_name": "m"}]}',
    b'{"keys": [{"chunk_hash_hex": 170, "model_name": "m", "kv_rank": 0}]}',
    b'{"keys": [{"chunk_hash_hex": "aa", "model_name": 1, "kv_rank": 0}]}',
    b'{"keys": [{"chunk_hash_hex": "aa", "model_name": "m", "kv_rank": "x"}]}',
    b'{"keys": [{"chunk_hash_hex": "aa", "model_name": "m", "kv_rank": true}]}',
    b'{"keys": [{"chunk_hash_hex": "aa", "model_name": "m", "kv_rank": 1.5}]}',
    b'{"keys": [{"chunk_hash_hex": "aa", "model_name": "m", "kv_rank": 0, "cache_salt": null}]}',
    b'{"keys": [{"chunk_hash_hex": "aa", "model_name": "m", "kv_rank": 0, "object_group_id": "g"}]}',
]


@pytest.mark.parametrize("raw", BAD_BODIES)
def test_delete_422_for_a_body_of_the_wrong_shape(make_live: Any, raw: bytes) -> None:
    live = make_live()
    keys = stored_in_l2(live)
    assert detail(live.delete(None, raw=raw), 422).startswith("invalid request body")
    assert live.data_files() == {fs_file_name(k) for k in keys}


def test_delete_fields_are_strictly_typed_and_optional_fields_default(make_live: Any) -> None:
    """The OpenAPI document says integer: ``"kv_rank": "16777472"`` is a 422 that deletes nothing (issue 18;
    LMCache's FastAPI was lax here). Group and salt default to 0 and "", unknown fields are ignored."""
    live = make_live()
    keys = stored_in_l2(live)
    lax = {"chunk_hash_hex": keys[0].chunk_hash.hex().upper(), "model_name": MODEL, "kv_rank": str(RANK)}
    short = {"chunk_hash_hex": keys[1].chunk_hash.hex(), "model_name": MODEL, "kv_rank": RANK, "extra": [1]}
    before = live.data_files()
    assert live.delete({"keys": [lax, short]}).status_code == 422
    assert live.data_files() == before
    lax["kv_rank"] = RANK
    assert live.delete({"keys": [lax, short], "unknown": True}).json() == {"requested": 2, "adapter": "fs", "ok": True}
    assert live.data_files() == set()


def test_delete_reports_an_adapter_failure_as_ok_false(make_live: Any) -> None:
    """A key whose file cannot be unlinked (here: a directory sits at its name) fails in the adapter;
    the answer is still 200, with ``ok: false`` and the reason, and the other keys are deleted."""
    live = make_live()
    keys = stored_in_l2(live)
    blocker = direct_keys(1, start=7)[0]
    assert live.base is not None
    (live.base / fs_file_name(blocker)).mkdir()
    resp = live.delete({"keys": [encoded(keys[0]), encoded(blocker), encoded(keys[1])]})
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ["requested", "adapter", "ok", "error"]
    assert body["requested"] == 3 and body["adapter"] == "fs" and body["ok"] is False
    assert body["error"].startswith("1 of 3 keys could not be deleted") and "IsADirectoryError" in body["error"]
    assert live.data_files() == {fs_file_name(blocker)}  # the two objects went; the directory stays
    assert (live.base / fs_file_name(blocker)).is_dir()


def test_delete_of_a_closed_adapter_is_ok_false(make_live: Any) -> None:
    live = make_live()
    keys = stored_in_l2(live)
    live.server.storage.l2_adapters[0].close()
    body = live.delete({"keys": [encoded(keys[0])]}).json()
    assert body["ok"] is False and body["requested"] == 1 and "RuntimeError" in body["error"]


# -- GET /l2/keys ------------------------------------------------------------------------------------


def test_keys_pages_cover_every_key_exactly_once(make_live: Any) -> None:
    live = make_live()
    stored = stored_in_l2(live)  # through the data path
    a = direct_keys(17, model="org/model-a")
    b = direct_keys(6, model="model-b", salt="tenant")
    put(live, a, size=128)
    put(live, b, size=32)

    resp = live.get("/l2/keys", params={"page_size": "5"})
    assert resp.status_code == 200 and resp.headers["content-type"] == JSON
    page = resp.json()
    assert list(page) == ["adapter", "entries", "next_page_token"]
    assert page["adapter"] == "fs" and len(page["entries"]) == 5 and isinstance(page["next_page_token"], str)
    assert list(page["entries"][0]) == ["key", "size_bytes"]
    assert list(page["entries"][0]["key"]) == ["chunk_hash_hex", "model_name", "kv_rank", "object_group_id",
                                               "cache_salt"]

    for size in (1, 5, 7, 25, 500, 5000):
        entries = live.list_all(page_size=size)
        got = [json.dumps(e["key"], sort_keys=True) for e in entries]
        assert len(got) == len(set(got)) == 25, size
        want = {json.dumps(encoded(k), sort_keys=True) for k in [*stored, *a, *b]}
        assert set(got) == want
    sizes = {e["key"]["model_name"]: e["size_bytes"] for e in live.list_all()}
    assert sizes["org/model-a"] == 128 and sizes["model-b"] == 32
    assert live.base is not None
    assert sizes[MODEL] == (live.base / fs_file_name(stored[0])).stat().st_size  # a whole chunk object


def test_keys_model_name_filter(make_live: Any) -> None:
    live = make_live()
    a = direct_keys(4, model="org/model-a")
    b = direct_keys(3, model="org-SEP-b")  # unencodable by the FS naming: never stored
    c = direct_keys(2, model="org")
    put(live, a)
    put(live, c)
    assert live.server.storage.l2_adapters[0].store(b, [bytes(8)] * 3).result(30) == [False] * 3
    listed = live.list_all(page_size=2, model_name="org/model-a")
    assert sorted(e["key"]["chunk_hash_hex"] for e in listed) == sorted(k.chunk_hash.hex() for k in a)
    assert {e["key"]["model_name"] for e in live.list_all(model_name="org")} == {"org"}
    assert live.list_all(model_name="nothing") == []
    assert len(live.list_all(model_name="")) == 6  # empty means no filter


def test_keys_pages_stay_exact_while_stores_continue(make_live: Any) -> None:
    """Keys present from start to end appear exactly once; keys stored meanwhile at most once."""
    live = make_live()
    initial = direct_keys(40)
    put(live, initial)
    stop = threading.Event()
    added: list[ObjectKey] = []

    def keep_storing() -> None:
        n = 10_000
        while not stop.is_set() and n < 10_400:
            batch = direct_keys(4, start=n)
            put(live, batch)
            added.extend(batch)
            n += 4

    writer = threading.Thread(target=keep_storing, name="l2-test-writer")
    writer.start()
    try:
        wait_for(lambda: len(added) >= 8, "concurrent stores to begin")
        entries = live.list_all(page_size=3)
    finally:
        stop.set()
        writer.join(30)
    got = [json.dumps(e["key"], sort_keys=True) for e in entries]
    assert len(got) == len(set(got))
    everything = {json.dumps(encoded(k), sort_keys=True) for k in [*initial, *added]}
    assert {json.dumps(encoded(k), sort_keys=True) for k in initial} <= set(got) <= everything


@pytest.mark.parametrize("value", ["0", "5001", "-1", "x", "1.5", "1e3", "\u0661", "9" * 40, "+", " "])
def test_keys_422_for_a_page_size_outside_1_to_5000(make_live: Any, value: str) -> None:
    live = make_live()
    put(live, direct_keys(2))
    assert detail(live.get("/l2/keys", params={"page_size": value}), 422) == \
        "page_size must be an integer in [1, 5000]"


def test_keys_page_size_bounds_are_accepted(make_live: Any) -> None:
    live = make_live()
    put(live, direct_keys(3))
    assert len(live.get("/l2/keys", params={"page_size": "1"}).json()["entries"]) == 1
    assert len(live.get("/l2/keys", params={"page_size": "5000"}).json()["entries"]) == 3
    assert len(live.get("/l2/keys").json()["entries"]) == 3  # default 500


@pytest.mark.parametrize("value", ["\x1c2", "2\x1f", " 2 ", "\u30002", "+2"])
def test_keys_page_size_may_have_blanks_around_it(make_live: Any, value: str) -> None:
    # \x1c-\x1f are blanks to str.strip() (and \s) but not to int(): they once answered 500.
    live = make_live()
    put(live, direct_keys(3))
    assert len(live.get("/l2/keys", params={"page_size": value}).json()["entries"]) == 2


@pytest.mark.parametrize("token", ["garbage", "fs1.", "fs1.!!!", "fs1.aGVsbG8", "fs1.Li4vZXRjL3Bhc3N3ZA"])
def test_keys_400_for_a_malformed_page_token(make_live: Any, token: str) -> None:
    live = make_live()
    put(live, direct_keys(2))
    assert detail(live.get("/l2/keys", params={"page_token": token}), 400).startswith("malformed page_token")


def test_keys_400_for_a_model_name_no_key_can_have(make_live: Any) -> None:
    live = make_live()
    put(live, direct_keys(2))
    assert "model_name must not contain '@'" in detail(live.get("/l2/keys", params={"model_name": "a@b"}), 400)
    assert "NUL" in detail(live.get("/l2/keys?model_name=a%00b"), 400)


def test_keys_404_for_an_unknown_adapter(make_live: Any) -> None:
    assert detail(make_live().get("/l2/keys", params={"adapter": "s3"}), 404) == "no L2 adapter with type_name='s3'"


def test_keys_501_for_an_adapter_that_cannot_list(make_live: Any, tmp_path: Any) -> None:
    live = make_live(adapters=[{"type": "memory"}, {"type": "fs", "base_path": str(tmp_path / "l2")}])
    message = detail(live.get("/l2/keys"), 501)
    assert message.startswith("L2 adapter 'memory' does not support listing")
    detail(live.get("/l2/keys", params={"adapter": "memory"}), 501)
    assert live.get("/l2/keys", params={"adapter": "fs"}).status_code == 200


def test_keys_503_when_the_listing_itself_fails(make_live: Any) -> None:
    live = make_live()
    put(live, direct_keys(2))
    assert live.base is not None
    for p in live.base.iterdir():
        if p.is_dir():
            os.rmdir(p)
        else:
            p.unlink()
    live.base.rmdir()  # the tier's directory is gone: an I/O failure, not a bad request
    assert "failed to list" in detail(live.get("/l2/keys"), 503)


# -- path safety ---------------------------------------------------------------------------------------


HOSTILE_MODELS = ["..", "../outside", "../../outside", "/etc/passwd", "a/../../outside", "./x", "..\\outside"]


def test_no_route_reads_or_writes_outside_the_adapter_directory(make_live: Any, tmp_path: Any) -> None:
    """Model names with ``..`` and ``/`` name one plain file inside ``base_path``; NUL is refused.
    Bait files sit where a naive ``join(base_path, name)`` would land (when that is under ``tmp_path``)."""
    live = make_live()
    base = live.base
    assert base is not None
    hash_hex = "aa" * 32
    victims = set()
    for model in HOSTILE_MODELS:
        naive = Path(os.path.normpath(os.path.join(base, f"{model}@0x{RANK:08x}@0@{hash_hex}.data")))
        if naive.parent != base and tmp_path in naive.parents:
            naive.parent.mkdir(parents=True, exist_ok=True)
            naive.write_bytes(b"victim")
            victims.add(naive)
    assert victims

    def outside() -> list[str]:
        return sorted(str(p) for p in tmp_path.rglob("*") if base not in p.parents and p != base)

    before = outside()
    # Through the routes: list, filter, delete keys with hostile names (stored straight in the adapter).
    keys = [ObjectKey(bytes.fromhex(hash_hex), m, RANK, 0, "") for m in HOSTILE_MODELS]
    put(live, keys)
    assert len(live.data_files()) == len(keys)  # each one plain file directly in base_path
    assert sorted(e["key"]["model_name"] for e in live.list_all()) == sorted(HOSTILE_MODELS)
    for model in HOSTILE_MODELS:
        assert [e["key"]["model_name"] for e in live.list_all(model_name=model)] == [model]
    assert live.delete({"keys": [encoded(k) for k in keys]}).json()["ok"] is True
    assert live.data_files() == set()

    # Warm prefetch of a hostile model a worker really registered and stored over ZMQ.
    hostile = "a/../../outside"
    live.worker(iid=5, model=hostile)
    live.store(TOKENS, iid=5, model=hostile)
    live.wait_files(2)
    live.client.clear(True)
    resp = live.prefetch({"model_name": hostile, "world_size": 1, "token_ids": TOKENS})
    assert resp.status_code == 202, resp.text
    assert live.wait_completed(resp.json()["request_id"]) == {"status": "completed", "found_keys": 2,
                                                             "total_keys": 2}
    assert live.delete({"keys": [encoded(k) for k in chunk_keys(TOKENS, model=hostile)]}).json()["ok"] is True
    assert live.data_files() == set()

    # NUL never reaches an adapter.
    nul = {**encoded(keys[0]), "model_name": "a\x00/../x"}
    assert detail(live.delete({"keys": [nul]}), 400).startswith("keys[0]: model_name must not contain NUL")
    detail(live.get("/l2/keys?model_name=..%2F%00"), 400)
    detail(live.prefetch({"model_name": "../\x00", "world_size": 1, "token_ids": TOKENS}), 400)
    assert detail(live.prefetch({"model_name": "../outside", "world_size": 1, "token_ids": TOKENS}),
                  409).startswith("no layout registered")

    assert outside() == before
    assert all(v.read_bytes() == b"victim" for v in victims)


# -- the admin guard -------------------------------------------------------------------------------------


def test_mutating_routes_need_the_admin_token_and_reads_stay_open(make_live: Any) -> None:
    live = make_live("--http-admin-token", "s3cret")
    keys = stored_in_l2(live)
    body = {"keys": [encoded(k) for k in keys]}
    warm = {"model_name": MODEL, "world_size": 1, "token_ids": TOKENS}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        resp = live.delete(body, headers=headers)
        assert resp.status_code == 401 and resp.json() == {"error": "admin token required"}
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert live.prefetch(warm, headers=headers).status_code == 401
    assert live.data_files() == {fs_file_name(k) for k in keys}
    assert live.warm_status()["pending_jobs"] == 0 and live.warm_status()["completed_unpolled_jobs"] == 0
    for path in ("/l2/adapters", "/l2/prefetch/unknown"):
        assert live.get(path).status_code in (200, 404)
    auth = {"Authorization": "Bearer s3cret"}
    # /l2/keys lists every tenant's cache_salt: only the admin may list it when a token is set (issue 13).
    listed = live.get("/l2/keys")
    assert listed.status_code == 401 and listed.json() == {"error": "admin token required"}
    salts = {e["key"]["cache_salt"] for e in live.get("/l2/keys", headers=auth).json()["entries"]}
    assert salts == {k.cache_salt for k in keys}
    assert live.prefetch(warm, headers=auth).status_code == 202
    assert live.delete(body, headers=auth).json() == {"requested": 2, "adapter": "fs", "ok": True}
    assert live.data_files() == set()
