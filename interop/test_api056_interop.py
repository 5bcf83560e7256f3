"""LMCache 0.5.6's HTTP route generation and operator CLI against both servers (``make interop``).

The real LMCache 0.5.6 server and lmcache-server are each started once per module, bare (no L2) and
with an fs L2 plus a registered CPU worker holding stored KV (our client drives either server; it speaks
the real wire protocol). Every request below is sent to both, and the answers are compared: status
codes and bodies, allowing only values that differ by nature (``VARIES``: request ids, URLs, the
implementation's name, pydantic's documentation ``url`` in 422 entries). Then the 0.5.6 operator CLI
(``lmcache ping|describe|kvcache|quota``, the peer venv's own executable) runs against both: the same
exit codes and the same output fields.

Where lmcache-server answers differently on purpose, the test says so and checks both answers:

* ``GET /cache/objects`` on an fs adapter: 0.5.6's FS adapter cannot list (503 ``does not support
  listing``); ours lists (200, the page shape 0.5.6's S3 adapter answers with).
* ``lmcache describe kvcache``: 0.5.6's CLI reads ``storage_manager.eviction_controller.eviction_policy``,
  which 0.5.6's server does not fill (``null``); ours fills it (``"LRU"``).
* ``engine_type`` names the implementation (``MPCacheServer`` / ``CacheServer``).
* ``POST /cache/prefetches`` with a token id outside ``[0, 2**32)``: ours 400, 0.5.6 500. A key invariant's
  400 message words the rule in each implementation's own way (compared by status).
* ``lmcache quota list`` prints the server's rows in its order: ours sorted by salt, 0.5.6's in order of
  creation; the rows are compared as a set.
* ``GET /config``: each implementation lays out its own config objects inside a section; the sections an
  operator reads (``mp``, ``storage_manager``, ``observability``, ``http``) and the values compared are shared.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from lmcache_core.bench.peer import PEER_ENV, peer_server_cmd
from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.hashing import TokenHasher
from lmcache_core.keys import kv_rank_for_worker
from lmcache_core.testing import free_port, server_process
from lmcache_core.transfer.client_kv import WorkerKVCache

CHUNK, BLOCK = 256, 16
BPC = CHUNK // BLOCK
SHAPE = (2, 64, BLOCK, 2, 8)  # NHD: (K/V, blocks, block size, heads, head size)
MODEL = "api056-interop-model"
IID = 5606
TOKENS = list(range(7000, 7000 + 3 * CHUNK))
DEADLINE_S = 60.0
VARIES = "<varies by nature>"


@dataclass
class Server:
    name: str
    http_url: str
    zmq_url: str
    base: Path | None
    keep: list[Any] = field(default_factory=list)

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                params: dict[str, Any] | None = None) -> httpx.Response:
        content = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if content is not None else {}
        return httpx.request(method, f"{self.http_url}{path}", content=content, headers=headers, params=params,
                             timeout=60)

    def data_files(self) -> int:
        assert self.base is not None
        return sum(1 for p in self.base.iterdir() if p.name.endswith(".data")) if self.base.exists() else 0


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    return {**env, **extra}


@contextlib.contextmanager
def _pair(tmp: Path, peer_python: Path, l2: bool) -> Iterator[tuple[Server, Server]]:
    """(ours, theirs), each with an fs L2 on its own directory when ``l2``."""
    with contextlib.ExitStack() as stack:
        servers = []
        for name in ("ours", "theirs"):
            zp, hp = free_port(), free_port()
            base = tmp / f"{name}-l2" if l2 else None
            extra = ["--l2-adapter", json.dumps({"type": "fs", "base_path": str(base)})] if base else []
            if name == "ours":
                cmd = [sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
                       "--http-port", str(hp), "--l1-size-gb", "0.1", "--log-level", "WARNING", *extra]
                env = _clean_env()
            else:
                cmd = peer_server_cmd(peer_python.parent / "lmcache", zp, hp, 0.1, "--supported-transfer-mode",
                                      "auto", *extra)
                env = _clean_env(**PEER_ENV)
            stack.enter_context(server_process(cmd, f"http://127.0.0.1:{hp}/healthcheck", env=env,
                                               log=tmp / f"{name}.log"))
            servers.append(Server(name, f"http://127.0.0.1:{hp}", f"tcp://127.0.0.1:{zp}", base))
        yield servers[0], servers[1]


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, peer_python: Path) -> Iterator[tuple[Server, Server]]:
    with _pair(tmp_path_factory.mktemp("api056-bare"), peer_python, l2=False) as pair:
        yield pair


def _register_and_store(server: Server) -> None:
    """A registered CPU worker (kept for the module) whose KV for ``TOKENS`` is stored."""
    kv = WorkerKVCache(2, SHAPE)
    client = LMCacheClient(server.zmq_url, timeout_s=30)
    server.keep += [kv, client]
    gen = torch.Generator().manual_seed(IID)
    for layer in kv.layers:
        layer.copy_(torch.randn(layer.shape, generator=gen, dtype=torch.float32).to(layer.dtype))
    client.register_kv_cache(IID, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
    key = make_key(TOKENS, "store", model_name=MODEL, worker_id=0)
    _, ok = client.store(key, IID, [list(range(len(TOKENS) // CHUNK * BPC))])
    assert ok is True
    client.end_session("store")


def wait_until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def with_l2(tmp_path_factory: pytest.TempPathFactory, peer_python: Path) -> Iterator[tuple[Server, Server]]:
    with _pair(tmp_path_factory.mktemp("api056-l2"), peer_python, l2=True) as pair:
        try:
            for server in pair:
                _register_and_store(server)
            for server in pair:
                wait_until(lambda s=server: s.data_files() >= 3, f"{server.name}'s write-behind")
            yield pair
        finally:
            for server in pair:
                for thing in reversed(server.keep):
                    thing.close()


# -- comparing answers ---------------------------------------------------------------------------


def normalised(resp: httpx.Response, varies: tuple[str, ...] = ()) -> tuple[int, Any]:
    """(status, body) with pydantic's ``url`` dropped from 422 entries and ``varies`` fields masked."""
    try:
        body = resp.json()
    except ValueError:
        body = resp.text
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        body = {**body, "detail": [{k: v for k, v in item.items() if k != "url"} for item in body["detail"]]}
    if isinstance(body, dict):
        body = {k: (VARIES if k in varies else v) for k, v in body.items()}
    return resp.status_code, body


def same(pair: tuple[Server, Server], method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         params: dict[str, Any] | None = None, varies: tuple[str, ...] = ()) -> tuple[int, Any]:
    """Send one request to both servers; assert equal (normalised) answers; the answer."""
    ours, theirs = (normalised(s.request(method, path, body, raw=raw, params=params), varies) for s in pair)
    assert ours == theirs, f"{method} {path} {str(body)[:120]!r}:\n  ours   {ours}\n  theirs {theirs}"
    return ours


def key_of(chunk: int) -> dict[str, Any]:
    """The EncodedObjectKey of ``TOKENS``' chunk ``chunk`` as worker 0 of 1 stores it."""
    hashes = TokenHasher(CHUNK).hash_chunks(TOKENS)
    return {"chunk_hash_hex": hashes[chunk].hex(), "model_name": MODEL, "kv_rank": kv_rank_for_worker(1, 0),
            "object_group_id": 0, "cache_salt": ""}


def prefetch_on_both(pair: tuple[Server, Server], body: dict[str, Any]) -> dict[str, Any]:
    """Submit the same warm prefetch to both (the same 202 but for the id), poll each to completion (each poll
    carries its id), then once more (404, in the same words on both); the completion body, id masked."""
    ids, done = {}, {}
    for server in pair:
        resp = server.request("POST", "/cache/prefetches", body)
        assert normalised(resp, ("request_id",)) == (
            202, {"request_id": VARIES, "chunks": len(body["token_ids"]) // CHUNK, "status": "submitted"}), server.name
        ids[server.name] = resp.json()["request_id"]
    for server in pair:
        def completed(s: Server = server) -> dict[str, Any] | None:
            resp = s.request("GET", f"/cache/prefetches/{ids[s.name]}")
            assert resp.status_code == 200, resp.text
            doc = resp.json()
            assert doc["request_id"] == ids[s.name]
            return doc if doc["status"] == "completed" else None
        done[server.name] = {**wait_until(completed, f"{server.name}'s prefetch"), "request_id": VARIES}
        resp = server.request("GET", f"/cache/prefetches/{ids[server.name]}")
        assert (resp.status_code, resp.json()) == (404, {"detail": f"unknown prefetch request_id={ids[server.name]!r} "
                                                                   "(already completed or never submitted)"})
    assert done["ours"] == done["theirs"], done
    return done["ours"]


# -- routes, no L2 -------------------------------------------------------------------------------

BARE_CASES: list[tuple[str, str, Any, bytes | None, dict[str, Any] | None]] = [
    ("GET", "/config/adapters", None, None, None),
    ("POST", "/cache/clear", None, None, None),
    ("POST", "/cache/clear", {}, None, None),
    ("POST", "/cache/clear", {"tier": "l1", "force": "yes"}, None, None),
    ("POST", "/cache/clear", {"tier": "l2"}, None, None),
    ("POST", "/cache/clear", {"tier": "all", "force": True}, None, None),
    ("POST", "/cache/clear", {"tier": "bogus"}, None, None),
    ("POST", "/cache/clear", {"force": 2}, None, None),
    ("POST", "/cache/clear", [1], None, None),
    ("POST", "/cache/clear", None, b"not json", None),
    ("GET", "/cache/objects", None, None, None),
    ("GET", "/cache/objects", None, None, {"tier": "l1"}),
    ("GET", "/cache/objects", None, None, {"tier": "x"}),
    ("GET", "/cache/objects", None, None, {"page_size": "0"}),
    ("GET", "/cache/objects", None, None, {"page_size": "5001"}),
    ("GET", "/cache/objects", None, None, {"page_size": "abc"}),
    ("GET", "/cache/objects", None, None, {"adapter": "nope"}),
    ("DELETE", "/cache/objects", {"keys": []}, None, None),
    ("DELETE", "/cache/objects", {"keys": [], "tier": "l1"}, None, None),
    ("DELETE", "/cache/objects", {"keys": [key_of(0)], "tier": "l1"}, None, None),
    ("DELETE", "/cache/objects", {"keys": [key_of(0)], "tier": "all"}, None, None),
    ("DELETE", "/cache/objects", {"keys": [{**key_of(0), "chunk_hash_hex": "zz"}], "tier": "l1"}, None, None),
    ("DELETE", "/cache/objects", {"keys": [key_of(0)] * 10_001, "tier": "l1"}, None, None),
    ("DELETE", "/cache/objects", {}, None, None),
    ("DELETE", "/cache/objects", None, None, None),
    ("DELETE", "/cache/objects", {"keys": "x"}, None, None),
    ("DELETE", "/cache/objects", {"keys": [{"chunk_hash_hex": 1, "kv_rank": "x"}], "force": "maybe"}, None, None),
    ("DELETE", "/cache/objects", {"keys": [], "tier": "zz", "adapter": 3}, None, None),
    ("POST", "/cache/prefetches", {"model_name": MODEL, "world_size": 1, "token_ids": TOKENS}, None, None),
    ("POST", "/cache/prefetches", {"model_name": MODEL, "world_size": 1, "token_ids": [1], "source_tier": "l1"},
     None, None),
    ("POST", "/cache/prefetches", {"model_name": MODEL, "world_size": 1, "token_ids": [], "target_tier": "all"},
     None, None),
    ("POST", "/cache/prefetches", {"model_name": MODEL}, None, None),
    ("POST", "/cache/prefetches", {"model_name": None, "world_size": 1.5, "token_ids": [1, "x", 2.5]}, None, None),
    ("POST", "/cache/prefetches", None, None, None),
    ("GET", "/cache/prefetches/abc", None, None, None),
    ("GET", "/reconfigure/dax/l2/status", None, None, None),
    ("GET", "/reconfigure/FS/l2/status", None, None, None),
    ("GET", "/reconfigure/%20/l2/status", None, None, None),
    ("POST", "/reconfigure/dax/l2/add", {}, None, None),
    ("POST", "/reconfigure/dax/l2/add", {"device_path": "/dev/dax0.0", "size": "1GiB"}, None, None),
    ("POST", "/reconfigure/dax/l2/add", {"device_path": "/dev/dax0.0", "size": "bad"}, None, None),
    ("POST", "/reconfigure/dax/l2/add", {"device_path": "/dev/dax0.0", "size": 1.5}, None, None),
    ("POST", "/reconfigure/dax/l2/add", {"device_path": "/dev/dax0.0", "size": "1GiB", "extra": 1}, None, None),
    ("POST", "/reconfigure/dax/l2/remove", {"device_path": "/dev/dax0.0", "mode": "later"}, None, None),
    ("POST", "/reconfigure/dax/l2/resize", {"device_path": 7, "size": 1, "force": "x"}, None, None),
    ("POST", "/reconfigure/dax/l2/frob", {}, None, None),
    ("POST", "/reconfigure/fs/l2/frob", {}, None, None),
    ("POST", "/reconfigure/fs/l2/frob", {"adapter_index": "x"}, None, None),
    ("POST", "/reconfigure/fs/l2/frob", [1], None, None),
    ("POST", "/reconfigure/fs/l2/frob", None, None, None),
    ("POST", "/reconfigure/fs/l2/%20", {}, None, None),
]


@pytest.mark.parametrize(("method", "path", "body", "raw", "params"), BARE_CASES,
                         ids=[f"{m} {p} {str(b or r or q)[:40]}" for m, p, b, r, q in BARE_CASES])
def test_the_same_request_gets_the_same_answer(bare: tuple[Server, Server], method: str, path: str, body: Any,
                                                raw: bytes | None, params: dict[str, Any] | None) -> None:
    same(bare, method, path, body, raw=raw, params=params)


def test_run_script_disabled_is_404_saying_disabled_on_both(bare: tuple[Server, Server]) -> None:
    for server in bare:
        resp = httpx.post(f"{server.http_url}/run_script", files={"script": ("s.py", b"result = 1")}, timeout=30)
        assert resp.status_code == 404, (server.name, resp.text)
        assert "disabled" in resp.text and resp.headers["content-type"].startswith("text/plain"), server.name


def test_config_is_one_indented_document_with_the_same_core_sections(bare: tuple[Server, Server]) -> None:
    answers = {s.name: s.request("GET", "/config") for s in bare}
    for name, resp in answers.items():
        assert resp.status_code == 200 and resp.headers["content-type"] == "application/json", name
        assert resp.text.startswith('{\n  "'), name  # indented by 2
    ours, theirs = (answers[n].json() for n in ("ours", "theirs"))
    # Section contents name each implementation's own settings; the sections an operator reads are shared.
    assert {"mp", "storage_manager", "observability", "http"} <= set(ours) & set(theirs)
    assert ours["mp"]["chunk_size"] == theirs["mp"]["chunk_size"] == CHUNK
    # Inside a section each implementation lays out its own config objects (0.5.6 nests the policy).
    assert ours["storage_manager"]["eviction_policy"] == theirs["storage_manager"]["eviction_config"][
        "eviction_policy"] == "LRU"


def test_prefetch_without_l2_completes_at_once_on_both(bare: tuple[Server, Server]) -> None:
    """No L2 to load from: submitted, then completed with nothing found, then unknown; a token id that cannot
    be hashed is our 400 where 0.5.6 fails with a 500 (a documented difference)."""
    with contextlib.ExitStack() as stack:
        for server in bare:
            kv = WorkerKVCache(2, SHAPE)
            client = LMCacheClient(server.zmq_url, timeout_s=30)
            stack.callback(kv.close)
            stack.callback(client.close)
            client.register_kv_cache(IID + 1, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
            stack.callback(client.unregister_kv_cache, IID + 1)
        body = {"model_name": MODEL, "world_size": 1, "token_ids": TOKENS}
        assert prefetch_on_both(bare, body) == {
            "request_id": VARIES, "status": "completed", "found_keys": 0, "total_keys": 3}
        same(bare, "POST", "/cache/prefetches", {**body, "cache_salt": "a/b"}, varies=("detail",))
        ours, theirs = bare
        assert ours.request("POST", "/cache/prefetches", {**body, "token_ids": [-1] * CHUNK}).status_code == 400
        assert theirs.request("POST", "/cache/prefetches", {**body, "token_ids": [-1] * CHUNK}).status_code == 500


# -- routes with an fs L2 and stored KV ----------------------------------------------------------


def test_adapters_listing_and_refusals_with_an_fs_l2(with_l2: tuple[Server, Server]) -> None:
    assert same(with_l2, "GET", "/config/adapters") == (200, {"adapters": [
        {"index": 0, "type_name": "fs", "tier": "l2", "primary": True, "reconfigurable": False}]})
    same(with_l2, "GET", "/cache/objects", params={"adapter": "nope"})
    same(with_l2, "GET", "/cache/objects", params={"tier": "all"})
    same(with_l2, "GET", "/reconfigure/fs/l2/status")
    same(with_l2, "POST", "/reconfigure/fs/l2/grow", {"adapter_index": 0})
    ours, theirs = with_l2
    # A documented difference: 0.5.6's FS adapter cannot list; ours can, in the page shape 0.5.6 answers with.
    resp = theirs.request("GET", "/cache/objects")
    assert resp.status_code == 503 and "does not support listing" in resp.json()["detail"]
    page = ours.request("GET", "/cache/objects", params={"page_size": 2})
    assert page.status_code == 200
    doc = page.json()
    assert set(doc) == {"adapter", "shared", "entries", "next_page_token"}
    assert (doc["adapter"], doc["shared"], len(doc["entries"])) == ("fs", False, 2)
    assert {e["key"]["chunk_hash_hex"] for e in doc["entries"]} <= {key_of(i)["chunk_hash_hex"] for i in range(3)}


def test_prefetch_warms_l1_on_both_then_deletes_count_alike(with_l2: tuple[Server, Server]) -> None:
    body = {"model_name": MODEL, "world_size": 1, "token_ids": TOKENS}
    same(with_l2, "POST", "/cache/prefetches", {**body, "token_ids": TOKENS[:10]})  # noop
    same(with_l2, "POST", "/cache/prefetches", {**body, "world_size": 2})  # no layout: 503
    same(with_l2, "POST", "/cache/prefetches", {**body, "token_ids": [0] * 1_000_001})  # the token cap
    same(with_l2, "POST", "/cache/clear", {"tier": "l1", "force": True})
    assert prefetch_on_both(with_l2, body) == {
        "request_id": VARIES, "status": "completed", "found_keys": 3, "total_keys": 3}

    # Both L1s hold the three chunks again: deletes count the same on both.
    assert same(with_l2, "DELETE", "/cache/objects", {"keys": [key_of(0)], "tier": "l1"}) == (
        200, {"deleted": 1, "skipped": 0, "ok": True})
    assert same(with_l2, "DELETE", "/cache/objects", {"keys": [key_of(0), key_of(1)]}) == (
        200, {"deleted": 2, "skipped": 0, "ok": True})
    assert same(with_l2, "DELETE", "/cache/objects", {"keys": [key_of(2)], "tier": "all", "adapter": "fs"}) == (
        200, {"deleted": 2, "skipped": 0, "ok": True})
    same(with_l2, "DELETE", "/cache/objects", {"keys": [key_of(2)], "tier": "all", "adapter": "s3"})
    for server in with_l2:
        wait_until(lambda s=server: s.data_files() == 0, f"{server.name}'s L2 deletes")


# -- the 0.5.6 operator CLI ----------------------------------------------------------------------


def lmcache_cli(peer_python: Path, *args: str) -> tuple[int, Any, str]:
    """Run the peer's ``lmcache`` CLI; (exit code, parsed JSON stdout or the text, stderr)."""
    proc = subprocess.run([str(peer_python.parent / "lmcache"), *args], env=_clean_env(**PEER_ENV),
                          capture_output=True, text=True, timeout=120)
    try:
        out: Any = json.loads(proc.stdout)
    except ValueError:
        out = proc.stdout
    return proc.returncode, out, proc.stderr


def both(peer_python: Path, pair: tuple[Server, Server], *args: str) -> dict[str, tuple[int, Any, str]]:
    """The same CLI command against each server (``{url}`` in ``args`` is its URL), run side by side."""
    with ThreadPoolExecutor(2) as pool:
        runs = {s.name: pool.submit(lmcache_cli, peer_python, *[a.format(url=s.http_url) for a in args])
                for s in pair}
        return {name: run.result() for name, run in runs.items()}


def test_ping_and_describe_kvcache(peer_python: Path, bare: tuple[Server, Server]) -> None:
    ping = both(peer_python, bare, "ping", "kvcache", "--url", "{url}", "--format", "json")
    for name, (rc, out, err) in ping.items():
        assert rc == 0, (name, err)
        assert out["metrics"]["status"] == "OK" and isinstance(out["metrics"]["round_trip_time_ms"], float)
    described = both(peer_python, bare, "describe", "kvcache", "--url", "{url}", "--format", "json")
    (rc_o, ours, err_o), (rc_t, theirs, err_t) = described["ours"], described["theirs"]
    assert (rc_o, rc_t) == (0, 0), (err_o, err_t)
    assert ours["title"] == theirs["title"] == "LMCache KV Cache Service"
    assert list(ours["metrics"]) == list(theirs["metrics"])  # the same fields, in the same order
    assert (ours["metrics"]["engine_type"], theirs["metrics"]["engine_type"]) == ("CacheServer", "MPCacheServer")
    assert (ours["metrics"]["eviction_policy"], theirs["metrics"]["eviction_policy"]) == ("LRU", None)
    for metric in ("url", "engine_type", "eviction_policy"):
        ours["metrics"].pop(metric), theirs["metrics"].pop(metric)
    assert ours["metrics"] == theirs["metrics"]


def test_kvcache_clear_and_quota_commands(peer_python: Path, bare: tuple[Server, Server]) -> None:
    commands = [
        ("kvcache", "--format", "json", "clear", "--url", "{url}"),
        ("quota", "set", "alice", "--limit-gb", "1.5", "--url", "{url}", "--format", "json"),
        ("quota", "set", "_default", "--limit-gb", "0.25", "--url", "{url}", "--format", "json"),
        ("quota", "get", "alice", "--url", "{url}", "--format", "json"),
        ("quota", "get", "bob", "--url", "{url}", "--format", "json"),
        ("quota", "list", "--url", "{url}", "--format", "json"),
        ("quota", "delete", "alice", "--url", "{url}", "--format", "json"),
        ("quota", "delete", "alice", "--url", "{url}", "--format", "json"),
        ("quota", "set", "carol", "--limit-gb", "-1", "--url", "{url}", "--format", "json"),
    ]
    for args in commands:
        runs = both(peer_python, bare, *args)
        (rc_o, ours, err_o), (rc_t, theirs, err_t) = runs["ours"], runs["theirs"]
        assert rc_o == rc_t, (args, err_o[-300:], err_t[-300:])
        if args[1] == "list":  # rows in the server's order: ours by salt, 0.5.6's by creation
            for out in (ours, theirs):
                out["metrics"]["quotas"].sort(key=lambda row: row["cache_salt"])
        assert ours == theirs, (args, ours, theirs)
        if rc_o != 0:  # a refusal: both log the server's message
            assert "limit_gb must be non-negative" in err_o and "limit_gb must be non-negative" in err_t
    rc, out, _ = lmcache_cli(peer_python, "kvcache", "clear", "--url", "http://127.0.0.1:1")
    assert rc == 1  # nothing listening: the CLI's own failure, for either server
