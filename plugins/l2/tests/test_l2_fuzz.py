"""Property: no request to an ``/l2`` route makes a 5xx other than the documented 501/503, and every answer
has the documented shape. One real server per test (FS + memory adapters, a registered worker), real HTTP."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from l2_live import HTTP_TIMEOUT, JSON, MODEL, L2Live, chunk_keys, encoded

SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TOKENS = list(range(512))

_json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
              st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=10,
)
_odd_text = st.one_of(st.text(max_size=12), st.sampled_from(
    ["", "..", "../x", "/etc/passwd", "a/b", "a@b", "a\x00b", "\udcff", "a\ud800", "-SEP-", "m-SEP-x/y", "s" * 200]))
_hex = st.one_of(st.binary(max_size=70).map(bytes.hex), st.text(alphabet="0123456789abcdefABCDEF xg", max_size=20))
_rank = st.one_of(st.integers(-5, 2**33), st.sampled_from([0, 0x01000100, 2**32 - 1, 2**32]), _json_value)
_key = st.fixed_dictionaries(
    {"chunk_hash_hex": st.one_of(_hex, _json_value), "model_name": st.one_of(st.just(MODEL), _odd_text, _json_value),
     "kv_rank": _rank},
    optional={"object_group_id": _rank, "cache_salt": st.one_of(_odd_text, _json_value), "extra": _json_value})
_delete_body = st.one_of(st.fixed_dictionaries({"keys": st.lists(_key, max_size=6)}),
                         st.fixed_dictionaries({}, optional={"keys": st.one_of(st.lists(_key, max_size=3),
                                                                               _json_value)}),
                         _json_value)
_selector = st.one_of(st.none(), st.sampled_from(["", "fs", "memory", "s3", "FSL2Adapter"]), st.text(max_size=8))


def _shape(resp: httpx.Response, allowed: set[int]) -> Any:
    assert resp.status_code in allowed, (resp.status_code, resp.text)
    assert resp.headers["content-type"] == JSON, resp.headers
    body = resp.json()
    if resp.status_code >= 400:
        assert list(body) == ["detail"] and isinstance(body["detail"], str), body
    return body


def _live(make_live: Any, tmp_path: Any) -> L2Live:
    live = make_live(adapters=[{"type": "fs", "base_path": str(tmp_path / "l2")}, {"type": "memory"}])
    live.worker()
    live.store(TOKENS)
    live.wait_files(2)
    return live


def test_adapters_never_5xx(make_live: Any, tmp_path: Any) -> None:
    live = _live(make_live, tmp_path)
    with httpx.Client(base_url=live.url, timeout=HTTP_TIMEOUT) as http:

        @SETTINGS
        @given(query=st.text(max_size=30))
        def run(query: str) -> None:
            body = _shape(http.get(f"/l2/adapters?{urllib.parse.quote(query, safe='=&%')}"), {200})
            assert [a["type_name"] for a in body["adapters"]] == ["fs", "memory"]

        run()


def test_delete_never_5xx(make_live: Any, tmp_path: Any) -> None:
    live = _live(make_live, tmp_path)
    seen: set[int] = set()
    good = encoded(chunk_keys(TOKENS)[0])
    with httpx.Client(base_url=live.url, timeout=HTTP_TIMEOUT) as http:

        @SETTINGS
        @given(body=_delete_body, adapter=_selector, raw=st.one_of(st.none(), st.binary(max_size=40)))
        @example(body={"keys": [good]}, adapter=None, raw=None)
        @example(body={"keys": [{**good, "chunk_hash_hex": "z"}]}, adapter=None, raw=None)
        @example(body={"keys": []}, adapter="s3", raw=None)
        @example(body={"keys": 1}, adapter=None, raw=None)
        def run(body: Any, adapter: str | None, raw: bytes | None) -> None:
            content = raw if raw is not None else json.dumps(body).encode()
            params = {"adapter": adapter} if adapter is not None else None
            resp = http.request("DELETE", "/l2", params=params, content=content, headers={"Content-Type": JSON})
            seen.add(resp.status_code)
            out = _shape(resp, {200, 400, 404, 422})
            if resp.status_code == 200:
                assert set(out) <= {"requested", "adapter", "ok", "error"} and out["adapter"] in ("fs", "memory")
                assert out["ok"] is ("error" not in out)

        run()
    assert {200, 400, 404, 422} <= seen


def test_keys_never_5xx(make_live: Any, tmp_path: Any) -> None:
    live = _live(make_live, tmp_path)
    seen: set[int] = set()
    first = live.get("/l2/keys", params={"page_size": "1"}).json()["next_page_token"]
    assert first is not None
    _params = st.fixed_dictionaries({}, optional={
        "adapter": _selector.filter(lambda v: v is not None),
        "model_name": _odd_text.filter(lambda v: "\udcff" not in v and "\ud800" not in v),
        "page_size": st.one_of(st.integers(-3, 6000).map(str), st.text(max_size=6)),
        "page_token": st.one_of(st.just(first), st.text(max_size=20), st.just("fs1." + first[4:-2])),
    })
    with httpx.Client(base_url=live.url, timeout=HTTP_TIMEOUT) as http:

        @SETTINGS
        @given(params=_params, raw=st.one_of(st.none(), st.text(max_size=40)))
        @example(params={"page_token": first}, raw=None)
        @example(params={"page_token": "x"}, raw=None)
        @example(params={"adapter": "nope"}, raw=None)
        @example(params={"page_size": "0"}, raw=None)
        @example(params={"adapter": "memory"}, raw=None)
        @example(params={}, raw="page_size=%ff&model_name=%fe%00")
        def run(params: dict[str, str], raw: str | None) -> None:
            if raw is not None:
                resp = http.get(f"/l2/keys?{urllib.parse.quote(raw, safe='=&%')}")
            else:
                resp = http.get("/l2/keys", params=params)
            seen.add(resp.status_code)
            out = _shape(resp, {200, 400, 404, 422, 501})
            if resp.status_code == 200:
                assert list(out) == ["adapter", "entries", "next_page_token"]
                for entry in out["entries"]:
                    assert list(entry) == ["key", "size_bytes"] and entry["size_bytes"] > 0

        run()
    assert {200, 400, 404, 422, 501} <= seen


_prefetch_body = st.one_of(
    st.fixed_dictionaries(
        {"model_name": st.one_of(st.just(MODEL), _odd_text, _json_value),
         "world_size": st.one_of(st.just(1), st.integers(-2, 300), _json_value),
         "token_ids": st.one_of(st.just(TOKENS), st.lists(st.integers(-2, 2**33), max_size=300), _json_value)},
        optional={"cache_salt": st.one_of(_odd_text, _json_value), "extra": _json_value}),
    _json_value,
)


def test_prefetch_and_poll_never_5xx(make_live: Any, tmp_path: Any) -> None:
    live = _live(make_live, tmp_path)
    seen: set[int] = set()
    ids: list[str] = []
    with httpx.Client(base_url=live.url, timeout=HTTP_TIMEOUT) as http:

        @SETTINGS
        @given(body=_prefetch_body, raw=st.one_of(st.none(), st.binary(max_size=40)))
        @example(body={"model_name": MODEL, "world_size": 1, "token_ids": TOKENS}, raw=None)
        @example(body={"model_name": MODEL, "world_size": 1, "token_ids": [1]}, raw=None)
        @example(body={"model_name": MODEL, "world_size": 1, "token_ids": TOKENS, "cache_salt": "a/b"}, raw=None)
        @example(body={"model_name": "other", "world_size": 1, "token_ids": TOKENS}, raw=None)
        @example(body={"model_name": MODEL}, raw=None)
        def run(body: Any, raw: bytes | None) -> None:
            content = raw if raw is not None else json.dumps(body).encode()
            resp = http.post("/l2/prefetch", content=content, headers={"Content-Type": JSON})
            seen.add(resp.status_code)
            out = _shape(resp, {202, 400, 409, 422})
            if resp.status_code == 202:
                assert out in ({"chunks": 0, "status": "noop"},) or (
                    list(out) == ["request_id", "chunks", "status"] and out["status"] == "submitted")
                if "request_id" in out:
                    ids.append(out["request_id"])

        run()

        @SETTINGS
        @given(request_id=st.one_of(st.sampled_from(ids or ["none"]), st.text(min_size=1, max_size=40)))
        @example(request_id="%2e%2e")
        @example(request_id="..")
        def poll(request_id: str) -> None:
            resp = http.get(f"/l2/prefetch/{urllib.parse.quote(request_id, safe='')}")
            if request_id in (".", ".."):  # the client resolves the dot segment: another path, not this route
                assert resp.status_code in (404, 405), resp.text
                return
            assert resp.status_code in (200, 404), resp.text
            assert resp.headers["content-type"] == JSON
            if resp.status_code == 200:
                assert resp.json()["status"] in ("pending", "completed")

        poll()
    assert {202, 400, 409, 422} <= seen and ids
