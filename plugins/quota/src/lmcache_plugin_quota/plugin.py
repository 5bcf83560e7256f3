"""Per-``cache_salt`` quotas: ``PUT/GET/DELETE /quota/{cache_salt}`` and ``GET /quota``.

The routes read and write the engine's one :class:`~lmcache_core.storage.quota.QuotaManager`
(``server.storage.quotas``): the object every eviction controller (L1 and each L2
adapter) asks for a salt's limit when its policy is IsolatedLRU. Usage is the
QuotaManager's sum over its usage providers: L1 and every L2 adapter.

Routes (every 503 is ``{"error": "engine not initialized"}``; other errors are
``{"error": "<message>"}``; every body is ``application/json``):

``PUT /quota/{cache_salt}`` (admin guard)
    Body ``{"limit_gb": <number>}`` in GiB. 200 ``{"cache_salt", "limit_gb", "status": "ok"}``;
    ``limit_gb`` echoes the number sent. 400 for: a body that is not JSON
    (``invalid JSON body``); not an object or no ``limit_gb`` (``body must be {'limit_gb': <float>}``);
    a ``limit_gb`` that is not a JSON number (``limit_gb must be numeric``); NaN or
    ±Infinity, or an integer too large for a double (``limit_gb must be finite``);
    a negative number (``limit_gb must be non-negative``); a number whose byte count
    overflows a double (``limit_gb is too large``); a salt no key can carry
    (``invalid cache_salt: ...``). Stored as ``int(limit_gb * 2**30)`` bytes.
``GET /quota/{cache_salt}``
    200 ``{"cache_salt", "limit_gb", "current_usage_gb", "exists", "usage_by_tier_gb"}``;
    never 404: a salt without a quota answers ``exists: false`` and ``limit_gb: 0.0``.
``DELETE /quota/{cache_salt}`` (admin guard)
    200 ``{"cache_salt", "status": "removed"}``, or ``"not_found"`` when there was none.
``GET /quota``
    200 ``{"users": {salt: {"limit_gb", "current_usage_gb", "usage_by_tier_gb"}}}``, registered salts only
    (admin guard: every tenant's salt is listed, so only the admin sees it when a token is set).

The path sentinel ``_default`` stands for the empty salt, in and out, so a salt
literally named ``_default`` cannot be managed apart from un-salted traffic (as in
LMCache). Limits in responses are the stored bytes over ``2**30`` (PUT echoes
the input instead), so ``PUT 0.1`` reads back as ``0.09999999962747097``.

Decisions where the seed is silent:

* ``limit_gb`` must be a JSON number. LMCache runs ``float()`` over the value, so it
  takes ``"10"``, ``"inf"`` (then refused as not finite) and ``true`` (as 1.0);
  here strings and booleans are ``limit_gb must be numeric``: the contract says a
  float, and ``true`` GiB is a client bug. The JSON literals ``NaN``/``Infinity``
  (which Python's parser, and so LMCache's, accepts) parse and are refused as not finite.
* ``0`` is accepted: it is non-negative. Under IsolatedLRU a limit of 0 evicts the
  salt's data like no quota at all, but the entry stays listed (LMCache's semantics).
* Extra body fields are ignored (as in LMCache), so a newer client's fields do no harm.
* The Content-Type header is not checked (LMCache does not either); the body must be JSON.
* A PUT for a salt that no stored object can carry (more than 128 characters, or
  containing ``@``, ``/``, ``\\`` or NUL, :func:`lmcache_core.keys.validate_cache_salt`)
  is 400: such a quota could never apply and would only grow the table. GET and DELETE
  take any salt (it simply has no quota: ``exists: false`` / ``not_found``), so a
  read never fails on its path. The salt is the raw path segment, percent-decoded
  (:func:`salt_of`), not the router's normalised path: ``PUT /quota/a%2F`` and
  ``PUT /quota/a/`` are refused for the salt ``a/`` rather than changing ``a``. An
  encoded slash inside a segment (``/quota/a%2Fb``) makes two segments for the router,
  so no route matches (Litestar's 404, the one 404 these paths give), and
  ``/quota/`` (or ``/quota/%2F``) is the list route (GET) or a 405.
* PUT checks the salt before the body, so a bad salt with a bad body names the salt.
* URLs are as long as uvicorn accepts (a request line past its limit is its own 400).
* A number so large that ``limit_gb * 2**30`` is not finite (e.g. ``1e300``) is 400;
  LMCache answers 500 there (an ``OverflowError``), and for integers past a double too.

Departures from LMCache:

* ``current_usage_gb`` is the usage compared with the limit: the salt's bytes in
  its largest tier, L1 included (LMCache sums the L2 adapters). Each tier enforces
  the full limit on its own bytes, so a sum could exceed ``limit_gb`` while no tier
  is over it (issue 18). ``usage_by_tier_gb`` is the breakdown, ``{"l1": ...,
  "l2:0": ...}``, one entry per tier (0.0 where the salt holds nothing).
* PUT and DELETE carry the admin-token guard (``--http-admin-token``); reads stay open.

As in LMCache, quotas live in memory only: a restart starts with an empty table.
"""

from __future__ import annotations

import json
import math
import sys
import urllib.parse
from typing import Annotated, Any

import msgspec
from litestar import Request, Router, delete, get, put
from litestar.params import FromPath, PathParameter, RawBody

from lmcache_core.api import (
    CacheServer,
    Engine,
    HTTPError,
    InvalidKeyError,
    QuotaManager,
    RegisterRoutes,
    bytes_to_gib,
    gib_to_bytes,
    hookimpl,
    openapi,
    require_admin,
    validate_cache_salt,
)

DEFAULT_SALT_SENTINEL = "_default"
"""The path segment that stands for the empty ``cache_salt`` (un-salted traffic)."""

ROUTE_PREFIX = b"/quota/"


MAX_LIMIT_GB = sys.float_info.max / 2**30
"""The largest ``limit_gb`` whose byte count is a finite double (dividing by a power of two is exact)."""


class QuotaLimit(msgspec.Struct):
    """Body of ``PUT /quota/{cache_salt}`` (documents what :func:`parse_limit` accepts; other fields are ignored)."""

    limit_gb: Annotated[float, msgspec.Meta(ge=0, le=MAX_LIMIT_GB, description="GiB; a JSON number, not a string")]


SettableSalt = Annotated[str, PathParameter(
    description="`_default` for the empty salt; at most 128 characters, none of `@ / \\` or NUL",
    schema_extra={"pattern": openapi.CACHE_SALT_PATTERN, "minLength": 1})]


class QuotaSet(msgspec.Struct):
    """Response of ``PUT /quota/{cache_salt}``."""

    cache_salt: str
    limit_gb: float
    status: str = "ok"


class QuotaInfo(msgspec.Struct):
    """Response of ``GET /quota/{cache_salt}``."""

    cache_salt: str
    limit_gb: float
    current_usage_gb: float
    exists: bool
    usage_by_tier_gb: dict[str, float] = {}


class QuotaRemoved(msgspec.Struct):
    """Response of ``DELETE /quota/{cache_salt}``: ``status`` is ``removed`` or ``not_found``."""

    cache_salt: str
    status: str


class QuotaUsage(msgspec.Struct):
    """One salt's entry in ``GET /quota``."""

    limit_gb: float
    current_usage_gb: float
    usage_by_tier_gb: dict[str, float] = {}


class QuotaTable(msgspec.Struct):
    """Response of ``GET /quota``: every registered salt (``_default`` for the empty one)."""

    users: dict[str, QuotaUsage]


class QuotaRequestError(HTTPError, ValueError):
    """A client's mistake in a quota request: a 400 whose message is the ``error``."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


def salt_from_path(path_salt: str) -> str:
    """The ``cache_salt`` a path segment names (``_default`` → ``""``)."""
    return "" if path_salt == DEFAULT_SALT_SENTINEL else path_salt


def salt_of(request: Request[Any, Any, Any], path_salt: str) -> str:
    """The ``cache_salt`` the client wrote: its path segment, percent-decoded, nothing else.

    The router matches a normalised path (``%2F`` decoded, empty segments and a trailing
    ``/`` dropped), so ``/quota/a%2F``, ``/quota//a`` and ``/quota/a/`` all reach the route
    with ``a``. Reading the raw segment instead keeps a write meant for ``a/`` (refused: no
    key can carry it) from landing on ``a``.
    """
    raw = request.scope.get("raw_path")
    if isinstance(raw, bytes):
        raw = raw.partition(b"?")[0]
        at = raw.find(ROUTE_PREFIX)
        if at >= 0:
            # As the ASGI server decodes a path: UTF-8, undecodable bytes replaced.
            path_salt = urllib.parse.unquote_to_bytes(raw[at + len(ROUTE_PREFIX):]).decode("utf-8", "replace")
    return salt_from_path(path_salt)


def salt_to_path(cache_salt: str) -> str:
    """How a ``cache_salt`` is written in responses (``""`` → ``_default``)."""
    return DEFAULT_SALT_SENTINEL if cache_salt == "" else cache_salt


def parse_limit(raw: bytes) -> tuple[float, int]:
    """A PUT body → ``(limit_gb as sent, limit in bytes)``; :class:`QuotaRequestError` for anything else."""
    try:
        # The stdlib parser, like LMCache's: NaN / Infinity literals parse, so they are refused
        # below as "not finite" rather than as bad JSON. It raises ValueError for bad UTF-8 and
        # integers past 4300 digits, RecursionError for absurd nesting.
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise QuotaRequestError("invalid JSON body") from None
    if not isinstance(body, dict) or "limit_gb" not in body:
        raise QuotaRequestError("body must be {'limit_gb': <float>}")
    value = body["limit_gb"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise QuotaRequestError("limit_gb must be numeric")
    try:
        limit_gb = float(value)
    except OverflowError:  # an integer beyond the largest double
        raise QuotaRequestError("limit_gb must be finite") from None
    if not math.isfinite(limit_gb):
        raise QuotaRequestError("limit_gb must be finite")
    if limit_gb < 0:
        raise QuotaRequestError("limit_gb must be non-negative")
    try:
        limit_bytes = gib_to_bytes(limit_gb)
    except ValueError:  # finite GiB whose byte count is not (e.g. 1e300)
        raise QuotaRequestError("limit_gb is too large") from None
    return limit_gb + 0.0, limit_bytes  # + 0.0 turns -0.0 into 0.0


def quotas_of(engine: CacheServer) -> QuotaManager:
    """The QuotaManager the eviction controllers read (the engine is ready, so storage exists)."""
    assert engine.storage is not None
    return engine.storage.quotas


@put("/{cache_salt:str}", status_code=200, sync_to_thread=False, guards=[require_admin],
     summary="Create or update a quota",
     description="Body `{\"limit_gb\": <number>}` (GiB; finite, non-negative). `_default` is the empty salt.",
     operation_class=openapi.operation(body=openapi.json_body(QuotaLimit)), responses={
         200: openapi.json(QuotaSet, "the quota is set; `limit_gb` echoes the number sent"),
         400: openapi.error("a salt no key can carry, or a body that is not `{\"limit_gb\": <number>}` with a "
                            "finite, non-negative number")})
def set_quota(engine: Engine, request: Request[Any, Any, Any], body: RawBody,
              cache_salt: FromPath[SettableSalt]) -> QuotaSet:
    """Validate the salt and the body, then set the limit (a dict write under the manager's lock)."""
    salt = salt_of(request, cache_salt)
    try:
        validate_cache_salt(salt)
    except InvalidKeyError as exc:
        raise QuotaRequestError(f"invalid cache_salt: {str(exc).removeprefix('cache_salt ')}") from None
    limit_gb, limit_bytes = parse_limit(body)
    quotas_of(engine).set_quota(salt, limit_bytes)
    return QuotaSet(cache_salt=salt_to_path(salt), limit_gb=limit_gb)


# The reads ask every tier for its usage: in-memory counters, each read under its tier's lock for
# microseconds, never I/O. They run on the event loop: handing them to a worker thread cost 30% of
# the requests/s and put the p99 at ~70 ms under 16 connections (GIL hand-offs between the loop and
# the worker; lmcache-server bench http), for work far shorter than the hand-off itself.
@get("/{cache_salt:str}", sync_to_thread=False, summary="Quota and live usage of one cache_salt")
def get_quota(engine: Engine, request: Request[Any, Any, Any], cache_salt: FromPath[str]) -> QuotaInfo:
    """Never 404: a salt without a quota has ``exists: false`` and ``limit_gb: 0.0``."""
    salt = salt_of(request, cache_salt)
    quotas = quotas_of(engine)
    limit = quotas.get_quota(salt)
    tiers = quotas.usage_by_tier()
    return QuotaInfo(cache_salt=salt_to_path(salt), limit_gb=bytes_to_gib(limit or 0),
                     current_usage_gb=_largest_gib(tiers, salt), exists=limit is not None,
                     usage_by_tier_gb=_tiers_gib(tiers, salt))


@delete("/{cache_salt:str}", status_code=200, sync_to_thread=False, guards=[require_admin],
        summary="Remove a quota")
def delete_quota(engine: Engine, request: Request[Any, Any, Any], cache_salt: FromPath[str]) -> QuotaRemoved:
    """``removed``, or ``not_found`` when the salt had no quota (still 200)."""
    salt = salt_of(request, cache_salt)
    removed = quotas_of(engine).delete_quota(salt)
    return QuotaRemoved(cache_salt=salt_to_path(salt), status="removed" if removed else "not_found")


# Admin-guarded: the table names every tenant's cache_salt, which is what a data-path client needs to read
# that tenant's cache (issue 13; docs/security.md). Without --http-admin-token the guard lets everyone in.
@get("/", sync_to_thread=False, guards=[require_admin], summary="Every registered quota with live usage")
def list_quotas(engine: Engine) -> QuotaTable:
    """Registered salts only; usage of unregistered salts is not listed. With a token set, admin only."""
    quotas = quotas_of(engine)
    limits = quotas.list_quotas()
    tiers = quotas.usage_by_tier()
    return QuotaTable(users={
        salt_to_path(salt): QuotaUsage(limit_gb=bytes_to_gib(limit), current_usage_gb=_largest_gib(tiers, salt),
                                       usage_by_tier_gb=_tiers_gib(tiers, salt))
        for salt, limit in sorted(limits.items())})


def _tiers_gib(tiers: dict[str, dict[str, int]], salt: str) -> dict[str, float]:
    """One salt's GiB in every tier (``l1``, ``l2:<index>``)."""
    return {tier: bytes_to_gib(usage.get(salt, 0)) for tier, usage in tiers.items()}


def _largest_gib(tiers: dict[str, dict[str, int]], salt: str) -> float:
    """The usage compared with the limit: the salt's GiB in its largest tier."""
    return bytes_to_gib(max((usage.get(salt, 0) for usage in tiers.values()), default=0))


router = Router(path="/quota", route_handlers=[list_quotas, set_quota, get_quota, delete_quota], tags=["quota"])
"""Errors in the default ``{"error": ...}`` envelope (the engine's 503 included)."""


@hookimpl
def lmcache_register_routes(register: RegisterRoutes) -> None:
    register(router)
