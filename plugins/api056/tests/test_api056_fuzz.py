"""Property: no request to a 0.5.6 route makes a 5xx other than the documented 503s (and the reconfigure
adapter's own 507), and every answer is JSON in the route group's envelope. One real server (FS, memory and
knob adapters, a registered worker with stored data), real HTTP."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import httpx
from api056_live import MODEL, chunk_keys, encoded, wait_for
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmcache_core.strategies import http_requests

SETTINGS = settings(max_examples=80, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TOKENS = list(range(512))
PATHS = ["/config", "/config/adapters", "/cache/clear", "/cache/objects", "/cache/prefetches",
         "/cache/prefetches/x", "/reconfigure/knob/l2/status", "/reconfigure/knob/l2/set",
         "/reconfigure/dax/l2/add", "/reconfigure/dax/l2/remove", "/reconfigure/dax/l2/resize"]

_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10)
_field_values = st.one_of(_json, st.sampled_from(["l1", "l2", "all", MODEL, "yes", "0", "1GiB", "/dev/dax0.0"]))
_bodies = st.one_of(
    st.dictionaries(st.sampled_from(["keys", "tier", "force", "adapter", "model_name", "world_size", "token_ids",
                                     "cache_salt", "source_tier", "target_tier", "adapter_index", "device_path",
                                     "size", "mode", "value", "busy"]), _field_values, max_size=6),
    _json).map(lambda v: json.dumps(v).encode())
_raw = st.one_of(_bodies, st.binary(max_size=64))


def _check(resp: httpx.Response) -> None:
    assert resp.status_code < 500 or resp.status_code in (503, 507), (resp.status_code, resp.text[:300])
    if resp.status_code in (404, 405) and not resp.headers.get("content-type", "").startswith("application/json"):
        return
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    if resp.status_code == 422:
        assert isinstance(body["detail"], list) and body["detail"], body
        assert all({"type", "loc", "msg"} <= set(item) for item in body["detail"]), body
    elif resp.status_code >= 400:
        assert set(body) & {"detail", "error"}, body


def test_no_request_to_a_056_route_is_a_5xx(make_live: Any) -> None:
    live = make_live()
    live.worker()
    live.store(TOKENS)
    wait_for(lambda: live.fs_files() >= 2, "the FS write-behind")
    good = encoded(chunk_keys(TOKENS)[0])
    with httpx.Client(base_url=live.url, timeout=30) as http:

        @SETTINGS
        @given(req=http_requests(PATHS, methods=("GET", "POST", "DELETE", "PUT"), body=_raw))
        @example(req={"method": "DELETE", "path": "/cache/objects", "params": {}, "headers": {},
                      "body": json.dumps({"keys": [good], "tier": "all"}).encode()})
        @example(req={"method": "POST", "path": "/cache/prefetches", "params": {}, "headers": {},
                      "body": json.dumps({"model_name": MODEL, "world_size": 1, "token_ids": TOKENS}).encode()})
        @example(req={"method": "GET", "path": "/cache/objects", "params": {"page_size": "1", "tier": "l2"},
                      "headers": {}, "body": b""})
        def run(req: dict[str, Any]) -> None:
            headers = {**req["headers"], "Content-Type": "application/json"}
            _check(http.request(req["method"], req["path"], params=req["params"], headers=headers,
                                content=req["body"]))

        run()


def test_no_path_segment_or_query_is_a_5xx(make_live: Any) -> None:
    live = make_live()
    with httpx.Client(base_url=live.url, timeout=30) as http:

        @SETTINGS
        @given(segment=st.text(min_size=1, max_size=12), query=st.text(max_size=30), body=_bodies)
        def run(segment: str, query: str, body: bytes) -> None:
            quoted = urllib.parse.quote(segment, safe="")
            q = urllib.parse.quote(query, safe="=&%")
            _check(http.get(f"/cache/prefetches/{quoted}"))
            _check(http.get(f"/cache/objects?{q}"))
            _check(http.get(f"/reconfigure/{quoted}/l2/status"))
            _check(http.post(f"/reconfigure/{quoted}/l2/{quoted}", content=body))

        run()
