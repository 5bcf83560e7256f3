"""LOOKUP and its follow-ups: QUERY/WAIT_PREFETCH_STATUS, FREE_LOOKUP_LOCKS, END_SESSION.

LOOKUP counts the prefix of chunks present for every KV rank, locks them for the request's
readers, and (when an L2 prefetcher runs) starts loading the chunks past the L1 prefix; its
result is taken exactly once by QUERY (``None`` while L2 loads, ``0`` if unknown). LOOKUP
itself replies ``None`` at once, as 0.5.6 does. A lookup of more than
``limits.large_lookup_tokens`` tokens hashes on a thread of its own, off the socket's loop.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lmcache_core.hashing import chunk_span
from lmcache_core.keys import InvalidKeyError
from lmcache_core.sessions import SessionManager
from lmcache_core.storage.l1 import L1Manager
from lmcache_core.storage.lookups import LookupTracker
from lmcache_core.transport import messages as m
from lmcache_core.transport import metrics as dp_metrics
from lmcache_core.transport.chunks import KeyPlanner
from lmcache_core.transport.errors import RequestRejected
from lmcache_core.transport.limits import SecurityConfig
from lmcache_core.transport.workers import WorkerRegistry
from lmcache_core.transport.zmq_server import safe_text

logger = logging.getLogger(__name__)


class LookupOps:
    """The scheduler's ops: LOOKUP, QUERY, WAIT, FREE_LOOKUP_LOCKS, END_SESSION."""

    def __init__(self, registry: WorkerRegistry, planner: KeyPlanner, lookups: LookupTracker,
                 sessions: SessionManager, l1: L1Manager, prefetch: Any, limits: SecurityConfig, *,
                 metrics: bool) -> None:
        """``prefetch``: the L2 prefetch controller (``storage.prefetch``), or None without L2."""
        self.registry = registry
        self.planner = planner
        self.lookups = lookups
        self.sessions = sessions
        self.l1 = l1
        self.prefetch = prefetch
        self.limits = limits
        self.metrics = metrics
        self.chunk_size = planner.chunk_size
        # Lookups of more than limits.large_lookup_tokens tokens hash here, off the ZMQ loop thread.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="lmcache-large-lookup")

    def lookup_bounded(self, args: m.KeyTpArgs, identity: bytes) -> None:
        """LOOKUP with the data path's limits: an oversize request id or token list, or a connection
        with ``max_pending_lookups_per_connection`` results still unqueried, is refused without keeping
        anything (its QUERY answers 0); a long token list is hashed off the loop thread (QUERY answers
        None, "still loading", until it is done)."""
        key = args.key
        try:
            self.planner.check_request_size(key)
            self.registry.note_lookup(identity, key.request_id, self.limits.max_pending_lookups_per_connection,
                                      self._still_open)
        except RequestRejected as exc:
            logger.debug("lookup refused: %s", safe_text(exc))
            if self.metrics:
                dp_metrics.record_early_exit("rejected")
            return None
        if len(key.token_ids) <= self.limits.large_lookup_tokens:
            return self.lookup(args, identity)
        self.lookups.lookup(key.request_id, [], 1, owner=identity, pending=True)
        self._pool.submit(self._offloaded, args, identity)
        return None

    def _still_open(self, request_id: str) -> bool:
        return self.lookups.has_result(request_id) or self.lookups.is_pending(request_id)

    def _offloaded(self, args: m.KeyTpArgs, identity: bytes) -> None:
        try:
            self.lookup(args, identity)
        except Exception:
            logger.exception("large lookup failed")
            self.lookups.lookup(args.key.request_id, [], 1, owner=identity)  # 0 hits, never stuck pending

    def lookup(self, args: m.KeyTpArgs, identity: bytes) -> None:
        """LOOKUP without the connection limits (they are :meth:`lookup_bounded`'s)."""
        key = args.key
        self.registry.heard(identity)
        hits = 0
        try:
            if key.num_kv_readers < 1:
                raise RequestRejected(f"num_kv_readers must be >= 1, got {key.num_kv_readers}")
            registered = self.registry.has_layout(key.model_name, key.world_size)
            end = self.planner.lookup_end(key)
            if registered and end > 0:
                chunk_keys = self.planner.lookup_keys(key, end)
                per_chunk = len(chunk_keys[0]) if chunk_keys else 0
                prefetch = self.prefetch
                nbytes = self.registry.object_nbytes_for(key.model_name, key.world_size)
                l2 = prefetch is not None and nbytes is not None
                hits = self.lookups.lookup(key.request_id, chunk_keys, key.num_kv_readers, owner=identity,
                                           pending=l2)
                if self.metrics:
                    dp_metrics.record_lookup(key.model_name, key.cache_salt, end)
                    dp_metrics.record_lookup_hits(key.model_name, key.cache_salt, "l1", hits, self.chunk_size,
                                                  per_chunk)
                if l2 and hits < len(chunk_keys):
                    l1_hits = hits
                    prefetch.submit(chunk_keys[hits:], nbytes, key.num_kv_readers,
                                    lambda loaded: self._loaded(key, l1_hits, loaded, per_chunk))
                elif l2:
                    self.lookups.complete(key.request_id, hits, [], key.num_kv_readers)
                return None
            if self.metrics:
                dp_metrics.record_early_exit("no_gpu_context" if not registered else "empty_chunk_hashes")
        except (RequestRejected, InvalidKeyError, ValueError) as exc:
            logger.debug("lookup rejected: %s", safe_text(exc))
            if self.metrics:
                dp_metrics.record_early_exit("rejected")
        self.lookups.lookup(key.request_id, [], 1, owner=identity)  # records 0 hits for the query
        assert hits == 0
        return None

    def _loaded(self, key: m.IPCCacheServerKey, l1_hits: int, loaded: Any, keys_per_chunk: int) -> int:
        """The L2 part of a lookup finished: ``loaded`` chunks follow the ``l1_hits`` found in L1."""
        if self.metrics:
            dp_metrics.record_lookup_hits(key.model_name, key.cache_salt, "l2", len(loaded), self.chunk_size,
                                          keys_per_chunk)
        return self.lookups.complete(key.request_id, l1_hits, loaded, key.num_kv_readers)

    def query_prefetch_status(self, args: m.RequestIdArgs, identity: bytes) -> int | None:
        """Hit chunks once the lookup is done (exactly once), None while it loads from L2, 0 if unknown."""
        return self.lookups.take_result(args.request_id)

    def wait_prefetch_status(self, args: m.WaitPrefetchStatusArgs, identity: bytes) -> int | None:
        """As QUERY, waiting up to ``timeout`` seconds (capped at 60) for a lookup still loading."""
        return self.lookups.wait_result(args.request_id, min(max(args.timeout, 0.0), 60.0))

    def free_lookup_locks(self, args: m.KeyTpArgs, identity: bytes) -> None:
        key = args.key
        self.lookups.release_chunks(key.request_id, *chunk_span(key.start, key.end, self.chunk_size))
        return None

    def end_session(self, args: m.RequestIdArgs, identity: bytes) -> None:
        request_id = args.request_id
        keys = self.planner.end_session_keys(request_id, self.sessions.get(request_id))
        if keys:
            self.l1.touch(keys)  # recency for LRU, as LMCache does
        self.lookups.release_request(request_id)
        self.sessions.remove(request_id)
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
