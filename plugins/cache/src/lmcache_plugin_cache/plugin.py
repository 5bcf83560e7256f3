"""Cache control: ``POST /clear-cache``, ``GET /kvcache/check`` (seed) and ``POST /cache/checksums`` (0.5.6).

``/kvcache/check`` is the seed's contract (query parameters, ``{"error": ...}``
envelope, ``block_id_ranges`` as the mixed string). ``/cache/checksums`` is what
LMCache 0.5.6 serves and what the real ``lmcache bench server`` calls: a JSON
body, FastAPI's ``{"detail": ...}`` envelope, ``block_id_ranges`` as a list.
Both compute the same MD5 digests (:mod:`lmcache_core.transfer.checksums`) on a
worker thread, never on the event loop; chunk by chunk in bounded memory, at most one id
per block of the cache (400 beyond), and at most two computations at once (429 beyond).
"""

from __future__ import annotations

import re
import threading
from typing import Annotated, Any

import msgspec
from litestar import Router, get, post
from litestar.params import QueryParameter, RawBody

from lmcache_core.api import (
    DETAIL,
    CacheServer,
    ChecksumError,
    Engine,
    HTTPError,
    KVCacheClosedError,
    LayoutError,
    RegisterRoutes,
    checksum_response,
    error_envelope,
    hookimpl,
    openapi,
    parse_block_ids,
    require_admin,
    status_reason,
)


class ChecksumRequest(msgspec.Struct, forbid_unknown_fields=False):
    """Body of ``POST /cache/checksums`` (0.5.6 ``ChecksumRequest``; every field has a default)."""

    block_ids: list[int] = []
    chunk_size: int = 0
    instance_id: int = 0
    layerwise: bool = False


class Cleared(msgspec.Struct):
    """``POST /clear-cache`` 200."""

    status: str


class KVCacheCheckResult(msgspec.Struct):
    """``GET /kvcache/check`` 200 (the answer :func:`checksum_response` builds, typed)."""

    status: str
    chunk_size: int
    num_chunks: int
    chunk_checksums: list[str] | dict[str, list[str]]
    """One MD5 hex digest per chunk; with ``layerwise``, ``{"layer_<i>": [...]}``."""
    layerwise: bool
    block_id_ranges: str
    """The ids in the seed's mixed form, ``"0,[2,5],8"``."""


class ChecksumsResult(msgspec.Struct):
    """``POST /cache/checksums`` 200: as :class:`KVCacheCheckResult`, ``block_id_ranges`` as a list."""

    status: str
    chunk_size: int
    num_chunks: int
    chunk_checksums: list[str] | dict[str, list[str]]
    layerwise: bool
    block_id_ranges: list[int | list[int]]
    """Runs of three or more ids as ``[first, last]``: ``[[0, 2], 5, 7]``."""


MAX_CONCURRENT_CHECKSUMS = 2
"""Checksum computations running at once (both routes); more answer 429. Each hashes chunk by chunk
in bounded memory (:mod:`lmcache_core.transfer.checksums`), so this bounds CPU, not memory."""
_CHECKSUM_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_CHECKSUMS)


def _compute(server: CacheServer, instance_id: int, block_ids: list[int], chunk_size: int,
             layerwise: bool, ranges_as_string: bool) -> dict[str, Any]:
    """The checksum answer, or an :class:`HTTPError` (in the calling route's envelope); runs on a worker thread.

    The instance is checked before the ids and the chunk size: 0.5.6 answers an empty body
    ``{}`` with 404 ``instance_id 0 not registered`` (``golden/http_cache_checksums.json``
    ``missing_body_fields``), not with 400 for the empty ``block_ids``.
    """
    datapath = server.datapath
    kv = datapath.registered_kv(instance_id) if datapath is not None else None
    if kv is None:
        raise HTTPError(404, f"instance_id {instance_id} not registered")
    if not block_ids:
        raise HTTPError(400, "block_ids is required")
    if chunk_size <= 0:
        raise HTTPError(400, "chunk_size must be positive")
    try:
        if not kv.layers:
            raise HTTPError(404, f"instance_id {instance_id} has no KV tensors")
        if not _CHECKSUM_SLOTS.acquire(blocking=False):
            raise HTTPError(429, f"{MAX_CONCURRENT_CHECKSUMS} checksum requests are already running; retry later")
        try:
            return checksum_response(kv, block_ids, chunk_size, layerwise, ranges_as_string=ranges_as_string)
        finally:
            _CHECKSUM_SLOTS.release()
    except KVCacheClosedError:
        # Unregistered between the lookup above and the read: answer as if it had never been there.
        raise HTTPError(404, f"instance_id {instance_id} not registered") from None
    except ChecksumError as exc:
        raise HTTPError(getattr(exc, "status", 400), str(getattr(exc, "message", exc))) from None
    except LayoutError as exc:
        raise HTTPError(501, f"KV format not supported by this endpoint: {exc}") from None
    except IndexError as exc:
        raise HTTPError(400, f"block id out of range: {exc}") from None


@post("/clear-cache", status_code=200, sync_to_thread=True, guards=[require_admin],
      summary="Force-clear all L1 data")
def clear_cache(engine: Engine) -> Cleared:
    """Force-clears L1: locked objects too, as the seed documents, but their memory is reused only once the
    copies holding them finish (docs/reliability.md, "Forced clears"); the body is ignored."""
    assert engine.storage is not None
    engine.storage.l1.clear(force=True)
    return Cleared(status="ok")


# ASCII decimal only: int() would also take "1_0" and non-ASCII digits such as "١".
_QUERY_INT = re.compile(r"[+-]?[0-9]+")


def _query_int(text: str) -> int:
    """A query-string integer; raises ``ValueError`` for anything but optionally signed ASCII digits."""
    text = text.strip()
    if not _QUERY_INT.fullmatch(text):
        raise ValueError(f"not an integer: {text[:50]!r}")
    return int(text)  # may still raise ValueError past Python's 4300-digit conversion limit


# Positive data: block_ids is a grammar no pattern bounds (ranges must ascend, at most 2**20 ids), so the
# conformance test does not expect every string to be accepted.
@get("/kvcache/check", sync_to_thread=True, summary="MD5 checksums over registered KV blocks",
     operation_class=openapi.operation(required_query=("block_ids", "chunk_size")), responses={
         200: openapi.json(KVCacheCheckResult, "one digest per chunk of `chunk_size` blocks"),
         400: openapi.error("missing or malformed `block_ids`, `chunk_size`, `instance_id` or `layerwise`, "
                            "or a block id out of range, or more ids than the cache has blocks"),
         404: openapi.error("no KV cache registered under `instance_id`, or it has no tensors"),
         429: openapi.error("two checksum computations are already running"),
         501: openapi.error("the registered KV layout is not supported by this endpoint")})
def kvcache_check(
    engine: Engine,
    block_ids: Annotated[str | None, QueryParameter(description='Block ids, mixed format: "0,[2,5],8"')] = None,
    chunk_size: Annotated[str | None, QueryParameter(description="Blocks per hashed chunk (positive)")] = None,
    instance_id: Annotated[str, QueryParameter(description="Registered KV context id")] = "0",
    layerwise: Annotated[str, QueryParameter(description="true: one digest list per layer")] = "false",
) -> KVCacheCheckResult:
    """Seed contract: 400 bad/missing ``block_ids`` or ``chunk_size``, 404 unknown instance, 501 unsupported."""
    if block_ids is None or not block_ids.strip():
        raise HTTPError(400, "block_ids is required")
    if not block_ids.isascii():  # the parser's \d and int() would read non-ASCII digits as ids
        raise HTTPError(400, "invalid block_ids: only ASCII is allowed")
    try:
        ids = parse_block_ids(block_ids)
    except ValueError as exc:  # BlockIdParseError, or int() refusing a number past 4300 digits
        raise HTTPError(400, f"invalid block_ids: {str(exc)[:200]}") from None
    try:
        chunk = _query_int(chunk_size) if chunk_size is not None else 0
        iid = _query_int(instance_id)
    except ValueError:
        raise HTTPError(400, "chunk_size and instance_id must be integers") from None
    if chunk <= 0:
        raise HTTPError(400, "chunk_size must be a positive integer")
    flag = layerwise.strip().lower()
    if flag not in ("true", "false", "1", "0", "yes", "no"):
        raise HTTPError(400, "layerwise must be true or false")
    return msgspec.convert(_compute(engine, iid, ids, chunk, flag in ("true", "1", "yes"), True), KVCacheCheckResult)


@post("/cache/checksums", status_code=200, sync_to_thread=True, summary="MD5 checksums (LMCache 0.5.6 route, used by lmcache bench)",
      operation_class=openapi.operation(body=openapi.json_body(ChecksumRequest, required=False)), responses={
          200: openapi.json(ChecksumsResult, "one digest per chunk of `chunk_size` blocks"),
          400: openapi.detail("empty `block_ids`, `chunk_size` not positive, a block id out of range, "
                              "or more ids than the cache has blocks"),
          404: openapi.detail("no KV cache registered under `instance_id`, or it has no tensors"),
          429: openapi.detail("two checksum computations are already running"),
          422: openapi.detail("the body is not JSON or a field has the wrong type"),
          501: openapi.detail("the registered KV layout is not supported by this endpoint")})
def cache_checksums(engine: Engine, body: RawBody) -> ChecksumsResult:
    """0.5.6 contract: JSON body; 404 unknown instance, 400 empty ids / bad chunk size, 422 wrong types."""
    try:
        request = msgspec.json.decode(body or b"{}", type=ChecksumRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise HTTPError(422, str(exc)) from None
    return msgspec.convert(_compute(engine, request.instance_id, request.block_ids, request.chunk_size,
                                    request.layerwise, False), ChecksumsResult)


# Each route keeps its own envelope: /clear-cache {"status": "error", "reason"}, the seed's /kvcache/check
# {"error"}, 0.5.6's /cache/checksums {"detail"}.
router = Router(path="/", route_handlers=[clear_cache], tags=["cache"], opt=error_envelope(status_reason("error")))
check_router = Router(path="/", route_handlers=[kvcache_check], tags=["cache"])
checksums_router = Router(path="/", route_handlers=[cache_checksums], tags=["cache"], opt=error_envelope(DETAIL))


@hookimpl
def lmcache_register_routes(register: RegisterRoutes) -> None:
    register(router, check_router, checksums_router)



