"""Cache control: ``POST /clear-cache``, ``GET /kvcache/check`` (seed) and ``POST /cache/checksums`` (0.5.6).

``/kvcache/check`` is the seed's contract (query parameters, ``{"error": ...}``
envelope, ``block_id_ranges`` as the mixed string). ``/cache/checksums`` is what
LMCache 0.5.6 serves and what the real ``lmcache bench server`` calls: a JSON
body, FastAPI's ``{"detail": ...}`` envelope, ``block_id_ranges`` as a list.
Both compute the same MD5 digests (:mod:`lmcache_core.transfer.checksums`) on a
worker thread, never on the event loop.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Request, Response, Router, get, post
from litestar.params import QueryParameter

from lmcache_core import hookimpl
from lmcache_core.http import openapi
from lmcache_core.http.deps import Engine, unavailable_body
from lmcache_core.http.guard import require_admin
from lmcache_core.server import CacheServer
from lmcache_core.transfer.checksums import (
    ChecksumError,
    checksum_response,
    parse_block_ids,
)
from lmcache_core.transfer.kvcache import KVCacheClosedError
from lmcache_core.transfer.layout import LayoutError


class ChecksumRequest(msgspec.Struct, forbid_unknown_fields=False):
    """Body of ``POST /cache/checksums`` (0.5.6 ``ChecksumRequest``; every field has a default)."""

    block_ids: list[int] = []
    chunk_size: int = 0
    instance_id: int = 0
    layerwise: bool = False


class KVCacheCheckResult(msgspec.Struct):
    """``GET /kvcache/check`` 200 (documents the answer :func:`checksum_response` builds)."""

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


def _compute(server: CacheServer, instance_id: int, block_ids: list[int], chunk_size: int,
             layerwise: bool, ranges_as_string: bool) -> tuple[int, dict[str, Any] | str]:
    """(status, body or error message); runs on a worker thread.

    The instance is checked before the ids and the chunk size: 0.5.6 answers an empty body
    ``{}`` with 404 ``instance_id 0 not registered`` (``golden/http_cache_checksums.json``
    ``missing_body_fields``), not with 400 for the empty ``block_ids``.
    """
    datapath = server.datapath
    kv = datapath.registered_kv(instance_id) if datapath is not None else None
    if kv is None:
        return 404, f"instance_id {instance_id} not registered"
    if not block_ids:
        return 400, "block_ids is required"
    if chunk_size <= 0:
        return 400, "chunk_size must be positive"
    try:
        if not kv.layers:
            return 404, f"instance_id {instance_id} has no KV tensors"
        return 200, checksum_response(kv, block_ids, chunk_size, layerwise, ranges_as_string=ranges_as_string)
    except KVCacheClosedError:
        # Unregistered between the lookup above and the read: answer as if it had never been there.
        return 404, f"instance_id {instance_id} not registered"
    except ChecksumError as exc:
        return getattr(exc, "status", 400), str(getattr(exc, "message", exc))
    except LayoutError as exc:
        return 501, f"KV format not supported by this endpoint: {exc}"
    except IndexError as exc:
        return 400, f"block id out of range: {exc}"


@post("/clear-cache", status_code=200, sync_to_thread=True, guards=[require_admin],
      summary="Force-clear all L1 data")
def clear_cache(engine: Engine) -> dict[str, str]:
    """Force-clears L1 (locks bypassed, as the seed documents); the body is ignored."""
    assert engine.storage is not None
    engine.storage.l1.clear(force=True)
    return {"status": "ok"}


_ERROR_BODY = {"error": "engine not initialized"}
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
@get("/kvcache/check", summary="MD5 checksums over registered KV blocks",
     operation_class=openapi.operation(required_query=("block_ids", "chunk_size")), responses={
         200: openapi.json(KVCacheCheckResult, "one digest per chunk of `chunk_size` blocks"),
         400: openapi.error("missing or malformed `block_ids`, `chunk_size`, `instance_id` or `layerwise`, "
                            "or a block id out of range"),
         404: openapi.error("no KV cache registered under `instance_id`, or it has no tensors"),
         501: openapi.error("the registered KV layout is not supported by this endpoint")})
async def kvcache_check(
    engine: Engine,
    block_ids: Annotated[str | None, QueryParameter(description='Block ids, mixed format: "0,[2,5],8"')] = None,
    chunk_size: Annotated[str | None, QueryParameter(description="Blocks per hashed chunk (positive)")] = None,
    instance_id: Annotated[str, QueryParameter(description="Registered KV context id")] = "0",
    layerwise: Annotated[str, QueryParameter(description="true: one digest list per layer")] = "false",
) -> Response[Any]:
    """Seed contract: 400 bad/missing ``block_ids`` or ``chunk_size``, 404 unknown instance, 501 unsupported."""
    def bad(message: str, status: int = 400) -> Response[Any]:
        return Response({"error": message}, status_code=status)

    if block_ids is None or not block_ids.strip():
        return bad("block_ids is required")
    if not block_ids.isascii():  # the parser's \d and int() would read non-ASCII digits as ids
        return bad("invalid block_ids: only ASCII is allowed")
    try:
        ids = parse_block_ids(block_ids)
    except ValueError as exc:  # BlockIdParseError, or int() refusing a number past 4300 digits
        return bad(f"invalid block_ids: {str(exc)[:200]}")
    try:
        chunk = _query_int(chunk_size) if chunk_size is not None else 0
        iid = _query_int(instance_id)
    except ValueError:
        return bad("chunk_size and instance_id must be integers")
    if chunk <= 0:
        return bad("chunk_size must be a positive integer")
    flag = layerwise.strip().lower()
    if flag not in ("true", "false", "1", "0", "yes", "no"):
        return bad("layerwise must be true or false")
    status, body = await anyio.to_thread.run_sync(
        _compute, engine, iid, ids, chunk, flag in ("true", "1", "yes"), True)
    return Response(body, status_code=200) if status == 200 else bad(str(body), status)


@post("/cache/checksums", status_code=200, summary="MD5 checksums (LMCache 0.5.6 route, used by lmcache bench)",
      operation_class=openapi.operation(body=openapi.json_body(ChecksumRequest, required=False)), responses={
          200: openapi.json(ChecksumsResult, "one digest per chunk of `chunk_size` blocks"),
          400: openapi.detail("empty `block_ids`, `chunk_size` not positive, or a block id out of range"),
          404: openapi.detail("no KV cache registered under `instance_id`, or it has no tensors"),
          422: openapi.detail("the body is not JSON or a field has the wrong type"),
          501: openapi.detail("the registered KV layout is not supported by this endpoint")})
async def cache_checksums(engine: Engine, request: Request[Any, Any, Any]) -> Response[Any]:
    """0.5.6 contract: JSON body; 404 unknown instance, 400 empty ids / bad chunk size, 422 wrong types."""
    raw = await request.body()
    try:
        body = msgspec.json.decode(raw or b"{}", type=ChecksumRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return Response({"detail": str(exc)}, status_code=422)
    status, result = await anyio.to_thread.run_sync(
        _compute, engine, body.instance_id, body.block_ids, body.chunk_size, body.layerwise, False)
    if status == 200:
        return Response(result, status_code=200)
    return Response({"detail": result}, status_code=status)


router = Router(path="/", route_handlers=[clear_cache], tags=["cache"],
                opt=unavailable_body({"status": "error", "reason": "engine not initialized"}))
check_router = Router(path="/", route_handlers=[kvcache_check], tags=["cache"], opt=unavailable_body(_ERROR_BODY))
checksums_router = Router(path="/", route_handlers=[cache_checksums], tags=["cache"],
                          opt=unavailable_body({"detail": "engine not initialized"}))


@hookimpl
def lmcache_register_routes(register: Any) -> None:
    register(router, check_router, checksums_router)



