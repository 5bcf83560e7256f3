"""The quota routes through real HTTP, as curl sees them (LMCache's HTTP API, "Quota Management"):
``PUT/GET/DELETE /quota/{cache_salt}`` and ``GET /quota``.

Every test runs a real server (real L1 in shared memory, real L2 adapters: the in-memory test adapter
or the FS adapter on ``tmp_path``) served by uvicorn. Usage is produced by storing real objects, and
enforcement is observed on the eviction threads the server runs.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import lmcache_plugin_fs.plugin as fs_plugin
import lmcache_plugin_quota.plugin as quota_plugin
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import MemoryPlugin

from lmcache_core.config import HTTPConfig, StorageManagerConfig
from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l1 import L1Result
from lmcache_core.storage.quota import GIB, gib_to_bytes

JSON = "application/json"
TIMEOUT = 30.0
OBJ = 6000  # bytes per object: L1 holds it in 8192 (4096-aligned), an L2 adapter in 6000
L1_OBJ = 8192
UNAVAILABLE = {"error": "engine not initialized"}
TOKEN = "quota-admin-secret"
Start = Callable[..., tuple[Any, str]]


# -- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
def start(lmcache_server_factory: Any, lmcache_http: Any) -> Start:
    """``start(policy=, l2=, token=, ...) -> (server, base_url)``: a started server with the quota plugin."""

    def make(*, policy: str = "LRU", l2: list[dict[str, Any]] | None = None, token: str | None = None,
             ratio: float = 0.2, run: bool = True, plugins: Iterable[Any] = ()) -> tuple[Any, str]:
        configs: dict[str, Any] = {"storage_manager": StorageManagerConfig(
            l1_size_gb=0.01, eviction_policy=policy, eviction_ratio=ratio, l2_adapter=list(l2 or []))}
        if token is not None:
            configs["http"] = HTTPConfig(http_admin_token=token)
        server = lmcache_server_factory([("quota", quota_plugin), *plugins], configs=configs, start=run)
        return server, lmcache_http(server)

    return make


def put(url: str, salt_path: str, body: Any = None, *, raw: bytes | None = None,
        headers: dict[str, str] | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.put(f"{url}/quota/{salt_path}", content=content, headers=headers or {"Content-Type": JSON},
                     timeout=TIMEOUT)


def get(url: str, salt_path: str | None = None, **kw: Any) -> httpx.Response:
    return httpx.get(f"{url}/quota" + ("" if salt_path is None else f"/{salt_path}"), timeout=TIMEOUT, **kw)


def delete(url: str, salt_path: str, **kw: Any) -> httpx.Response:
    return httpx.delete(f"{url}/quota/{salt_path}", timeout=TIMEOUT, **kw)


def ok(resp: httpx.Response) -> Any:
    """Assert a 200 JSON answer; return its body, less the per-tier breakdowns (checked here:
    ``current_usage_gb`` is the largest tier's usage, issue 18)."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == JSON
    body = resp.json()
    for entry in [body, *(body.get("users") or {}).values()] if isinstance(body, dict) else []:
        if isinstance(entry, dict) and "current_usage_gb" in entry:
            tiers = entry.pop("usage_by_tier_gb")
            assert "l1" in tiers and all(t == "l1" or t.startswith("l2:") for t in tiers), tiers
            assert entry["current_usage_gb"] == max(tiers.values()), (entry, tiers)
    return body


def error_of(resp: httpx.Response, status: int) -> str:
    """Assert ``status`` with the ``{"error": <non-empty str>}`` envelope; return the message."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == JSON
    body = resp.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def path_of(salt: str) -> str:
    """``salt`` as one path segment: every reserved byte percent-encoded, dots too (so no client
    removes a ``.`` / ``..`` segment before the request leaves)."""
    return urllib.parse.quote(salt, safe="").replace(".", "%2E")


def table(server: Any) -> dict[str, int]:
    """The engine's quota table, read from the QuotaManager the eviction controllers use."""
    return server.storage.quotas.list_quotas()


def keys(prefix: str, n: int, salt: str) -> list[ObjectKey]:
    return [ObjectKey(f"{prefix}{i}".encode().ljust(32, b"."), "quota-model", 0x01000100, 0, salt) for i in range(n)]


def write_l1(server: Any, ks: list[ObjectKey], nbytes: int = OBJ) -> None:
    """Store real objects in the server's L1 (reserve, fill, finish), as STORE does."""
    l1 = server.storage.l1
    res = l1.reserve_write(ks, nbytes)
    assert all(r == L1Result.SUCCESS for r in res.results), res.results
    for view in res.views:
        view.fill_(0x5A)
    assert all(r == L1Result.SUCCESS for r in l1.finish_write(ks))


def usage_gb(url: str, salt_path: str) -> float:
    return float(ok(get(url, salt_path))["current_usage_gb"])


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Poll ``condition`` until it holds (bounded); fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for: {what}")


# -- PUT /quota/{cache_salt}: success --------------------------------------------------------------


def test_put_sets_the_quota_and_get_reads_it_back(start: Start) -> None:
    server, url = start()
    resp = put(url, "alice", {"limit_gb": 10.0})
    body = ok(resp)
    assert list(body) == ["cache_salt", "limit_gb", "status"]  # the seed's fields, in its order
    assert body == {"cache_salt": "alice", "limit_gb": 10.0, "status": "ok"}
    assert table(server) == {"alice": 10 * GIB}  # GiB, not GB

    info = ok(get(url, "alice"))
    assert list(info) == ["cache_salt", "limit_gb", "current_usage_gb", "exists"]
    assert info == {"cache_salt": "alice", "limit_gb": 10.0, "current_usage_gb": 0.0, "exists": True}

    # A second PUT replaces the limit (create or update).
    assert ok(put(url, "alice", {"limit_gb": 2.5}))["limit_gb"] == 2.5
    assert table(server) == {"alice": int(2.5 * GIB)}
    assert ok(get(url, "alice"))["limit_gb"] == 2.5


@pytest.mark.parametrize(("value", "echo"), [
    (0, 0.0),  # non-negative includes zero
    (0.0, 0.0),
    (-0.0, 0.0),  # -0.0 is not negative; echoed as 0.0
    (10, 10.0),  # a JSON integer is a number
    (2.5, 2.5),
    (1e-320, 1e-320),  # subnormal: truncates to 0 bytes
    (1e6, 1e6),
    (3.814697265625e-05, 3.814697265625e-05),  # exactly 40960 bytes
])
def test_put_accepts_every_finite_non_negative_number(start: Start, value: float, echo: float) -> None:
    server, url = start()
    body = ok(put(url, "n", {"limit_gb": value}))
    assert body["limit_gb"] == echo and math.copysign(1, body["limit_gb"]) == 1
    assert table(server) == {"n": int(value * GIB)}
    assert ok(get(url, "n"))["limit_gb"] == int(value * GIB) / GIB


def test_put_echoes_the_number_sent_while_get_reports_the_truncated_bytes(start: Start) -> None:
    server, url = start()
    assert ok(put(url, "tenth", {"limit_gb": 0.1}))["limit_gb"] == 0.1
    assert table(server) == {"tenth": int(0.1 * GIB)} == {"tenth": 107374182}
    assert ok(get(url, "tenth"))["limit_gb"] == 107374182 / GIB


def test_put_ignores_extra_fields_and_the_content_type(start: Start) -> None:
    server, url = start()
    assert ok(put(url, "x", {"limit_gb": 1, "unit": "TB", "limit_bytes": 5}))["limit_gb"] == 1.0
    assert table(server) == {"x": GIB}
    assert ok(put(url, "y", raw=b'{"limit_gb": 2}', headers={"Content-Type": "text/plain"}))["limit_gb"] == 2.0
    assert ok(put(url, "z", raw=b' \n{"limit_gb": 3}\t', headers={}))["limit_gb"] == 3.0
    assert table(server) == {"x": GIB, "y": 2 * GIB, "z": 3 * GIB}


def test_default_sentinel_is_the_empty_salt_both_ways(start: Start) -> None:
    server, url = start()
    write_l1(server, keys("anon", 2, ""))  # un-salted traffic
    assert ok(put(url, "_default", {"limit_gb": 4}))["cache_salt"] == "_default"
    assert table(server) == {"": 4 * GIB}  # the engine sees the empty salt
    assert ok(get(url, "_default")) == {"cache_salt": "_default", "limit_gb": 4.0,
                                        "current_usage_gb": 2 * L1_OBJ / GIB, "exists": True}
    assert ok(get(url)) == {"users": {"_default": {"limit_gb": 4.0, "current_usage_gb": 2 * L1_OBJ / GIB}}}
    assert ok(delete(url, "_default")) == {"cache_salt": "_default", "status": "removed"}
    assert table(server) == {}
    # "/quota/" is not the empty salt: PUT and DELETE there are 405, GET is the list.
    assert put(url, "", {"limit_gb": 1}).status_code == 405
    assert delete(url, "").status_code == 405
    assert ok(get(url, "")) == {"users": {}}
    assert table(server) == {}


# -- PUT /quota/{cache_salt}: every refusal the seed lists, and ours ---------------------------------

BAD_BODIES = [
    (b"", "invalid JSON body"),
    (b"{", "invalid JSON body"),
    (b"limit_gb=1", "invalid JSON body"),
    (b"{'limit_gb': 1}", "invalid JSON body"),  # not JSON (single quotes)
    (b'{"limit_gb": 1,}', "invalid JSON body"),
    (b"\xff\xfe\x00garbage", "invalid JSON body"),  # not UTF-8/16/32 JSON
    (b"[" * 100_000, "invalid JSON body"),  # nesting past the parser's recursion limit
    (b'{"limit_gb": ' + b"9" * 5000 + b"}", "invalid JSON body"),  # integer past the 4300-digit limit
    (b"[]", "body must be {'limit_gb': <float>}"),
    (b"[1.0]", "body must be {'limit_gb': <float>}"),
    (b"1.5", "body must be {'limit_gb': <float>}"),
    (b"null", "body must be {'limit_gb': <float>}"),
    (b'"limit_gb"', "body must be {'limit_gb': <float>}"),
    (b"{}", "body must be {'limit_gb': <float>}"),
    (b'{"limit": 1}', "body must be {'limit_gb': <float>}"),
    (b'{"LIMIT_GB": 1}', "body must be {'limit_gb': <float>}"),
    (b'{"limit_gb": "10"}', "limit_gb must be numeric"),  # LMCache's float() would take it
    (b'{"limit_gb": "abc"}', "limit_gb must be numeric"),
    (b'{"limit_gb": "nan"}', "limit_gb must be numeric"),
    (b'{"limit_gb": true}', "limit_gb must be numeric"),  # bool is not a quantity
    (b'{"limit_gb": false}', "limit_gb must be numeric"),
    (b'{"limit_gb": null}', "limit_gb must be numeric"),
    (b'{"limit_gb": [1]}', "limit_gb must be numeric"),
    (b'{"limit_gb": {"gb": 1}}', "limit_gb must be numeric"),
    (b'{"limit_gb": NaN}', "limit_gb must be finite"),
    (b'{"limit_gb": Infinity}', "limit_gb must be finite"),
    (b'{"limit_gb": -Infinity}', "limit_gb must be finite"),
    (b'{"limit_gb": 1e400}', "limit_gb must be finite"),  # parses to inf
    (b'{"limit_gb": ' + b"9" * 400 + b"}", "limit_gb must be finite"),  # an integer no double can hold
    (b'{"limit_gb": -1}', "limit_gb must be non-negative"),
    (b'{"limit_gb": -0.5}', "limit_gb must be non-negative"),
    (b'{"limit_gb": -1e-300}', "limit_gb must be non-negative"),
    (b'{"limit_gb": 1e300}', "limit_gb is too large"),  # finite GiB, infinite bytes
]


@pytest.mark.parametrize(("raw", "message"), BAD_BODIES, ids=[m + ":" + r[:20].decode("latin-1")
                                                              for r, m in BAD_BODIES])
def test_put_400_for_bad_bodies_changes_nothing(start: Start, raw: bytes, message: str) -> None:
    server, url = start()
    ok(put(url, "alice", {"limit_gb": 7}))
    ok(put(url, "bob", {"limit_gb": 1}))
    before, listed = table(server), ok(get(url))
    assert error_of(put(url, "alice", raw=raw), 400) == message
    assert error_of(put(url, "carol", raw=raw), 400) == message  # a new salt is not created either
    assert table(server) == before == {"alice": 7 * GIB, "bob": GIB}
    assert ok(get(url)) == listed
    assert ok(get(url, "carol"))["exists"] is False


@pytest.mark.parametrize(("salt", "why"), [
    ("s" * 129, "more than 128 characters"),
    ("s" * 5000, "far more than 128 characters"),
    ("a@b", "'@' separates key fields"),
    ("a\\b", "backslash"),
    ("a\x00b", "NUL"),
])
def test_put_400_for_a_salt_no_object_can_carry(start: Start, salt: str, why: str) -> None:
    server, url = start()
    ok(put(url, "keep", {"limit_gb": 1}))
    assert error_of(put(url, path_of(salt), {"limit_gb": 1}), 400).startswith("invalid cache_salt: ")
    assert table(server) == {"keep": GIB}
    # Reads of such a salt still answer: it simply has no quota.
    assert ok(get(url, path_of(salt)))["exists"] is False
    assert ok(delete(url, path_of(salt)))["status"] == "not_found"
    with pytest.raises(ValueError):
        ObjectKey.validated(b"\x00" * 32, "m", 0, 0, salt)  # the data path refuses it too


# -- GET /quota/{cache_salt} ------------------------------------------------------------------------


def test_get_never_404s_and_reports_bytes_of_a_salt_without_quota(start: Start) -> None:
    server, url = start()  # LRU: nothing is evicted here
    assert ok(get(url, "nobody")) == {"cache_salt": "nobody", "limit_gb": 0.0, "current_usage_gb": 0.0,
                                      "exists": False}
    write_l1(server, keys("g", 3, "ghost"))
    assert ok(get(url, "ghost")) == {"cache_salt": "ghost", "limit_gb": 0.0,
                                     "current_usage_gb": 3 * L1_OBJ / GIB, "exists": False}
    assert table(server) == {}  # reading did not register anything
    assert ok(get(url)) == {"users": {}}  # unregistered salts are not listed


# -- DELETE /quota/{cache_salt} ---------------------------------------------------------------------


def test_delete_answers_removed_then_not_found(start: Start) -> None:
    server, url = start()
    ok(put(url, "alice", {"limit_gb": 1}))
    ok(put(url, "bob", {"limit_gb": 2}))
    resp = delete(url, "alice")
    assert list(ok(resp)) == ["cache_salt", "status"]
    assert resp.json() == {"cache_salt": "alice", "status": "removed"}
    assert table(server) == {"bob": 2 * GIB}
    assert ok(delete(url, "alice")) == {"cache_salt": "alice", "status": "not_found"}
    assert ok(delete(url, "never")) == {"cache_salt": "never", "status": "not_found"}
    assert table(server) == {"bob": 2 * GIB}
    assert ok(get(url, "alice"))["exists"] is False


# -- GET /quota --------------------------------------------------------------------------------------


def test_list_shows_registered_salts_with_limits_and_usage(start: Start) -> None:
    server, url = start()
    assert ok(get(url)) == {"users": {}}
    write_l1(server, keys("a", 2, "alice"))
    write_l1(server, keys("x", 5, "unlisted"))
    ok(put(url, "alice", {"limit_gb": 10.0}))
    ok(put(url, "bob", {"limit_gb": 4.0}))
    ok(put(url, "zero", {"limit_gb": 0}))  # a limit of 0 stays listed
    assert ok(get(url)) == {"users": {
        "alice": {"limit_gb": 10.0, "current_usage_gb": 2 * L1_OBJ / GIB},
        "bob": {"limit_gb": 4.0, "current_usage_gb": 0.0},
        "zero": {"limit_gb": 0.0, "current_usage_gb": 0.0},
    }}
    assert list(ok(get(url))["users"]["alice"]) == ["limit_gb", "current_usage_gb"]


# -- salts in URLs ------------------------------------------------------------------------------------

ESCAPED_SALTS = ["a b", "café", "日本", "€", "%", "%41", "?", "#", "+", "&x=1", ";v=2", ".", "..", "...",
                 "_default ", "_DEFAULT", "default", " ", "\t", "\n", "'\"<>", "emoji-\U0001F600", "s" * 128]


def test_url_escaped_salts_round_trip(start: Start) -> None:
    server, url = start()
    for index, salt in enumerate(ESCAPED_SALTS):
        body = ok(put(url, path_of(salt), {"limit_gb": index + 1}))
        assert body["cache_salt"] == salt, (salt, body)
    assert table(server) == {salt: (i + 1) * GIB for i, salt in enumerate(ESCAPED_SALTS)}
    assert set(ok(get(url))["users"]) == set(ESCAPED_SALTS)
    for index, salt in enumerate(ESCAPED_SALTS):
        assert ok(get(url, path_of(salt))) == {"cache_salt": salt, "limit_gb": index + 1.0,
                                               "current_usage_gb": 0.0, "exists": True}
    # Unescaped forms a browser would send reach the same salt.
    assert ok(get(url, "caf%c3%a9"))["limit_gb"] == 2.0
    assert ok(get(url, "%25"))["cache_salt"] == "%"
    for salt in ESCAPED_SALTS:
        assert ok(delete(url, path_of(salt)))["status"] == "removed"
    assert table(server) == {}


def test_a_slash_in_the_salt_never_lands_on_another_salt(start: Start) -> None:
    """The router matches a normalised path (``%2F`` decoded, a trailing or doubled ``/`` dropped);
    the routes read the raw segment, so a write meant for ``a/`` is refused instead of changing ``a``."""
    server, url = start()
    ok(put(url, "a", {"limit_gb": 1}))
    for path, salt in (("a%2F", "a/"), ("a%2f", "a/"), ("a/", "a/"), ("%2Fa", "/a"), ("a%2F%2F", "a//")):
        assert "must not contain" in error_of(put(url, path, {"limit_gb": 9}), 400)
        assert ok(get(url, path)) == {"cache_salt": salt, "limit_gb": 0.0, "current_usage_gb": 0.0, "exists": False}
        assert ok(delete(url, path)) == {"cache_salt": salt, "status": "not_found"}
    for path in ("a%2Fb", "a/b"):  # two segments: no such route
        for resp in (put(url, path, {"limit_gb": 9}), get(url, path), delete(url, path)):
            assert resp.status_code == 404
    for path in ("%2F", "%2F%2F"):  # normalised to /quota: the list route
        assert put(url, path, {"limit_gb": 9}).status_code == 405
        assert delete(url, path).status_code == 405
        assert ok(get(url, path)) == {"users": {"a": {"limit_gb": 1.0, "current_usage_gb": 0.0}}}
    assert table(server) == {"a": GIB}


def test_very_long_salts(start: Start) -> None:
    """128 characters (the key limit) is the longest PUT takes; reads take any length the HTTP server
    accepts; a request line past uvicorn's limit is its own 400, never a 5xx."""
    server, url = start()
    for n in (128, 129, 10_000, 60_000):
        salt = "L" * n
        if n <= 128:
            assert ok(put(url, salt, {"limit_gb": 1}))["cache_salt"] == salt
        else:
            assert "at most 128 characters" in error_of(put(url, salt, {"limit_gb": 1}), 400)
        info = ok(get(url, salt))
        assert info["cache_salt"] == salt and info["exists"] is (n <= 128)
    assert table(server) == {"L" * 128: GIB}

    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /quota/" + b"L" * 200_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = b""
        while len(reply) < 64 and (chunk := sock.recv(4096)):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 4"), reply[:80]
    assert ok(get(url, "L" * 128))["exists"] is True  # the server is fine afterwards


# -- usage: real objects in L1 and in L2 adapters --------------------------------------------------


def test_usage_counts_l1_and_a_memory_l2_adapter(start: Start) -> None:
    server, url = start(l2=[{"type": "memory"}], plugins=[("memory-l2", MemoryPlugin())])
    adapter = server.storage.l2_adapters[0]
    ok(put(url, "alice", {"limit_gb": 1}))
    ok(put(url, "bob", {"limit_gb": 1}))

    # alice: written to L1; the write-behind copies every object to the L2 adapter.
    write_l1(server, keys("a", 3, "alice"))
    wait_for(lambda: adapter.usage_by_salt().get("alice") == 3 * OBJ, "alice's objects in L2")
    assert sum(len(v) for k, v in adapter.objects.items() if k.cache_salt == "alice") == 3 * OBJ
    assert usage_gb(url, "alice") == 3 * L1_OBJ / GIB

    # bob: only in L2 (stored into the adapter directly, as a recovery or another writer would).
    bob = keys("b", 4, "bob")
    assert adapter.store(bob, [bytes(OBJ)] * 4).result(TIMEOUT) == [True] * 4
    assert usage_gb(url, "bob") == 4 * OBJ / GIB

    listed = ok(get(url))["users"]
    assert listed == {"alice": {"limit_gb": 1.0, "current_usage_gb": 3 * L1_OBJ / GIB},
                      "bob": {"limit_gb": 1.0, "current_usage_gb": 4 * OBJ / GIB}}

    # Deleting objects shows at once: from L1 for alice, from L2 for bob.
    assert server.storage.l1.delete(keys("a", 1, "alice")) == [L1Result.SUCCESS]
    assert adapter.delete(bob[:3]).result(TIMEOUT) == [True] * 3
    # The usage compared with the limit is the largest tier's (L2 now), with the breakdown beside it.
    assert usage_gb(url, "alice") == 3 * OBJ / GIB > 2 * L1_OBJ / GIB
    assert get(url, "alice").json()["usage_by_tier_gb"] == {"l1": 2 * L1_OBJ / GIB, "l2:0": 3 * OBJ / GIB}
    assert get(url).json()["users"]["bob"]["usage_by_tier_gb"] == {"l1": 0.0, "l2:0": OBJ / GIB}
    assert usage_gb(url, "bob") == OBJ / GIB


def _fs_bytes_by_salt(root: Path) -> dict[str, int]:
    """Bytes of the FS adapter's object files per salt, read from the directory itself."""
    out: dict[str, int] = {}
    for name in os.listdir(root):
        if name.endswith(".data") and (root / name).is_file():
            parts = name[: -len(".data")].split("@")
            salt = parts[4] if len(parts) == 5 else ""
            out[salt] = out.get(salt, 0) + (root / name).stat().st_size
    return out


def test_usage_counts_the_fs_adapter_and_survives_a_restart(start: Start, tmp_path: Path) -> None:
    l2 = [{"type": "fs", "base_path": str(tmp_path)}]
    server, url = start(l2=l2, plugins=[("fs", fs_plugin)])
    ok(put(url, "carol", {"limit_gb": 1}))
    ok(put(url, "_default", {"limit_gb": 1}))
    write_l1(server, keys("c", 3, "carol"))
    write_l1(server, keys("d", 2, ""))
    wait_for(lambda: _fs_bytes_by_salt(tmp_path) == {"carol": 3 * OBJ, "": 2 * OBJ}, "objects written to the FS")
    wait_for(lambda: server.storage.l2_adapters[0].usage_by_salt() == {"carol": 3 * OBJ, "": 2 * OBJ},
             "the FS adapter's accounting")
    assert usage_gb(url, "carol") == 3 * L1_OBJ / GIB
    assert usage_gb(url, "_default") == 2 * L1_OBJ / GIB
    server.stop()
    assert error_of(get(url, "carol"), 503) == "engine not initialized"

    # A new server on the same directory: L1 is empty, the FS adapter recovers the files.
    server2, url2 = start(l2=l2, plugins=[("fs", fs_plugin)])
    assert ok(get(url2, "carol")) == {"cache_salt": "carol", "limit_gb": 0.0,  # quotas are not persisted
                                      "current_usage_gb": 3 * OBJ / GIB, "exists": False}
    assert usage_gb(url2, "_default") == 2 * OBJ / GIB == _fs_bytes_by_salt(tmp_path)[""] / GIB


# -- enforcement: the quota set over HTTP is the one eviction uses -------------------------------------


def test_quota_set_over_http_is_what_isolated_lru_enforces_in_l1(start: Start) -> None:
    server, url = start(policy="IsolatedLRU", ratio=0.5)
    sm = server.storage
    assert sm.l1_eviction.policy.name == "IsolatedLRU"
    assert sm.l1_eviction.quotas is sm.quotas  # the manager the routes write is the one eviction reads

    ok(put(url, "alice", {"limit_gb": 6 * L1_OBJ / GIB}))  # room for 6 of L1's 8192-byte objects
    ok(put(url, "bob", {"limit_gb": 2 * L1_OBJ / GIB}))
    assert sm.l1_eviction.quotas.get_limit_bytes("alice") == 6 * L1_OBJ
    assert sm.l1_eviction.quotas.get_limit_bytes("bob") == 2 * L1_OBJ

    alice, bob, eve = keys("a", 4, "alice"), keys("b", 4, "bob"), keys("e", 3, "eve")
    write_l1(server, alice)  # 4 objects: under 0.8 x 6, never evicted
    write_l1(server, bob)  # 4 objects over a 2-object quota: evicted down to under 0.8 x the limit
    write_l1(server, eve)  # no quota: allowlist, everything goes
    wait_for(lambda: usage_gb(url, "eve") == 0.0, "eve (no quota) evicted")
    wait_for(lambda: usage_gb(url, "bob") == L1_OBJ / GIB, "bob evicted to one object")
    assert usage_gb(url, "alice") == 4 * L1_OBJ / GIB
    assert all(k in sm.l1 for k in alice)
    assert [k in sm.l1 for k in bob] == [True, False, False, False]  # the tail of the request goes first

    # Raising bob's quota over HTTP lets new objects stay; deleting alice's quota evicts her data.
    ok(put(url, "bob", {"limit_gb": 1.0}))
    write_l1(server, keys("b2", 3, "bob"))
    ok(delete(url, "alice"))
    wait_for(lambda: usage_gb(url, "alice") == 0.0, "alice evicted once her quota is gone")
    assert usage_gb(url, "bob") == 4 * L1_OBJ / GIB

    # A quota of 0 evicts like no quota, but stays listed.
    ok(put(url, "zed", {"limit_gb": 0}))
    write_l1(server, keys("z", 2, "zed"))
    wait_for(lambda: usage_gb(url, "zed") == 0.0, "zed (limit 0) evicted")
    assert ok(get(url))["users"]["zed"] == {"limit_gb": 0.0, "current_usage_gb": 0.0}
    assert ok(get(url, "zed"))["exists"] is True


def test_quota_set_over_http_is_what_isolated_lru_enforces_in_l2(start: Start) -> None:
    l2 = [{"type": "memory", "eviction": {"eviction_policy": "IsolatedLRU", "eviction_ratio": 0.5}}]
    server, url = start(l2=l2, plugins=[("memory-l2", MemoryPlugin())])  # L1 stays LRU: it keeps everything
    sm = server.storage
    adapter = sm.l2_adapters[0]
    assert [c.quotas for c in sm.l2_eviction] == [sm.quotas]

    ok(put(url, "alice", {"limit_gb": 1}))
    write_l1(server, keys("a", 3, "alice"))
    write_l1(server, keys("e", 3, "eve"))
    wait_for(lambda: adapter.usage_by_salt() == {"alice": 3 * OBJ}, "eve evicted from L2, alice kept")
    assert usage_gb(url, "eve") == 3 * L1_OBJ / GIB  # still in L1
    assert usage_gb(url, "alice") == 3 * L1_OBJ / GIB

    ok(delete(url, "alice"))
    wait_for(lambda: adapter.usage_by_salt() == {}, "alice evicted from L2 once her quota is gone")
    assert usage_gb(url, "alice") == 3 * L1_OBJ / GIB


# -- 503 before the engine is ready, 401 without the admin token --------------------------------------


def _assert_all_unavailable(url: str) -> None:
    responses = [
        put(url, "alice", {"limit_gb": 1}),
        put(url, "alice", raw=b"not json"),  # the engine is checked before the body
        put(url, "a@b", {"limit_gb": -1}),
        get(url, "alice"),
        get(url, "_default"),
        delete(url, "alice"),
        get(url),
    ]
    for resp in responses:
        assert resp.status_code == 503, (resp.request.method, resp.request.url)
        assert resp.headers["content-type"] == JSON
        assert resp.json() == UNAVAILABLE


def test_routes_answer_503_before_start(start: Start) -> None:
    _server, url = start(run=False)
    _assert_all_unavailable(url)


def test_routes_answer_503_after_stop(start: Start) -> None:
    server, url = start()
    ok(put(url, "alice", {"limit_gb": 1}))
    server.stop()
    _assert_all_unavailable(url)


def test_put_and_delete_need_the_admin_token_reads_do_not(start: Start) -> None:
    server, url = start(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        resp = put(url, "alice", {"limit_gb": 1}, headers={"Content-Type": JSON, **headers})
        assert error_of(resp, 401) == "admin token required"
        assert resp.headers["www-authenticate"].startswith("Bearer")
    assert table(server) == {}
    assert ok(put(url, "alice", {"limit_gb": 1}, headers={"Content-Type": JSON, **auth}))["status"] == "ok"
    assert error_of(delete(url, "alice"), 401) == "admin token required"
    assert table(server) == {"alice": GIB}
    assert ok(get(url, "alice"))["exists"] is True  # reads stay open
    # The table names every tenant's salt: with a token set, only the admin lists it (issue 13).
    assert error_of(get(url), 401) == "admin token required"
    assert ok(get(url, headers=auth))["users"] == {"alice": {"limit_gb": 1.0, "current_usage_gb": 0.0}}
    assert ok(delete(url, "alice", headers=auth))["status"] == "removed"
    assert table(server) == {}


# -- concurrency ------------------------------------------------------------------------------------------


def test_concurrent_puts_land_whole(start: Start) -> None:
    server, url = start()
    threads, rounds = 8, 20
    stop_reading = threading.Event()
    bad_reads: list[str] = []

    def writer(t: int) -> list[float]:
        sent = []
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            for r in range(rounds):
                value = t * 1000 + r + 0.5
                for salt in (f"own{t}", "shared"):
                    resp = http.put(f"/quota/{salt}", json={"limit_gb": value})
                    assert resp.status_code == 200 and resp.json()["limit_gb"] == value
                sent.append(value)
                if r % 5 == 4:
                    assert http.delete(f"/quota/tmp{t}").status_code == 200
                    assert http.put(f"/quota/tmp{t}", json={"limit_gb": r}).status_code == 200
        return sent

    def reader() -> None:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            for _ in range(2000):
                if stop_reading.is_set():
                    return
                resp = http.get("/quota")
                users = resp.json().get("users") if resp.status_code == 200 else None
                if not isinstance(users, dict) or any(set(v) != {"limit_gb", "current_usage_gb", "usage_by_tier_gb"}
                                                      for v in users.values()):
                    bad_reads.append(resp.text)

    read_thread = threading.Thread(target=reader)
    read_thread.start()
    try:
        with ThreadPoolExecutor(threads) as pool:
            sent = list(pool.map(writer, range(threads)))
    finally:
        stop_reading.set()
        read_thread.join(TIMEOUT)
    assert not bad_reads
    final = table(server)
    assert {f"own{t}": final[f"own{t}"] for t in range(threads)} == {
        f"own{t}": gib_to_bytes(sent[t][-1]) for t in range(threads)}  # each writer's last value
    assert final["shared"] in {gib_to_bytes(v) for values in sent for v in values}
    assert {s: final[s] for s in final if s.startswith("tmp")} == {
        f"tmp{t}": (rounds - 1) * GIB for t in range(threads)}
    assert len(final) == 2 * threads + 1
    assert ok(get(url, "shared"))["limit_gb"] == final["shared"] / GIB


def test_quota_reads_answer_while_a_store_heavy_workload_runs(start: Start) -> None:
    """The reads take the tiers' locks only to copy a dict: they keep answering, and the writer keeps
    writing, while both run."""
    server, url = start()
    ok(put(url, "busy", {"limit_gb": 1}))
    written = [0]
    done = threading.Event()

    def workload() -> None:
        deadline = time.monotonic() + 60
        i = 0
        while not done.is_set() and time.monotonic() < deadline:
            ks = keys(f"w{i}-", 16, "busy")
            write_l1(server, ks, 4096)
            server.storage.l1.delete(ks)
            written[0] += 16
            i += 1

    thread = threading.Thread(target=workload)
    thread.start()
    try:
        wait_for(lambda: written[0] > 0, "the workload started")
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            for _ in range(40):
                before = written[0]
                assert http.get("/quota").status_code == 200
                assert http.get("/quota/busy").json()["exists"] is True
                wait_for(lambda before=before: written[0] > before, "the workload progressing beside the reads")
    finally:
        done.set()
        thread.join(TIMEOUT)
    assert not thread.is_alive()


# -- fuzzing over real HTTP: no 5xx, and a refused request changes nothing --------------------------------

_text = st.characters(exclude_categories=("Cs",))  # lone surrogates cannot be UTF-8 encoded
_salts = st.one_of(
    st.just("_default"),
    st.text(_text, min_size=1, max_size=16),
    st.text(alphabet="ab./%@\\ _-?#\x00", min_size=1, max_size=6),
    st.text(alphabet="xy", min_size=120, max_size=140),
)
_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(_text, max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(_text, max_size=8), inner,
                                                                          max_size=3)),
    max_leaves=6,
)
_limits = st.one_of(st.floats(), st.integers(-(2**70), 2**1100), st.booleans(), st.none(),
                    st.text(_text, max_size=6), st.sampled_from(["10", "1e3", "nan", "inf"]), _json)
_valid_limits = st.one_of(st.floats(min_value=0, max_value=1e12), st.integers(0, 10**6))
_bodies = st.one_of(
    st.binary(max_size=40),
    _json.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"limit_gb": _limits}, optional={"x": _json}).map(lambda v: json.dumps(v).encode()),
)
_content_types = st.sampled_from([JSON, "text/plain", "application/x-www-form-urlencoded", ""])


def _salt_is_storable(salt: str) -> bool:
    return len(salt) <= 128 and not any(c in salt for c in "@/\\\x00")


def _expected_salt(path_salt: str) -> str:
    return "" if path_salt == "_default" else path_salt


def _fuzz_settings(n: int) -> Any:
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _check_put(http: httpx.Client, server: Any, salt: str, raw: bytes, content_type: str,
               seen: set[tuple[str, int]]) -> httpx.Response:
    before = table(server)
    headers = {"Content-Type": content_type} if content_type else {}
    resp = http.put(f"/quota/{path_of(salt)}", content=raw, headers=headers)
    seen.add(("PUT", resp.status_code))
    assert resp.status_code < 500, resp.text
    assert resp.headers["content-type"] == JSON
    after = table(server)
    if resp.status_code == 200:
        limit = json.loads(raw)["limit_gb"]
        target = _expected_salt(salt)
        # Accepted only with what the seed allows: a finite, non-negative JSON number, for a storable salt.
        assert type(limit) in (int, float) and math.isfinite(limit) and limit >= 0, limit
        assert _salt_is_storable(target), salt
        assert resp.json() == {"cache_salt": salt, "limit_gb": float(limit) + 0.0, "status": "ok"}
        assert after == {**before, target: gib_to_bytes(float(limit))}
    else:
        assert after == before  # refused: the table is exactly as it was
        if "/" in salt and resp.status_code in (404, 405):
            pass  # the router's own answer: no route for that normalised path (or only the list's GET)
        else:
            assert resp.status_code == 400
            assert list(resp.json()) == ["error"]
    return resp


def test_fuzz_put_bodies_and_salts(start: Start) -> None:
    server, url = start()
    seen: set[tuple[str, int]] = set()
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:

        @_fuzz_settings(80)
        @given(salt=_salts, raw=_bodies, content_type=_content_types)
        @example(salt="ok", raw=b'{"limit_gb": 1.5}', content_type=JSON)
        @example(salt="ok", raw=b'{"limit_gb": NaN}', content_type=JSON)
        @example(salt="a/b", raw=b'{"limit_gb": 1}', content_type=JSON)
        @example(salt="a/", raw=b'{"limit_gb": 1}', content_type=JSON)
        @example(salt="ok", raw=b'{"limit_gb": true}', content_type=JSON)
        def run(salt: str, raw: bytes, content_type: str) -> None:
            _check_put(http, server, salt, raw, content_type, seen)

        run()

        # Well-formed bodies for storable salts are always accepted.
        @_fuzz_settings(40)
        @given(salt=_salts.filter(_salt_is_storable), limit=_valid_limits, extra=st.none() | _json)
        def run_valid(salt: str, limit: float, extra: Any) -> None:
            body = {"limit_gb": limit} if extra is None else {"extra": extra, "limit_gb": limit}
            resp = _check_put(http, server, salt, json.dumps(body).encode(), JSON, seen)
            assert resp.status_code == 200, resp.text

        run_valid()
    assert {("PUT", 200), ("PUT", 400), ("PUT", 404)} <= seen


_ops = st.lists(st.tuples(st.sampled_from(["PUT", "GET", "DELETE", "LIST"]), _salts,
                          st.one_of(_valid_limits, _limits)), min_size=1, max_size=6)


def test_fuzz_every_route_against_a_model(start: Start) -> None:
    """Random sequences of PUT / GET / DELETE / LIST: each answer and the engine's table agree with a
    plain dict model, and nothing answers 5xx."""
    server, url = start()
    write_l1(server, keys("u", 2, "ok"))  # a salt with usage, so reads report non-zero numbers too
    seen: set[tuple[str, int]] = set()
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:

        @_fuzz_settings(60)
        @given(ops=_ops)
        @example(ops=[("PUT", "ok", 1), ("GET", "ok", 0), ("DELETE", "ok", 0), ("DELETE", "ok", 0),
                      ("LIST", "", 0), ("GET", "a/b", 0), ("DELETE", "a/b", 0), ("PUT", "ok", -1)])
        def run(ops: list[tuple[str, str, Any]]) -> None:
            model = table(server)
            for method, salt, limit in ops:
                target, path = _expected_salt(salt), f"/quota/{path_of(salt)}"
                if method == "PUT":
                    raw = json.dumps({"limit_gb": limit}).encode()
                    resp = _check_put(http, server, salt, raw, JSON, seen)
                    if resp.status_code == 200:
                        model[target] = gib_to_bytes(float(limit))
                elif method == "LIST":
                    resp = http.get("/quota")
                    seen.add((method, resp.status_code))
                    usage = server.storage.quotas.usage_by_salt()
                    assert resp.status_code == 200 and resp.headers["content-type"] == JSON
                    tiers = server.storage.quotas.usage_by_tier()
                    assert resp.json() == {"users": {
                        ("_default" if s == "" else s): {"limit_gb": b / GIB, "current_usage_gb": usage.get(s, 0) / GIB,
                                                         "usage_by_tier_gb": {t: u.get(s, 0) / GIB
                                                                              for t, u in tiers.items()}}
                        for s, b in model.items()}}
                else:
                    resp = http.request(method, path)
                    seen.add((method, resp.status_code))
                    assert resp.headers["content-type"] == JSON
                    if "/" in salt and (resp.status_code in (404, 405) or "users" in resp.json()):
                        pass  # the router sent it elsewhere: no route, or the list route
                    elif method == "GET":
                        assert resp.status_code == 200, resp.text  # never 404 for a salt
                        usage = server.storage.quotas.usage_bytes(target)
                        tiers = server.storage.quotas.usage_by_tier()
                        assert resp.json() == {"cache_salt": salt, "limit_gb": model.get(target, 0) / GIB,
                                               "current_usage_gb": usage / GIB, "exists": target in model,
                                               "usage_by_tier_gb": {t: u.get(target, 0) / GIB
                                                                    for t, u in tiers.items()}}
                    else:
                        assert resp.status_code == 200, resp.text
                        status = "removed" if model.pop(target, None) is not None else "not_found"
                        assert resp.json() == {"cache_salt": salt, "status": status}
                assert table(server) == model

        run()
    assert {("PUT", 200), ("PUT", 400), ("GET", 200), ("GET", 404), ("DELETE", 200), ("DELETE", 404),
            ("LIST", 200)} <= seen
