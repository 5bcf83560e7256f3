"""Every route's status codes and bodies, against a recorded snapshot (``tests/data/route_snapshot.json``).

Guards refactors of the route plugins (issue 12: one error mechanism, typed handlers,
configs declared once): each route must answer byte-identically before and after.

The requests are derived from the served OpenAPI document of a server with the in-tree
route plugins (health, inspect, cache, l2, quota, reconfigure, metrics, diagnostics) and a
``memory`` L2 adapter, plus a few valid requests written out below:

* every operation once plain (path parameters ``x``), once per query parameter with the
  values ``""``, ``x`` and ``1``, and (where it takes a body) with each of a few malformed
  and wrong-shape bodies;
* every operation on a server that was never started (the engine's 503 envelopes);
* every operation on a server with ``--http-admin-token`` and no token (the 401s).

Each answer is recorded as ``[status, content-type, body]``. The body is the exact text,
except for the answers listed in :data:`VOLATILE` (ports, ids, clocks, memory figures
differ per run): for those it is the *shape* of the JSON (keys kept, leaves replaced by
their JSON type).

A deliberate change of an answer re-records the snapshot:
``LMCACHE_UPDATE_ROUTE_SNAPSHOT=1 .venv/bin/python -m pytest tests/test_route_snapshot.py``,
and the diff of the JSON file shows what changed.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lmcache_core.config import HTTPConfig, MPConfig, StorageManagerConfig
from lmcache_core.testing import free_port, make_server, serving
from support import MemoryPlugin

SNAPSHOT = Path(__file__).parent / "data" / "route_snapshot.json"
UPDATE = os.environ.get("LMCACHE_UPDATE_ROUTE_SNAPSHOT") == "1"
TOKEN = "snapshot-token"

ROUTE_PLUGINS = ("health", "inspect", "cache", "l2", "quota", "reconfigure", "metrics", "diagnostics")

BODIES: list[tuple[str, bytes | None]] = [
    ("none", None),
    ("malformed", b"{"),
    ("array", b"[]"),
    ("empty-object", b"{}"),
    ("unknown-field", b'{"unknown": 1}'),
    ("not-json", b"hello"),
]

VALID: list[tuple[str, str, bytes | None]] = [
    ("PUT", "/quota/alice", b'{"limit_gb": 1.5}'),
    ("GET", "/quota/alice", None),
    ("GET", "/quota", None),
    ("PUT", "/quota/alice", b'{"limit_gb": "1"}'),
    ("PUT", "/quota/alice", b'{"limit_gb": -1}'),
    ("DELETE", "/quota/alice", None),
    ("DELETE", "/quota/alice", None),
    ("GET", "/quota/_default", None),
    ("GET", "/l2/adapters", None),
    ("GET", "/l2/keys?adapter=0", None),
    ("GET", "/l2/keys?adapter=0&page_size=0", None),
    ("GET", "/l2/keys?adapter=9", None),
    ("DELETE", "/l2?adapter=0", b'{"keys": []}'),
    ("POST", "/l2/prefetch", b'{"keys": []}'),
    ("GET", "/l2/prefetch/nope", None),
    ("GET", "/l2/keys?adapter=memory", None),
    ("GET", "/l2/keys?adapter=memory&page_size=2&model_name=m", None),
    ("DELETE", "/l2?adapter=memory", b'{"keys": []}'),
    ("DELETE", "/l2?adapter=memory", b'{"keys": [{"model_name": "m", "chunk_hash": "zz"}]}'),
    ("POST", "/l2/prefetch", b'{"model_name": "m", "keys": []}'),
    ("POST", "/reconfigure/memory/resize", b'{"size_gb": 1}'),
    ("POST", "/reconfigure/memory/frobnicate", b"{}"),
    ("POST", "/clear-cache", None),
    ("GET", "/kvcache/check?block_ids=1,2&chunk_size=256&instance_id=1", None),
    ("GET", "/kvcache/check?block_ids=zz", None),
    ("POST", "/cache/checksums", b'{"instance_id": 1, "block_ids": [1]}'),
    ("GET", "/reconfigure/backends", None),
    ("GET", "/reconfigure/0/status", None),
    ("GET", "/reconfigure/memory/status", None),
    ("POST", "/reconfigure/0/resize", b'{"size_gb": 1}'),
    ("POST", "/reconfigure/0/frobnicate", b"{}"),
    ("GET", "/loglevel?logger_name=lmcache_snapshot&level=DEBUG", None),
    ("GET", "/loglevel?logger_name=lmcache_snapshot", None),
    ("GET", "/loglevel?logger_name=lmcache_snapshot&level=LOUD", None),
    ("GET", "/periodic-threads?level=nope", None),
    ("GET", "/periodic-threads/nope", None),
    ("GET", "/threads?thread_id=abc", None),
    ("POST", "/run_script", b"print(1)"),
    ("GET", "/healthcheck", None),
    ("GET", "/version", None),
    ("GET", "/lmc_version", None),
    ("GET", "/nope", None),
    ("POST", "/healthcheck", None),
]

VOLATILE_PATHS = {
    "/status", "/conf", "/metrics", "/threads", "/periodic-threads", "/periodic-threads-health", "/env",
    "/commit_id", "/version", "/", "/plugins", "/reconfigure/backends", "/reconfigure/memory/status", "/reconfigure/0/status",
    "/l2/adapters", "/reconfigure/x/status", "/reconfigure/{backend}/status",
}
"""Paths (and templates) whose successful answers carry per-run values; their 2xx bodies are recorded as shapes."""

OPAQUE_PATHS = {"/env", "/threads", "/metrics"}
"""Paths whose successful answers even have per-run keys (variables, threads, series): only their type is recorded."""


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted({json.dumps(_shape(v), sort_keys=True) for v in value})
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return "null"
    return "str"


def _request(base: str, method: str, target: str, body: bytes | None, headers: dict[str, str] | None = None
             ) -> tuple[int, str, bytes]:
    req = urllib.request.Request(base + target, data=body, method=method, headers=dict(headers or {}))
    if body is not None:
        req.add_header("Content-Type", "text/plain" if target == "/run_script" else "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (loopback)
            return resp.status, resp.headers.get("content-type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("content-type", ""), exc.read()


def _record(template: str, target: str, status: int, ctype: str, raw: bytes) -> list[Any]:
    text = raw.decode("utf-8", "replace")
    path = target.split("?", 1)[0]
    lists_loggers = path == "/loglevel" and not re.search(r"logger_name=[^&]", target)  # every logger in the process
    if status < 400 and (template in OPAQUE_PATHS or path in OPAQUE_PATHS or lists_loggers):
        return [status, ctype, {"shape": type(text).__name__ if ctype.startswith("text/") else "json"}]
    if status < 400 and (template in VOLATILE_PATHS or path in VOLATILE_PATHS):
        try:
            return [status, ctype, {"shape": _shape(json.loads(text))}]
        except ValueError:
            return [status, ctype, {"shape": "text"}]
    return [status, ctype, text]


def _operations(base: str) -> list[tuple[str, str, list[str], bool]]:
    with urllib.request.urlopen(base + "/schema/openapi.json", timeout=30) as resp:  # noqa: S310
        doc = json.loads(resp.read())
    ops = []
    for path, methods in sorted(doc["paths"].items()):
        for method, op in sorted(methods.items()):
            query = sorted(p["name"] for p in op.get("parameters", []) if p["in"] == "query")
            ops.append((method.upper(), path, query, "requestBody" in op))
    return ops


def _fill(path: str) -> str:
    out = path
    while "{" in out:
        start = out.index("{")
        out = out[:start] + "x" + out[out.index("}", start) + 1:]
    return out


def _server(factory: Any, *, token: str | None = None, start: bool = True) -> Any:
    plugins = [importlib.import_module(f"lmcache_plugin_{name}.plugin") for name in ROUTE_PLUGINS]
    configs = {
        "mp": MPConfig(host="127.0.0.1", port=free_port(), worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.05, l2_adapter=[{"type": "memory"}]),
    }
    if token is not None:
        configs["http"] = HTTPConfig(http_admin_token=token)
    return factory([*plugins, ("memory-l2", MemoryPlugin())], configs=configs, start=start)


def _answers(base: str, ops: list[tuple[str, str, list[str], bool]], *, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method, template, query, takes_body in ops:
        target = _fill(template)
        cases: list[tuple[str, str, bytes | None]] = [("plain", target, None)]
        if full:
            cases += [(f"{q}={v!r}", f"{target}?{q}={v}", None) for q in query for v in ("", "x", "1")]
            if takes_body:
                cases += [(f"body:{name}", target, body) for name, body in BODIES if body is not None]
        for label, url, body in cases:
            status, ctype, raw = _request(base, method, url, body)
            out[f"{method} {template} {label}"] = _record(template, url, status, ctype, raw)
    return out


def test_every_route_answers_as_recorded(lmcache_server_factory: Any) -> None:
    snapshot: dict[str, Any] = {}
    with serving(_server(lmcache_server_factory)) as base:
        ops = _operations(base)
        snapshot["ready"] = _answers(base, ops, full=True)
        valid = {}
        for i, (method, target, body) in enumerate(VALID):
            status, ctype, raw = _request(base, method, target, body)
            valid[f"{i:02d} {method} {target} {body!r}"] = _record(target, target, status, ctype, raw)
        snapshot["valid"] = valid
    with serving(_server(lmcache_server_factory, start=False)) as base:
        snapshot["not_started"] = _answers(base, ops, full=False)
    with serving(_server(lmcache_server_factory, token=TOKEN)) as base:
        snapshot["no_token"] = _answers(base, ops, full=False)
        status, ctype, raw = _request(base, "POST", "/clear-cache", None, {"Authorization": "Bearer wrong"})
        snapshot["no_token"]["POST /clear-cache wrong-token"] = _record("/clear-cache", "/clear-cache", status, ctype, raw)

    if UPDATE or not SNAPSHOT.exists():
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(json.dumps(snapshot, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
        if not UPDATE:
            pytest.fail(f"no snapshot yet: recorded {SNAPSHOT}; run again to compare")
        return
    recorded = json.loads(SNAPSHOT.read_text())
    changed: dict[str, Any] = {}
    for section in ("ready", "valid", "not_started", "no_token"):
        mine, theirs = snapshot[section], recorded.get(section, {})
        assert sorted(mine) == sorted(theirs), f"{section}: the set of requests changed"
        changed.update({f"{section}: {k}": {"recorded": theirs[k], "now": mine[k]} for k in mine if mine[k] != theirs[k]})
    assert not changed, "answers changed:\n" + json.dumps(changed, indent=1, ensure_ascii=False)
