"""``/cache/*`` and ``/config/adapters`` of LMCache 0.5.6, over the engine the seed's routes use.

Each function takes the ready :class:`~lmcache_core.server.CacheServer` and already
validated values, and returns ``(status, body)``. They are blocking (adapter I/O,
locks) and run on a worker thread; :mod:`.plugin` does the HTTP side. The engine
operations are the ones the seed's ``/clear-cache`` and ``/l2`` routes call
(``L1Manager.clear``/``delete``, ``L2Adapter.list_keys``/``delete_report``,
``WarmPrefetchJobs.submit``/``poll``), so both generations change the same state the
same way; only the HTTP shapes differ.
"""

from __future__ import annotations

import logging
import threading
import uuid
import weakref
from collections import OrderedDict
from typing import Any

from lmcache_core.api import (
    CacheServer,
    EncodedObjectKey,
    InvalidKeyError,
    L1Result,
    L2Adapter,
    ObjectKey,
    Reconfigurable,
    kv_ranks_for_world,
    validate_cache_salt,
    validate_model_name,
)

logger = logging.getLogger(__name__)

Answer = tuple[int, Any]

MAX_DELETE_BATCH = 10_000
MAX_TOKEN_IDS = 1_000_000
TOKEN_ID_LIMIT = 2**32
NO_ADAPTERS = "no L2 adapters configured"


def text(value: str) -> str:
    """``value`` with what UTF-8 cannot carry (lone surrogates) escaped, so the answer can be encoded."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def detail(status: int, message: str) -> Answer:
    return status, {"detail": text(message)}


class Refused(Exception):
    """An answer other than 200 found while resolving what a request addresses."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.answer = detail(status, message)


def adapters(server: CacheServer) -> list[L2Adapter]:
    return server.storage.l2_adapters if server.storage is not None else []


def resolve_adapter(server: CacheServer, selector: str | None) -> L2Adapter:
    """The adapter ``selector`` names (first of that ``type_name``; the primary when None)."""
    if not adapters(server):
        raise Refused(503, NO_ADAPTERS)
    assert server.storage is not None
    adapter = server.storage.find_l2_adapter(selector)
    if adapter is None:
        raise Refused(404, f"no L2 adapter with type_name={selector!r}")
    return adapter


def list_adapters(server: CacheServer) -> dict[str, Any]:
    """``GET /config/adapters``: every L2 adapter in configuration order."""
    return {"adapters": [{"index": i, "type_name": a.type_name, "tier": "l2", "primary": i == 0,
                          "reconfigurable": isinstance(a, Reconfigurable)} for i, a in enumerate(adapters(server))]}


def clear(server: CacheServer, force: bool) -> Answer:
    """``POST /cache/clear``: L1 only; ``force`` also removes objects a reader or writer holds."""
    assert server.storage is not None
    removed = server.storage.l1.clear(force=force)
    logger.info("L1 cleared over HTTP (force=%s): %d objects", force, removed)
    return 200, {"status": "ok", "cleared": {"tier": "l1"}}


def list_objects(server: CacheServer, selector: str | None, model_name: str | None, page_size: int,
                 page_token: str | None) -> Answer:
    """``GET /cache/objects`` (tier ``l2``): one page of the adapter's keys."""
    try:
        adapter = resolve_adapter(server, selector)
        if model_name is not None:
            validate_model_name(model_name)
    except Refused as refused:
        return refused.answer
    except InvalidKeyError as exc:
        return detail(400, str(exc))
    try:
        page = adapter.list_keys(model_name, page_size, page_token)
    except NotImplementedError as exc:
        return detail(503, f"L2 adapter {adapter.type_name!r} does not support listing: {exc}")
    except ValueError as exc:
        return detail(400, str(exc))
    except Exception as exc:  # an I/O failure: the tier is unavailable, not the request wrong
        logger.warning("GET /cache/objects on %s failed: %s", adapter.l2_name, exc)
        return detail(503, f"L2 adapter {adapter.type_name!r} failed to list: {type(exc).__name__}: {exc}")
    entries = []
    for entry in page.entries:
        key = entry.key
        if text(key.model_name) != key.model_name or text(key.cache_salt) != key.cache_salt:
            continue  # a stored name JSON cannot carry: left out rather than failing the page
        entries.append({"key": {"chunk_hash_hex": key.chunk_hash_hex, "model_name": key.model_name,
                                "kv_rank": key.kv_rank, "object_group_id": key.object_group_id,
                                "cache_salt": key.cache_salt}, "size_bytes": entry.size_bytes})
    return 200, {"adapter": adapter.type_name, "shared": bool(getattr(adapter.config, "shared", False)),
                 "entries": entries, "next_page_token": page.next_page_token}


def object_keys(encoded: list[dict[str, Any]]) -> list[ObjectKey]:
    """The keys of a ``DELETE /cache/objects`` body; :class:`Refused` (400) for the cap or an invariant."""
    if len(encoded) > MAX_DELETE_BATCH:
        raise Refused(400, f"too many keys in a single request (limit={MAX_DELETE_BATCH}, got={len(encoded)})")
    keys: list[ObjectKey] = []
    for i, fields in enumerate(encoded):
        try:
            bytes.fromhex(fields["chunk_hash_hex"])  # for Python's own message, which 0.5.6 answers with
            keys.append(EncodedObjectKey(**fields).to_object_key())
        except ValueError as exc:  # InvalidKeyError included
            raise Refused(400, f"keys[{i}]: {exc}") from None
    return keys


def delete_objects(server: CacheServer, tier: str, selector: str | None, encoded: list[dict[str, Any]],
                   force: bool) -> Answer:
    """``DELETE /cache/objects``: L1 (``force`` includes locked objects), L2 (locked keys stay), or both.

    Everything that can refuse the request (the cap, a key invariant, the adapter) is
    checked before anything is deleted.
    """
    try:
        keys = object_keys(encoded)
        adapter = resolve_adapter(server, selector) if tier in ("l2", "all") else None
    except Refused as refused:
        return refused.answer
    assert server.storage is not None
    deleted = skipped = 0
    if tier in ("l1", "all"):
        results = server.storage.l1.delete(keys, force=force)
        deleted += results.count(L1Result.SUCCESS)
        skipped += results.count(L1Result.KEY_IS_LOCKED)
    answer: dict[str, Any] = {"deleted": deleted, "skipped": skipped, "ok": True}
    if adapter is not None:
        try:
            report = adapter.delete_report(keys).result()
        except Exception as exc:  # a closed adapter, or one whose delete raised as a whole
            logger.warning("DELETE /cache/objects on %s failed: %s", adapter.l2_name, exc)
            return 200, {**answer, "ok": False, "error": text(f"{type(exc).__name__}: {exc}")}
        answer["deleted"] += len(keys)
        if report.failed:
            key, reason = report.failed[0]
            return 200, {**answer, "ok": False, "error": text(
                f"{len(report.failed)} of {len(keys)} keys could not be deleted; first: "
                f"chunk_hash_hex={key.chunk_hash.hex()} model_name={key.model_name!r}: {reason}")}
    return 200, answer


def submit_prefetch(server: CacheServer, model_name: str, world_size: int, token_ids: list[int],
                    cache_salt: str) -> Answer:
    """``POST /cache/prefetches``: warm L1 from L2 for the token sequence's full chunks.

    The keys are what ``LOOKUP`` builds for the sequence (object group 0, one per rank),
    submitted to the engine's warm-prefetch jobs, the table ``/l2/prefetch`` uses too.
    """
    datapath, storage = server.datapath, server.storage
    nbytes = datapath.object_nbytes_for(model_name, world_size) if datapath is not None else None
    if nbytes is None:
        return detail(503, f"no layout registered for model_name={model_name!r} world_size={world_size}; "
                           "the model has not allocated KV cache on this node yet")
    if len(token_ids) > MAX_TOKEN_IDS:
        return detail(400, f"too many token_ids in a single request (limit={MAX_TOKEN_IDS}, got={len(token_ids)})")
    for i, token in enumerate(token_ids):
        if not 0 <= token < TOKEN_ID_LIMIT:
            return detail(400, f"token_ids[{i}]: {token} is not a token id (0 <= id < 2**32)")
    try:
        validate_model_name(model_name)
        validate_cache_salt(cache_salt)
    except InvalidKeyError as exc:
        return detail(400, str(exc))
    hashes = server.hasher.hash_chunks(token_ids)
    if not hashes:
        return 202, {"chunks": 0, "status": "noop"}
    ranks = kv_ranks_for_world(world_size)
    keys = [ObjectKey(h, model_name, rank, 0, cache_salt) for h in hashes for rank in ranks]
    jobs = storage.warm_jobs if storage is not None else None
    if jobs is None:  # no L2: nothing to load from, a job that is done at once (as 0.5.6 answers)
        return 202, {"request_id": _nothing_to_warm(server, len(keys)), "chunks": len(hashes), "status": "submitted"}
    try:
        request_id = jobs.submit(keys, nbytes)
    except RuntimeError:  # the prefetch pool is shut down: the engine is stopping
        return detail(503, "server not initialized")
    return 202, {"request_id": request_id, "chunks": len(hashes), "status": "submitted"}


_EMPTY_JOBS: weakref.WeakKeyDictionary[CacheServer, OrderedDict[str, int]] = weakref.WeakKeyDictionary()
_EMPTY_JOBS_LOCK = threading.Lock()
MAX_EMPTY_JOBS = 10_000


def _nothing_to_warm(server: CacheServer, total_keys: int) -> str:
    """A request id for a warm prefetch on a server without L2: completed at once, nothing found.

    Kept until polled, at most :data:`MAX_EMPTY_JOBS` per server (the oldest go first).
    """
    request_id = uuid.uuid4().hex
    with _EMPTY_JOBS_LOCK:
        jobs = _EMPTY_JOBS.setdefault(server, OrderedDict())
        jobs[request_id] = total_keys
        while len(jobs) > MAX_EMPTY_JOBS:
            jobs.popitem(last=False)
    return request_id


def prefetch_status(server: CacheServer, request_id: str) -> Answer:
    """``GET /cache/prefetches/{request_id}``: pending; completed with the counts, once; then 404."""
    jobs = server.storage.warm_jobs if server.storage is not None else None
    state = jobs.poll(request_id) if jobs is not None else None
    if state is None:
        with _EMPTY_JOBS_LOCK:
            total = _EMPTY_JOBS.get(server, {}).pop(request_id, None)  # type: ignore[call-overload]
        if total is not None:
            return 200, {"request_id": request_id, "status": "completed", "found_keys": 0, "total_keys": total}
        return detail(404, f"unknown prefetch request_id={request_id!r} (already completed or never submitted)")
    if state.status == "pending":
        return 200, {"request_id": request_id, "status": "pending"}
    return 200, {"request_id": request_id, "status": "completed", "found_keys": state.found_keys,
                 "total_keys": state.total_keys}
