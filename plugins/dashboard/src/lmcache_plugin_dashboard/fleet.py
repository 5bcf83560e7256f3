"""The fleet view: this node's snapshot beside its ``--dashboard-peer`` nodes' (``GET /dashboard/fleet``).

Peers are fetched on the operator's behalf, all at once, each bounded by the peer timeout
(``--dashboard-peer-timeout-seconds``, default 1 s, for connecting and for the whole answer);
a peer that refuses, hangs or answers garbage is one ``down`` row, and the route answers after
at most one timeout whatever the peers do. The page polls the fleet apart from its own
``/dashboard/data``, so a slow fleet never delays the node's own numbers. With
``--http-admin-token`` set, peers are asked with ``Authorization: Bearer <token>`` (a fleet
shares one token). A peer answering 503 (engine not ready) is ``starting``; an answer is read up to
:data:`MAX_BODY_BYTES` (1 MiB), a longer one is ``down``.

Rows carry what the table shows (health, usage, hit rate, traffic), not the peers' whole
snapshots; totals add up the nodes that answered.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec

DEFAULT_TIMEOUT_S = 1.0
MAX_BODY_BYTES = 1 << 20


class _Sums(msgspec.Struct, kw_only=True):
    """What a row and the totals both show (a row: of one node; the totals: of the nodes that are up)."""

    l1_used_bytes: int
    l1_capacity_bytes: int
    l2_used_bytes: int
    requested_tokens_total: float
    hit_tokens_total: float
    hit_rate: float | None
    store_bytes_total: float
    retrieve_bytes_total: float
    workers: int
    active_sessions: int


class FleetNode(_Sums, kw_only=True):
    url: str
    """The peer's base URL; ``""`` for the node answering."""
    name: str | None
    state: str
    """``up``, ``starting`` (503: engine not ready), ``down`` (no answer, a timeout, an unexpected answer)."""
    error: str | None
    latency_ms: float | None
    healthy: bool
    version: str | None
    uptime_seconds: float | None


class FleetTotals(_Sums, kw_only=True):
    nodes: int
    up: int
    down: int


class FleetData(msgspec.Struct):
    """``GET /dashboard/fleet``: one row per node (this one first) and the fleet's totals."""

    nodes: list[FleetNode]
    totals: FleetTotals


_PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3})"
_HEXTET = r"[0-9A-Fa-f]{1,4}"
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"({_OCTET}\.){{3}}{_OCTET}"


def _ipv6() -> str:
    """An IPv6 address as ``ipaddress`` (and so ``urlsplit``) reads it: eight groups, or fewer around
    one ``::`` standing for at least one; an IPv4 address may stand for the last two groups."""
    forms = [rf"({_HEXTET}:){{6}}({_HEXTET}:{_HEXTET}|{_IPV4})"]
    for left in range(8):  # groups before the "::"
        tails = [rf"{_HEXTET}(:{_HEXTET}){{0,{6 - left}}}"] if left < 7 else []
        if left <= 5:
            tails.append(rf"({_HEXTET}:){{0,{5 - left}}}{_IPV4}")
        head = rf"({_HEXTET}:){{{left}}}:" if left else "::"
        forms.append(head + (f"({'|'.join(tails)})?" if tails else ""))
    return "|".join(f"({form})" for form in forms)


PEER_URL = msgspec.Meta(
    pattern=rf"^https?://(\[({_ipv6()})\]|[^/?#@\s:\[\]]+)(:{_PORT})?(/[^?#\s]*)?$",
    description="an http(s):// base URL with a host, an optional port (1-65535) and path; "
                "no query, fragment or credentials")
"""What ``--dashboard-peer`` accepts (checked when the options are parsed: a usage error otherwise)."""


def normalized_peer_url(url: str) -> str:
    """A peer URL as the fleet view names it: without a trailing ``/``."""
    return url.rstrip("/")


def _down(url: str, error: str | None, latency_ms: float | None = None) -> FleetNode:
    return FleetNode(url=url, name=None, state="down", error=error, latency_ms=latency_ms, healthy=False,
                     version=None, uptime_seconds=None, l1_used_bytes=0, l1_capacity_bytes=0, l2_used_bytes=0,
                     requested_tokens_total=0.0, hit_tokens_total=0.0, hit_rate=None, store_bytes_total=0.0,
                     retrieve_bytes_total=0.0, workers=0, active_sessions=0)


def _number(doc: Any, *path: str) -> float:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return float(doc) if isinstance(doc, (int, float)) and not isinstance(doc, bool) else 0.0


def node_from_data(url: str, doc: Any, latency_ms: float | None) -> FleetNode:
    """A row from a ``/dashboard/data`` document (ours as builtins, or a peer's JSON)."""
    if not isinstance(doc, dict):
        return _down(url, "unexpected answer: not a JSON object", latency_ms)
    hits = doc.get("lookups", {}).get("hit_tokens_total") if isinstance(doc.get("lookups"), dict) else None
    hit = sum(float(v) for v in hits.values() if isinstance(v, (int, float))) if isinstance(hits, dict) else 0.0
    requested = _number(doc, "lookups", "requested_tokens_total")
    adapters = doc.get("l2", {}).get("adapters") if isinstance(doc.get("l2"), dict) else None
    l2_used = sum(_number(a, "used_bytes") for a in adapters) if isinstance(adapters, list) else 0.0
    workers = doc.get("workers") if isinstance(doc.get("workers"), dict) else {}
    name = doc.get("node")
    return FleetNode(
        url=url, name=name if isinstance(name, str) else None, state="up", error=None, latency_ms=latency_ms,
        healthy=doc.get("healthy") is True, version=doc.get("version") if isinstance(doc.get("version"), str) else None,
        uptime_seconds=_number(doc, "uptime_seconds"),
        l1_used_bytes=int(_number(doc, "l1", "used_bytes")), l1_capacity_bytes=int(_number(doc, "l1", "capacity_bytes")),
        l2_used_bytes=int(l2_used), requested_tokens_total=requested, hit_tokens_total=hit,
        hit_rate=hit / requested if requested > 0 else None,
        store_bytes_total=_number(doc, "traffic", "store_bytes_total"),
        retrieve_bytes_total=_number(doc, "traffic", "retrieve_bytes_total"),
        workers=int(_number(workers, "registered") + _number(workers, "engine_driven")),
        active_sessions=int(_number(workers, "active_sessions")))


def starting_node(url: str, name: str | None, latency_ms: float | None) -> FleetNode:
    node = _down(url, None, latency_ms)
    node.state, node.name = "starting", name
    return node


async def _get_bounded(client: httpx.AsyncClient, url: str) -> tuple[int, bytes | None]:
    """``(status, body)``; the body is ``None`` past :data:`MAX_BODY_BYTES` (read no further)."""
    async with client.stream("GET", url) as resp:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return resp.status_code, None
            chunks.append(chunk)
        return resp.status_code, b"".join(chunks)


async def fetch_peer(client: httpx.AsyncClient, url: str, timeout_s: float) -> FleetNode:
    """One peer's row; never raises and never takes (much) longer than ``timeout_s``."""
    start = time.perf_counter()

    def elapsed() -> float:
        return round((time.perf_counter() - start) * 1000.0, 3)

    try:
        status, body = await asyncio.wait_for(_get_bounded(client, f"{url}/dashboard/data"), timeout_s)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        return _down(url, f"no answer within {timeout_s:g} s", elapsed())
    except httpx.HTTPError as exc:
        return _down(url, f"unreachable: {type(exc).__name__}", elapsed())
    if status == 503:
        return starting_node(url, None, elapsed())
    if status != 200:
        return _down(url, f"answered HTTP {status}", elapsed())
    if body is None:
        return _down(url, f"unexpected answer: larger than {MAX_BODY_BYTES} bytes", elapsed())
    try:
        doc = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return _down(url, "unexpected answer: not JSON", elapsed())
    return node_from_data(url, doc, elapsed())


async def fetch_peers(peers: list[str], timeout_s: float, token: str | None) -> list[FleetNode]:
    """Every peer's row, fetched concurrently."""
    if not peers:
        return []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = httpx.Timeout(timeout_s)
    async with httpx.AsyncClient(timeout=timeout, headers=headers, follow_redirects=False, trust_env=False) as client:
        return list(await asyncio.gather(*(fetch_peer(client, url, timeout_s) for url in peers)))


def totals(nodes: list[FleetNode]) -> FleetTotals:
    up = [n for n in nodes if n.state == "up"]
    requested = sum(n.requested_tokens_total for n in up)
    hit = sum(n.hit_tokens_total for n in up)
    return FleetTotals(
        nodes=len(nodes), up=len(up), down=sum(1 for n in nodes if n.state == "down"),
        l1_used_bytes=sum(n.l1_used_bytes for n in up), l1_capacity_bytes=sum(n.l1_capacity_bytes for n in up),
        l2_used_bytes=sum(n.l2_used_bytes for n in up), requested_tokens_total=requested, hit_tokens_total=hit,
        hit_rate=hit / requested if requested > 0 else None,
        store_bytes_total=sum(n.store_bytes_total for n in up),
        retrieve_bytes_total=sum(n.retrieve_bytes_total for n in up),
        workers=sum(n.workers for n in up), active_sessions=sum(n.active_sessions for n in up))
