"""The cache routes through real HTTP, as curl sees them: ``POST /clear-cache``, ``GET /kvcache/check``
(LMCache's HTTP API) and ``POST /cache/checksums`` (LMCache 0.5.6,
§9.1 and ``tests/data/golden/http_cache_checksums.json``).

Every test runs a real server (ZMQ data path + uvicorn) and plays the vLLM worker with our own client
and a KV cache in real shared memory, so the checksums are of bytes the server really mapped, stored
and retrieved.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import lmcache_plugin_cache.plugin as cache_plugin
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.config import MPConfig, StorageManagerConfig
from lmcache_core.testing import free_port
from lmcache_core.transfer.client_kv import WorkerKVCache
from lmcache_core.transport import wire

DATA = Path(__file__).resolve().parents[3] / "tests" / "data"
GOLDEN = json.loads((DATA / "golden" / "http_cache_checksums.json").read_text())
E2E = json.loads((DATA / "test_vectors.json").read_text())["end_to_end_store"]

JSON = "application/json"
BLOCK = 16
BPC = 256 // BLOCK  # blocks per 256-token chunk
SHAPE = (2, 64, BLOCK, 2, 8)  # NHD: (K/V, blocks, block size, heads, head size), as the golden session
MODEL = "cache-routes-model"
IID = 4242
TOKENS = list(range(512))  # two chunks
MD5 = re.compile(r"[0-9a-f]{32}")
BODY_KEYS = ["status", "chunk_size", "num_chunks", "chunk_checksums", "layerwise", "block_id_ranges"]
HTTP_TIMEOUT = 30.0


@dataclass
class Live:
    """A started server with the cache plugin, its HTTP base URL, and a worker-side client."""

    server: Any
    url: str
    client: LMCacheClient
    stack: contextlib.ExitStack

    def worker(self, iid: int = IID, shape: Sequence[int] = SHAPE, num_layers: int = 2,
               model: str = MODEL) -> WorkerKVCache:
        """A fresh shared-memory KV cache, registered as ``iid`` (closed at teardown)."""
        kv = WorkerKVCache(num_layers, shape)
        self.stack.callback(kv.close)
        self.client.register_kv_cache(iid, kv.descriptors(), model, 1, {"kv_layout": "NHD"})
        return kv

    def check(self, **params: Any) -> httpx.Response:
        """``GET /kvcache/check`` with ``params`` (values sent as given)."""
        return httpx.get(f"{self.url}/kvcache/check", params=params, timeout=HTTP_TIMEOUT)

    def checksums(self, body: bytes | dict[str, Any]) -> httpx.Response:
        """``POST /cache/checksums`` with a JSON body, as the bench sends it."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(f"{self.url}/cache/checksums", content=raw, headers={"Content-Type": JSON},
                          timeout=HTTP_TIMEOUT)

    def l1_objects(self) -> int:
        return int(self.server.status()["storage_manager"]["l1_manager"]["total_object_count"])


def _configs(port: int) -> dict[str, Any]:
    return {"mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0),
            "storage_manager": StorageManagerConfig(l1_size_gb=0.25)}


@pytest.fixture
def live(lmcache_server_factory: Any, lmcache_http: Any) -> Iterator[Live]:
    port = free_port()
    server = lmcache_server_factory([("cache", cache_plugin)], configs=_configs(port))
    url = lmcache_http(server)
    client = LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=20)
    with contextlib.ExitStack() as stack:
        yield Live(server, url, client, stack)
    client.close()


# -- helpers --------------------------------------------------------------------------------


def fill_random(kv: WorkerKVCache, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for layer in kv.layers:
        layer.copy_(torch.randn(layer.shape, generator=g, dtype=torch.float32).to(layer.dtype))


def fill_vector_pattern(kv: WorkerKVCache) -> None:
    """``test_vectors.json`` → ``end_to_end_store.kv_pattern``."""
    for index, layer in enumerate(kv.layers):
        i = torch.arange(layer.numel(), dtype=torch.int64)
        values = (((i * 31 + index * 7) % 2039 - 1019).to(torch.float32) / 64).to(layer.dtype)
        layer.copy_(values.reshape(layer.shape))


def _bytes(t: torch.Tensor) -> bytes:
    return bytes(t.contiguous().view(torch.uint8).flatten().tolist())


def local_md5(layers: Sequence[torch.Tensor], ids: Sequence[int], chunk: int) -> list[str]:
    """The documented digest, computed here from the worker's own tensors: per chunk of ``chunk``
    block ids, MD5 over each layer's ``[2, n, BS, NH, HS]`` bytes in layer order."""
    out = []
    for start in range(0, len(ids), chunk):
        md5 = hashlib.md5()
        for layer in layers:
            md5.update(_bytes(layer[:, list(ids[start:start + chunk])]))
        out.append(md5.hexdigest())
    return out


def error_of(resp: httpx.Response, status: int, key: str = "error") -> str:
    """Assert a JSON error envelope ``{key: <non-empty str>}`` with ``status``; return the message."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == JSON
    body = resp.json()
    assert list(body) == [key] and isinstance(body[key], str) and body[key], body
    return body[key]


def store_blocks(live: Live, first_block: int, request_id: str) -> None:
    key = make_key(TOKENS, request_id, model_name=MODEL, worker_id=0)
    assert live.client.store(key, IID, [list(range(first_block, first_block + 2 * BPC))]) == (b"", True)
    live.client.end_session(request_id)


# -- POST /clear-cache ----------------------------------------------------------------------


def test_clear_cache_answers_ok_and_really_empties_l1(live: Live) -> None:
    kv = live.worker()
    fill_random(kv, 1)
    store_blocks(live, 0, "store")
    assert live.client.lookup(make_key(TOKENS, "before", model_name=MODEL)) == 2
    live.client.end_session("before")
    assert live.l1_objects() == 2

    # The body is ignored (the seed says so): send one anyway.
    resp = httpx.post(f"{live.url}/clear-cache", content=b"ignored", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == JSON
    assert resp.json() == {"status": "ok"}

    assert live.l1_objects() == 0
    assert live.client.lookup(make_key(TOKENS, "after", model_name=MODEL)) == 0
    retrieve_key = make_key(TOKENS, "after", model_name=MODEL, worker_id=0)
    assert live.client.retrieve(retrieve_key, IID, [list(range(32, 64))]) == (b"", False)
    live.client.end_session("after")


def test_clear_cache_bypasses_lookup_read_locks(live: Live) -> None:
    """Documented as destructive: objects a LOOKUP holds read locks on are cleared too."""
    kv = live.worker()
    fill_random(kv, 2)
    store_blocks(live, 0, "store")
    assert live.client.lookup(make_key(TOKENS, "holder", model_name=MODEL)) == 2  # locks held until end_session
    assert httpx.post(f"{live.url}/clear-cache", timeout=HTTP_TIMEOUT).json() == {"status": "ok"}
    assert live.l1_objects() == 0
    live.client.end_session("holder")  # releasing locks on cleared objects is harmless
    assert live.client.noop() == "OK"
    assert live.client.lookup(make_key(TOKENS, "later", model_name=MODEL)) == 0


# -- 503 before the engine is ready -----------------------------------------------------------


def _assert_all_unavailable(url: str) -> None:
    cases = [
        (httpx.post(f"{url}/clear-cache", timeout=HTTP_TIMEOUT), {"status": "error", "reason": "engine not initialized"}),
        (httpx.get(f"{url}/kvcache/check", params={"block_ids": "0,1", "chunk_size": "1"}, timeout=HTTP_TIMEOUT),
         {"error": "engine not initialized"}),
        # Even a request that would be a 400 is a 503 first: the engine is checked before the parameters.
        (httpx.get(f"{url}/kvcache/check", timeout=HTTP_TIMEOUT), {"error": "engine not initialized"}),
        (httpx.post(f"{url}/cache/checksums", json={"block_ids": [0], "chunk_size": 1}, timeout=HTTP_TIMEOUT),
         {"detail": "engine not initialized"}),
    ]
    for resp, body in cases:
        assert resp.status_code == 503, resp.request.url
        assert resp.headers["content-type"] == JSON
        assert resp.json() == body


def test_routes_answer_503_before_start(lmcache_server_factory: Any, lmcache_http: Any) -> None:
    server = lmcache_server_factory([("cache", cache_plugin)], configs=_configs(free_port()), start=False)
    _assert_all_unavailable(lmcache_http(server))


def test_routes_answer_503_after_stop(lmcache_server_factory: Any, lmcache_http: Any) -> None:
    server = lmcache_server_factory([("cache", cache_plugin)], configs=_configs(free_port()))
    url = lmcache_http(server)
    assert httpx.post(f"{url}/clear-cache", timeout=HTTP_TIMEOUT).status_code == 200
    server.stop()
    _assert_all_unavailable(url)


# -- GET /kvcache/check: success --------------------------------------------------------------


def test_check_success_body_fields_and_digests(live: Live) -> None:
    kv = live.worker()
    fill_random(kv, 3)
    resp = live.check(block_ids="0,[2,5],8", chunk_size="2", instance_id=str(IID))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == JSON
    body = resp.json()
    assert list(body) == BODY_KEYS  # key order as served
    assert body["status"] == "success"
    assert body["chunk_size"] == 2
    assert body["num_chunks"] == 3  # ceil(6 / 2)
    assert body["layerwise"] is False
    assert body["block_id_ranges"] == "0,[2,5],8"  # the seed's mixed string, not 0.5.6's list
    assert body["chunk_checksums"] == local_md5(kv.layers, [0, 2, 3, 4, 5, 8], 2)

    # The seed's curl example (instance_id defaults to 0, so register the example's instance there).
    kv0 = live.worker(iid=0)
    fill_random(kv0, 4)
    example = live.check(block_ids="0,1,2,3", chunk_size="2").json()
    assert example["block_id_ranges"] == "[0,3]"
    assert example["chunk_checksums"] == local_md5(kv0.layers, [0, 1, 2, 3], 2)
    assert example["chunk_checksums"] != body["chunk_checksums"][:2]


def test_check_short_last_chunk_and_order_kept(live: Live) -> None:
    kv = live.worker()
    fill_random(kv, 5)
    body = live.check(block_ids="9,1,4,7,2", chunk_size="3", instance_id=str(IID)).json()
    assert body["num_chunks"] == 2
    assert body["block_id_ranges"] == "9,1,4,7,2"
    assert body["chunk_checksums"] == local_md5(kv.layers, [9, 1, 4, 7, 2], 3)


def test_check_layerwise_gives_the_per_layer_dict(live: Live) -> None:
    kv = live.worker()
    fill_random(kv, 6)
    for flag in ("true", "True", "1"):
        resp = live.check(block_ids="[0,4]", chunk_size="2", instance_id=str(IID), layerwise=flag)
        assert resp.status_code == 200
        body = resp.json()
        assert list(body) == BODY_KEYS and body["layerwise"] is True and body["num_chunks"] == 3
        per_layer = body["chunk_checksums"]
        assert list(per_layer) == ["layer_0", "layer_1"]
        for index, layer in enumerate(kv.layers):
            assert per_layer[f"layer_{index}"] == local_md5([layer], [0, 1, 2, 3, 4], 2)
    assert live.check(block_ids="[0,4]", chunk_size="2", instance_id=str(IID), layerwise="false").json()[
        "chunk_checksums"] == local_md5(kv.layers, [0, 1, 2, 3, 4], 2)


def test_check_round_trip_store_from_a_retrieve_into_b(live: Live) -> None:
    """Store from blocks A (0-31), retrieve into blocks B (32-63): the checksums of A and B match
    once the retrieve has happened, and not before; an unrelated range differs."""
    kv = live.worker()
    fill_random(kv, 7)  # B starts out with other random bytes than A

    def sums(ids: str, layerwise: str = "false") -> Any:
        resp = live.check(block_ids=ids, chunk_size=str(BPC), instance_id=str(IID), layerwise=layerwise)
        assert resp.status_code == 200, resp.text
        return resp.json()["chunk_checksums"]

    a, b, unrelated = "[0,31]", "[32,63]", "[1,32]"
    before_a = sums(a)
    assert len(before_a) == 2 and all(MD5.fullmatch(d) for d in before_a)
    assert sums(b) != before_a

    store_blocks(live, 0, "store")
    assert live.client.lookup(make_key(TOKENS, "load", model_name=MODEL)) == 2
    key = make_key(TOKENS, "load", model_name=MODEL, worker_id=0)
    assert live.client.retrieve(key, IID, [list(range(32, 64))]) == (b"", True)
    live.client.end_session("load")

    assert sums(a) == before_a  # the store only read A
    assert sums(b) == before_a
    assert sums(b, "true") == sums(a, "true")
    assert sums(unrelated) != before_a
    for layer in kv.layers:
        assert torch.equal(layer[:, 32:64], layer[:, 0:32])


# -- GET /kvcache/check: errors -----------------------------------------------------------------


@pytest.mark.parametrize(("params", "why"), [
    ({"chunk_size": "2"}, "block_ids missing"),
    ({"block_ids": "", "chunk_size": "2"}, "block_ids empty"),
    ({"block_ids": " , ", "chunk_size": "2"}, "block_ids only separators"),
    ({"block_ids": "1,[3", "chunk_size": "2"}, "unclosed bracket"),
    ({"block_ids": "[[1,2]]", "chunk_size": "2"}, "nested brackets"),
    ({"block_ids": "[5,2]", "chunk_size": "2"}, "reversed range"),
    ({"block_ids": "0,x", "chunk_size": "2"}, "not a number"),
    ({"block_ids": "-1", "chunk_size": "2"}, "negative id"),
    ({"block_ids": "\u0663", "chunk_size": "2"}, "non-ASCII digit"),
    ({"block_ids": "9" * 5000, "chunk_size": "2"}, "past int()'s 4300-digit limit"),
    ({"block_ids": "[0,99999999]", "chunk_size": "2"}, "range expands past the id cap"),
    ({"block_ids": "0,64", "chunk_size": "2"}, "id past the registered 64 blocks"),
    ({"block_ids": "99999999999999999999999", "chunk_size": "2"}, "id past int64"),
    ({"block_ids": "0,1"}, "chunk_size missing"),
    ({"block_ids": "0,1", "chunk_size": ""}, "chunk_size empty"),
    ({"block_ids": "0,1", "chunk_size": "0"}, "chunk_size zero"),
    ({"block_ids": "0,1", "chunk_size": "-2"}, "chunk_size negative"),
    ({"block_ids": "0,1", "chunk_size": "two"}, "chunk_size not a number"),
    ({"block_ids": "0,1", "chunk_size": "1.5"}, "chunk_size not an integer"),
    ({"block_ids": "0,1", "chunk_size": "1_0"}, "chunk_size with a Python digit separator"),
    ({"block_ids": "0,1", "chunk_size": "\u0661"}, "chunk_size non-ASCII digit"),
    ({"block_ids": "0,1", "chunk_size": "2", "instance_id": "abc"}, "instance_id not a number"),
    ({"block_ids": "0,1", "chunk_size": "2", "layerwise": "maybe"}, "layerwise not a boolean"),
])
def test_check_400_for_bad_parameters(live: Live, params: dict[str, str], why: str) -> None:
    live.worker()
    params = {"instance_id": str(IID), **params}
    error_of(live.check(**params), 400)


def test_check_404_for_an_unregistered_instance(live: Live) -> None:
    live.worker()
    assert "777 not registered" in error_of(live.check(block_ids="0", chunk_size="1", instance_id="777"), 404)
    assert "0 not registered" in error_of(live.check(block_ids="0", chunk_size="1"), 404)  # the default id
    live.client.unregister_kv_cache(IID)
    error_of(live.check(block_ids="0", chunk_size="1", instance_id=str(IID)), 404)


def test_check_404_when_unregistered_between_lookup_and_read(live: Live) -> None:
    """An unregister that lands after the route found the KV cache but before it read the tensors
    must not be a 500. The window is made deterministic by closing the mapping the data path holds
    (what ``unregister_kv_cache`` does) while leaving the worker entry in place."""
    live.worker()
    assert live.server.datapath is not None
    registered = live.server.datapath.registered_kv(IID)
    assert registered is not None
    registered.close()
    error_of(live.check(block_ids="0", chunk_size="1", instance_id=str(IID)), 404)
    error_of(live.checksums({"block_ids": [0], "chunk_size": 1, "instance_id": IID}), 404, key="detail")


def test_check_501_is_unreachable_because_registration_refuses_unsupported_formats(live: Live) -> None:
    """The seed answers 501 when the engine has no cache contexts or the KV format is one the
    checksum cannot handle (fused page buffers, cross-layer tensors). Our engine always has its
    registry, and ``register_kv_cache`` refuses every format the copy path (and so the checksum)
    does not support, so such a KV cache is never registered: the route answers 404 for it. A 501
    cannot be constructed through the real server; this pins the behaviour that replaces it."""
    kv = WorkerKVCache(1, (64, 2, BLOCK, 16))  # rank 4: fused K/V, refused
    live.stack.callback(kv.close)
    with pytest.raises(wire.ErrorReply, match="register_kv_cache failed"):
        live.client.register_kv_cache(31, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
    error_of(live.check(block_ids="0", chunk_size="1", instance_id="31"), 404)


# -- POST /cache/checksums (LMCache 0.5.6) ---------------------------------------------------------


@pytest.fixture
def bench_live(live: Live) -> Live:
    """The golden bench run's KV: ``(2,64,16,2,64):float16:2`` as instance 1000, filled as its client
    fills it (``torch.manual_seed(42)``, then one ``torch.randn`` per layer)."""
    kv = live.worker(iid=1000, shape=(2, 64, BLOCK, 2, 64), model="test-model")
    g = torch.Generator().manual_seed(42)
    for layer in kv.layers:
        layer.copy_(torch.randn(layer.shape, generator=g, dtype=torch.float16))
    # The capture's own recomputation on the client side, and ours, of the same bytes.
    assert local_md5(kv.layers, list(range(32)), 16) == GOLDEN["local_recompute"]
    return live


EXCHANGES = sorted(name for name, entry in GOLDEN.items() if isinstance(entry, dict) and "request" in entry)


def test_golden_file_lists_every_documented_case() -> None:
    assert EXCHANGES == sorted(["ok", "ok_layerwise", "unknown_instance", "empty_block_ids", "bad_chunk_size",
                                "missing_body_fields"])
    assert GOLDEN["local_recompute_matches"] is True


@pytest.mark.parametrize("case", EXCHANGES)
def test_checksums_reproduces_the_golden_exchange(bench_live: Live, case: str) -> None:
    golden = GOLDEN[case]
    request, expected = golden["request"], golden["response"]
    assert (request["method"], request["path"]) == ("POST", "/cache/checksums")
    resp = bench_live.checksums(request["body"])
    assert resp.status_code == expected["status"]
    assert resp.headers["content-type"] == expected["headers"]["content-type"]
    assert resp.content == expected["body_text"].encode()  # byte for byte, key order included


def test_checksums_match_the_reference_vector_after_a_real_store_and_retrieve(live: Live) -> None:
    """``test_vectors.json`` → ``end_to_end_store``: the reference server's digests of the pattern KV;
    the same digests come back for the blocks a retrieve wrote."""
    kv = live.worker(iid=77, model=E2E["model_name"])
    fill_vector_pattern(kv)
    req = E2E["cache_checksums_request"]
    body = {"block_ids": list(range(32)), "chunk_size": req["chunk_size"], "instance_id": req["instance_id"],
            "layerwise": req["layerwise"]}
    resp = live.checksums(body)
    assert resp.status_code == 200 and resp.json() == E2E["cache_checksums_response"]

    for layer in kv.layers:
        layer[:, 32:].zero_()
    model = E2E["model_name"]
    assert live.client.store(make_key(TOKENS, "e2e", model_name=model, worker_id=0), 77,
                             [list(range(32))]) == (b"", True)
    live.client.end_session("e2e")
    assert live.client.lookup(make_key(TOKENS, "e2e-load", model_name=model)) == 2
    assert live.client.retrieve(make_key(TOKENS, "e2e-load", model_name=model, worker_id=0), 77,
                                [list(range(32, 64))]) == (b"", True)
    live.client.end_session("e2e-load")
    moved = live.checksums({**body, "block_ids": list(range(32, 64))}).json()
    assert moved["chunk_checksums"] == E2E["cache_checksums_response"]["chunk_checksums"]
    assert moved["block_id_ranges"] == [[32, 63]]


@pytest.mark.parametrize("raw", [
    b'{"block_ids": "0,1", "chunk_size": 1, "instance_id": 1000}',  # a string where a list is declared
    b'{"block_ids": ["x"], "chunk_size": 1, "instance_id": 1000}',
    b'{"block_ids": [0], "chunk_size": "x", "instance_id": 1000}',
    b'{"block_ids": [0], "chunk_size": [1], "instance_id": 1000}',
    b'{"block_ids": [0], "chunk_size": 1, "instance_id": {}}',
    b'{"block_ids": [0], "chunk_size": 1, "instance_id": 1000, "layerwise": "maybe"}',
    b'[]',
    b'{"block_ids": [0], ',  # malformed JSON
])
def test_checksums_422_for_wrong_types(bench_live: Live, raw: bytes) -> None:
    resp = bench_live.checksums(raw)
    assert resp.status_code == 422
    assert resp.headers["content-type"] == JSON
    assert "detail" in resp.json()


def test_checksums_400_and_404_details(bench_live: Live) -> None:
    cases = [
        ({"block_ids": [0], "chunk_size": -16, "instance_id": 1000}, 400, "chunk_size must be positive"),
        ({"block_ids": [64], "chunk_size": 16, "instance_id": 1000}, 400, None),  # past the 64 blocks
        ({"block_ids": [0], "chunk_size": 16, "instance_id": 1001}, 404, "instance_id 1001 not registered"),
    ]
    for body, status, detail in cases:
        message = error_of(bench_live.checksums(body), status, key="detail")
        if detail is not None:
            assert message == detail


# -- property: no query string / body makes a 5xx ------------------------------------------------

_good_id = st.one_of(st.integers(0, 63).map(str),
                    st.tuples(st.integers(0, 63), st.integers(0, 63)).map(lambda r: f"[{min(r)},{max(r)}]"))
_good_ids = st.lists(_good_id, min_size=1, max_size=5).map(",".join)
_any_id = st.one_of(_good_id, st.integers(-3, 70).map(str), st.text(alphabet="0123456789,[] -x\u0663", max_size=12))
_block_ids = st.one_of(_good_ids, st.lists(_any_id, max_size=5).map(",".join), st.text(max_size=20))
_int_text = st.one_of(st.integers(-5, 40).map(str), st.text(max_size=8),
                      st.sampled_from(["", " 2", "1_0", "1e3", "\u0661", "9" * 40, "-0", "+3"]))
_flag = st.one_of(st.sampled_from(["true", "false", "TRUE", "1", "0", "yes", "no", ""]), st.text(max_size=6))


def _maybe(value: st.SearchStrategy[str]) -> st.SearchStrategy[str | None]:
    """``value``, or (one time in four) ``None`` for "parameter absent"."""
    return st.one_of(value, value, value, st.none())


_params = st.fixed_dictionaries({
    "block_ids": _maybe(_block_ids),
    "chunk_size": _maybe(st.one_of(st.integers(1, 40).map(str), _int_text)),
    "instance_id": _maybe(st.one_of(st.just(str(IID)), _int_text)),
    "layerwise": _maybe(_flag),
    "extra": _maybe(st.text(max_size=5)),
}).map(lambda d: {k: v for k, v in d.items() if v is not None})
_raw_query = st.text(max_size=60)


def test_check_query_strings_never_give_a_5xx(live: Live) -> None:
    live.worker()
    seen: set[int] = set()
    with httpx.Client(base_url=live.url, timeout=HTTP_TIMEOUT) as http:

        def verify(resp: httpx.Response) -> None:
            seen.add(resp.status_code)
            assert resp.status_code in (200, 400, 404), resp.text
            assert resp.headers["content-type"] == JSON
            body = resp.json()
            if resp.status_code == 200:
                assert list(body) == BODY_KEYS and body["status"] == "success"
                sums = body["chunk_checksums"]
                lists = list(sums.values()) if body["layerwise"] else [sums]
                assert lists and all(len(x) == body["num_chunks"] >= 1 for x in lists)
            else:
                assert list(body) == ["error"] and isinstance(body["error"], str)

        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(params=_params, raw=_raw_query, use_raw=st.booleans())
        # One explicit example per outcome, so the coverage check below never depends on chance.
        @example(params={"block_ids": "0,1", "chunk_size": "2", "instance_id": str(IID)}, raw="", use_raw=False)
        @example(params={"block_ids": "0,[", "chunk_size": "2", "instance_id": str(IID)}, raw="", use_raw=False)
        @example(params={"block_ids": "0,1", "chunk_size": "2", "instance_id": "5"}, raw="", use_raw=False)
        def run(params: dict[str, str], raw: str, use_raw: bool) -> None:
            if use_raw:
                # Percent-encode what a URL cannot carry; '%' stays, so odd escapes reach the server.
                verify(http.get(f"/kvcache/check?{urllib.parse.quote(raw, safe='=&,[]+%')}"))
            else:
                verify(http.get("/kvcache/check", params=params))

        run()
    assert {200, 400, 404} <= seen  # the strategy reaches the success path and the refusals


_json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)
_checksum_body = st.fixed_dictionaries({}, optional={
    "block_ids": st.one_of(st.lists(st.integers(-2, 70), max_size=20), _json_value),
    "chunk_size": st.one_of(st.integers(-2, 40), _json_value),
    "instance_id": st.one_of(st.just(1000), st.integers(), _json_value),
    "layerwise": st.one_of(st.booleans(), _json_value)})


def test_checksums_bodies_never_give_a_5xx(bench_live: Live) -> None:
    with httpx.Client(base_url=bench_live.url, timeout=HTTP_TIMEOUT) as http:

        @settings(max_examples=100, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(body=st.one_of(_checksum_body, _json_value))
        def run(body: Any) -> None:
            resp = http.post("/cache/checksums", content=json.dumps(body).encode(), headers={"Content-Type": JSON})
            assert resp.status_code in (200, 400, 404, 422), resp.text
            assert resp.headers["content-type"] == JSON
            if resp.status_code != 200:
                assert list(resp.json()) == ["detail"]

        run()
