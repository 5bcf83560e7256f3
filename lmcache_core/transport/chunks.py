"""From a request's key to its chunks: the token range, the chunk hashes, the object keys, once.

:class:`KeyPlanner` turns an :class:`~lmcache_core.transport.messages.IPCCacheServerKey` into
what the ops need, validating on the way (limits, model name, cache salt, chunk alignment):

* :meth:`KeyPlanner.transfer_plan`: a STORE/RETRIEVE/engine-driven transfer's :class:`ChunkPlan`,
  the chunks ``[first, stop)`` at the sending worker's rank, with the worker's block ids
  validated and null-masked once (:meth:`RegisteredKVCache.plan_blocks`) for the copy to use;
* :meth:`KeyPlanner.lookup_keys`: LOOKUP's keys, every KV rank of each chunk;
* :meth:`KeyPlanner.end_session_keys`: the keys END_SESSION refreshes.

The chunk hashes come from the request's session (hashed once per request, reused by the
LOOKUP, STORE and RETRIEVE of the same request id). Every refusal is :class:`RequestRejected`
or :class:`~lmcache_core.keys.InvalidKeyError` (the op answers its in-band failure value).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmcache_core.hashing import chunk_span
from lmcache_core.keys import ObjectKey, kv_rank_for_worker, kv_ranks_for_world, validate_cache_salt
from lmcache_core.keys import validate_model_name
from lmcache_core.sessions import Session, SessionManager
from lmcache_core.transfer.kvcache import BlockPlan, RegisteredKVCache
from lmcache_core.transport import messages as m
from lmcache_core.transport.errors import RequestRejected
from lmcache_core.transport.limits import SecurityConfig


@dataclass(frozen=True)
class ChunkPlan:
    """One transfer request, resolved: chunks ``[first, stop)``, their keys, and (for a worker whose
    KV cache the server copies) its block ids validated with the null-chunk mask."""

    first: int
    stop: int
    keys: list[ObjectKey]
    blocks: BlockPlan | None = None

    @property
    def num_chunks(self) -> int:
        return self.stop - self.first


@dataclass(frozen=True)
class _RequestMeta:
    model_name: str
    world_size: int
    cache_salt: str


class KeyPlanner:
    """Validates request keys and derives chunk plans and object keys for one server."""

    def __init__(self, sessions: SessionManager, chunk_size: int, limits: SecurityConfig) -> None:
        self.sessions = sessions
        self.chunk_size = chunk_size
        self.limits = limits
        self._lock = threading.Lock()
        self._requests: dict[str, _RequestMeta] = {}  # what END_SESSION needs to name a request's keys
        # A session that expires (or ends) takes its request's metadata with it.
        sessions.add_destroy_listener(self._forget_request)

    def _forget_request(self, session: Any, reason: Any) -> None:
        with self._lock:
            self._requests.pop(session.request_id, None)

    def check_request_size(self, key: m.IPCCacheServerKey) -> None:
        """The request id and token list are within ``limits`` (else :class:`RequestRejected`)."""
        limits = self.limits
        if len(key.request_id) > limits.max_request_id_length:
            raise RequestRejected(f"request id of {len(key.request_id)} characters "
                                  f"(at most {limits.max_request_id_length})")
        if len(key.token_ids) > limits.max_lookup_tokens:
            raise RequestRejected(f"{len(key.token_ids)} tokens (at most {limits.max_lookup_tokens})")

    def chunk_range(self, key: m.IPCCacheServerKey) -> tuple[int, int]:
        """A transfer's chunks ``[first, stop)`` by :func:`chunk_span`: ``start`` must be chunk-aligned
        (LMCache asserts it), an unaligned ``end`` drops its partial chunk (complete chunks only)."""
        c = self.chunk_size
        if key.start < 0 or key.start % c or key.end < key.start:
            raise RequestRejected(f"token range [{key.start}, {key.end}) does not start on a chunk boundary "
                                  f"(chunk size {c})")
        return chunk_span(key.start, key.end, c, len(key.token_ids))

    def hashes(self, key: m.IPCCacheServerKey, start: int, end: int) -> list[bytes]:
        """The chunk hashes of tokens ``[start, end)`` (chunk-aligned) from the request's session."""
        self.check_request_size(key)
        validate_model_name(key.model_name)
        validate_cache_salt(key.cache_salt)
        session = self.sessions.get_or_create(key.request_id)
        meta = _RequestMeta(key.model_name, key.world_size, key.cache_salt)
        with self._lock:
            self._requests[key.request_id] = meta
        return session.hashes_for(key.token_ids, start, end)

    def transfer_plan(self, key: m.IPCCacheServerKey, kv: RegisteredKVCache | None = None,
                      block_ids: Sequence[Sequence[int]] | None = None) -> ChunkPlan:
        """The chunks a transfer names at its worker's rank, validated; with ``kv``, its block ids too.

        The block ids are checked before anything is hashed, so a request with bad ids costs no hashing.
        """
        first, stop = self.chunk_range(key)
        blocks = kv.plan_blocks(block_ids if block_ids is not None else [], stop - first) if kv is not None else None
        return ChunkPlan(first, stop, self.transfer_keys(key, first, stop), blocks)

    def transfer_keys(self, key: m.IPCCacheServerKey, first: int, stop: int) -> list[ObjectKey]:
        """The object keys of chunks ``[first, stop)`` at the sending worker's rank (hashes them)."""
        rank = kv_rank_for_worker(key.world_size, key.worker_id)
        c = self.chunk_size
        return [ObjectKey(h, key.model_name, rank, 0, key.cache_salt) for h in self.hashes(key, first * c, stop * c)]

    def lookup_end(self, key: m.IPCCacheServerKey) -> int:
        """The token where LOOKUP's chunks end: ``end`` clamped to the tokens, whole chunks only."""
        return chunk_span(0, key.end, self.chunk_size, len(key.token_ids))[1] * self.chunk_size

    def lookup_keys(self, key: m.IPCCacheServerKey, end: int) -> list[list[ObjectKey]]:
        """LOOKUP's keys of tokens ``[0, end)``: per chunk, one key per KV rank of the world."""
        hashes = self.hashes(key, 0, end)
        ranks = kv_ranks_for_world(key.world_size)
        return [[ObjectKey(h, key.model_name, r, 0, key.cache_salt) for r in ranks] for h in hashes]

    def end_session_keys(self, request_id: str, session: Session | None) -> list[ObjectKey]:
        """The keys of the chunks hashed for ``request_id`` so far, every rank (and forget the request)."""
        with self._lock:
            meta = self._requests.pop(request_id, None)
        if session is None or meta is None:
            return []
        ranks = kv_ranks_for_world(meta.world_size)
        return [ObjectKey(h, meta.model_name, r, 0, meta.cache_salt) for h in session.cached_hashes() for r in ranks]
