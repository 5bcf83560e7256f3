"""The data-path operations of the LMCache 0.5.6 protocol, on top of the storage engine.

Each public ``op_*`` method takes the op's decoded ``Args`` Struct and the
client identity and returns the reply value. A well-formed request that cannot
be served returns the op's in-band failure value (``(b"", False)`` for STORE /
RETRIEVE, 0 hits for LOOKUP, ...), never silence; see
``docs/datapath.md`` and :mod:`lmcache_core.transport.wire` for each op's semantics.

Replies carry an empty event handle ``b""``: on CPU the copy is finished before
the reply is sent, which is what ``b""`` tells the client ("no device work was
submitted; the reply itself means completion").
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lmcache_core.hashing import chunk_span
from lmcache_core.keys import InvalidKeyError, ObjectKey, kv_rank_for_worker, kv_ranks_for_world, validate_cache_salt
from lmcache_core.keys import validate_model_name
from lmcache_core.storage.l1 import L1Result
from lmcache_core.storage.lookups import LookupTracker
from lmcache_core.transfer import cuda_ipc
from lmcache_core.transfer.kvcache import RegisteredKVCache, TransferError
from lmcache_core.transfer.layout import parse_dtype, resolve_kv_layout
from lmcache_core.transfer.tensor_pickle import UnsafePickleError, dumps_tensors, loads_tensors
from lmcache_core.transfer.shm import ShmSegmentCache
from lmcache_core.transport import messages as m
from lmcache_core.transport import metrics as dp_metrics
from lmcache_core.transport.limits import SECTION as LIMITS_SECTION
from lmcache_core.transport.limits import SecurityConfig
from lmcache_core.transport.wire import Op
from lmcache_core.transport.zmq_server import Dispatch, HandlerSpec, safe_text

if TYPE_CHECKING:
    from lmcache_core.server import CacheServer

logger = logging.getLogger(__name__)

FAILED_TRANSFER = (b"", False)
DONE = b""


class RequestRejected(Exception):
    """A well-formed request that cannot be served (answered with the op's failure value)."""


@dataclass
class _Worker:
    kv: RegisteredKVCache
    registered_at: float
    last_seen: float
    pinged: bool = False
    signature: Any = None  # what the registration named: a different one replaces this worker


@dataclass
class _EngineDrivenWorker:
    """A worker that gathers/scatters itself and ships chunk tensors (ops 14-19)."""

    model_name: str
    world_size: int
    object_shape: tuple[int, ...]
    dtype: torch.dtype
    last_seen: float
    pinged: bool = False
    signature: Any = None

    @property
    def object_nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.object_shape:
            n *= d
        return n

    def close(self) -> None:
        pass


@dataclass
class _Connection:
    """A client connection (ZMQ identity): which worker instances it speaks for, when last heard."""

    last_seen: float
    instances: set[int]
    pinged: bool = False
    lookups: dict[str, None] = field(default_factory=dict)  # request ids looked up, results maybe unqueried


@dataclass
class _RequestMeta:
    model_name: str
    world_size: int
    cache_salt: str


class DataPath:
    """Registered workers, lookups and the STORE/RETRIEVE copies for one server."""

    def __init__(self, server: CacheServer, clock: Any = time.monotonic) -> None:
        assert server.storage is not None and server.sessions is not None
        self.server = server
        self.l1 = server.storage.l1
        self.sessions = server.sessions
        self.chunk_size = server.mp_config.chunk_size
        self.metrics = not getattr(server.configs.get("observability"), "disable_metrics", False)
        if self.metrics:
            dp_metrics.bind_datapath(self)
        self.lookups = LookupTracker(self.l1)
        limits = server.configs.get(LIMITS_SECTION)
        self.limits: SecurityConfig = limits if isinstance(limits, SecurityConfig) else SecurityConfig()
        self.segments = ShmSegmentCache(self.limits.shm_policy())
        self.clear_allowed = self.limits.clear_allowed(getattr(server.configs.get("http"), "http_admin_token", None))
        # Lookups of more than limits.large_lookup_tokens tokens hash here, off the ZMQ loop thread.
        self._lookup_pool = ThreadPoolExecutor(1, thread_name_prefix="lmcache-large-lookup")
        self._clock = clock
        self._lock = threading.Lock()
        self._workers: dict[int, _Worker] = {}
        self._engine_driven: dict[int, _EngineDrivenWorker] = {}
        # (model, world size) -> chunk object size, read by every LOOKUP; rebuilt when workers change.
        self._nbytes_memo: dict[tuple[str, int], int] = {}
        self._layouts: dict[tuple[str, int], int] = {}  # (model, world_size) -> live registrations
        self._requests: dict[str, _RequestMeta] = {}
        self._connections: dict[bytes, _Connection] = {}
        # A session that expires (or ends) takes its request's metadata with it.
        self.sessions.add_destroy_listener(self._forget_request)

    def _forget_request(self, session: Any, reason: Any) -> None:
        with self._lock:
            self._requests.pop(session.request_id, None)

    def _heard(self, identity: bytes, instance_id: int | None = None, *, ping: bool = False) -> None:
        """Note that a connection spoke (and for which worker instance): liveness for the reaper."""
        now = self._clock()
        with self._lock:
            conn = self._connections.get(identity)
            if conn is None:
                conn = self._connections[identity] = _Connection(now, set())
            conn.last_seen = now
            conn.pinged |= ping
            if instance_id is not None:
                conn.instances.add(instance_id)

    # -- op table ----------------------------------------------------------------------

    def handler_specs(self) -> dict[Op, HandlerSpec]:
        s, a, n = Dispatch.SYNC, Dispatch.AFFINITY, Dispatch.NORMAL
        return {
            Op.NOOP: HandlerSpec(lambda args, ident: "OK", s),
            Op.GET_CHUNK_SIZE: HandlerSpec(lambda args, ident: self.chunk_size, s),
            Op.GET_EXPERIMENTAL: HandlerSpec(lambda args, ident: [], s),
            Op.PING: HandlerSpec(self.op_ping, n, True),
            Op.REGISTER_KV_CACHE: HandlerSpec(self.op_register_kv_cache, s),
            Op.UNREGISTER_KV_CACHE: HandlerSpec(self.op_unregister_kv_cache, s, None),
            Op.STORE: HandlerSpec(self.op_store, a, FAILED_TRANSFER),
            Op.RETRIEVE: HandlerSpec(self.op_retrieve, a, FAILED_TRANSFER),
            # LOOKUP and its follow-ups run inline: on L1 they are tens of microseconds of
            # work, less than a hand-off to a pool and back costs (LOOKUP p50 is the target).
            Op.LOOKUP: HandlerSpec(self.op_lookup_bounded, s, None),
            Op.QUERY_PREFETCH_STATUS: HandlerSpec(self.op_query_prefetch_status, s, 0),
            Op.WAIT_PREFETCH_STATUS: HandlerSpec(self.op_wait_prefetch_status, n, 0),
            Op.FREE_LOOKUP_LOCKS: HandlerSpec(self.op_free_lookup_locks, s, None),
            Op.END_SESSION: HandlerSpec(self.op_end_session, n, None),
            Op.CLEAR: HandlerSpec(self.op_clear, n),
            Op.REPORT_BLOCK_ALLOCATION: HandlerSpec(lambda args, ident: None, n, None),
            # engine-driven (pickle) transfers: the worker gathers and scatters itself
            Op.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT: HandlerSpec(self.op_register_engine_driven, s),
            Op.UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT: HandlerSpec(self.op_unregister_kv_cache, s, None),
            Op.PREPARE_STORE: HandlerSpec(lambda args, ident: m.PrepareStoreResponse(context={}), a,
                                          m.PrepareStoreResponse(context={})),
            Op.COMMIT_STORE: HandlerSpec(self.op_commit_store, a, False),
            Op.PREPARE_RETRIEVE: HandlerSpec(self.op_prepare_retrieve, a, m.PrepareRetrieveResponse(success=False)),
            Op.COMMIT_RETRIEVE: HandlerSpec(lambda args, ident: True, a, False),
        }

    # -- management --------------------------------------------------------------------

    def op_ping(self, args: m.PingArgs, identity: bytes) -> bool:
        self._heard(identity, args.instance_id, ping=True)
        if args.instance_id is not None:
            with self._lock:
                worker: Any = self._workers.get(args.instance_id) or self._engine_driven.get(args.instance_id)
                if worker is not None:
                    worker.last_seen = self._clock()
                    worker.pinged = True
        return True

    def op_register_kv_cache(self, args: m.RegisterKVCacheArgs, identity: bytes) -> None:
        self._heard(identity, args.instance_id)
        signature = (args.model_name, args.world_size, [w.descriptor for w in args.kv_cache], args.layout_hints,
                     args.engine_group_infos)
        with self._lock:
            known = self._workers.get(args.instance_id)
            if known is not None and known.signature == signature:  # idempotent: refreshes liveness
                known.last_seen = self._clock()
                return None
        if known is not None:  # a restarted worker reusing its id: never keep the dead one's mapping
            self.drop_worker(args.instance_id, reason="re-registered with different descriptors")
        validate_model_name(args.model_name)
        if args.world_size < 1:
            raise RequestRejected(f"world_size must be >= 1, got {args.world_size}")
        descriptors = [w.descriptor for w in args.kv_cache]
        if descriptors and all(isinstance(d, m.CudaIPCData) for d in descriptors):
            kv = self._register_cuda(args, descriptors)
        elif all(isinstance(d, m.CpuShmIPCData) for d in descriptors):
            kv = self._register_cpu_shm(args, descriptors)
        else:
            kinds = sorted({type(d).__name__ for d in descriptors})
            raise RequestRejected(f"KV cache descriptors must all be cpu_shm, or all cuda (got {kinds})")
        now = self._clock()
        with self._lock:
            if args.instance_id in self._workers:  # lost a race with itself: keep the first
                kv.close()
                return None
            self._workers[args.instance_id] = _Worker(kv, now, now, signature=signature)
            self._nbytes_memo = {}
            key = (args.model_name, args.world_size)
            self._layouts[key] = self._layouts.get(key, 0) + 1
        logger.info("registered KV cache of instance %s (%s, world size %d, %d layers on %s)",
                    args.instance_id, safe_text(args.model_name), args.world_size, len(descriptors), kv.device)
        return None

    def _register_cpu_shm(self, args: m.RegisterKVCacheArgs, descriptors: list[Any]) -> RegisteredKVCache:
        fields = [
            {"shm_name": d.shm_name, "nbytes": d.nbytes, "dtype": d.metadata.dtype, "shape": list(d.metadata.shape),
             "stride": list(d.metadata.stride), "storage_offset": d.metadata.storage_offset,
             "device_uuid": d.metadata.device_uuid}
            for d in descriptors
        ]
        return RegisteredKVCache.from_cpu_shm(
            self.segments, args.instance_id, args.model_name, args.world_size, fields,
            dict(args.layout_hints or {}), list(args.engine_group_infos or []), self.chunk_size,
        )

    def _register_cuda(self, args: m.RegisterKVCacheArgs, descriptors: list[Any]) -> RegisteredKVCache:
        """CUDA IPC: rebuild each layer on the local device with the same UUID (zero copy).

        Written for CUDA builds; a server without CUDA refuses with a clear error.
        """
        layers = [cuda_ipc.rebuild_cuda_tensor(d.handle, d.metadata.dtype, d.metadata.shape, d.metadata.stride,
                                               d.metadata.storage_offset, d.metadata.device_uuid)
                  for d in descriptors]
        layout = resolve_kv_layout(layers, dict(args.layout_hints or {}), list(args.engine_group_infos or []),
                                   self.chunk_size, default_kv_layout="NHD")
        return RegisteredKVCache(args.instance_id, args.model_name, args.world_size, layers, layout)

    def _wait_for_worker(self, kv: RegisteredKVCache, event_handle: bytes) -> None:
        """CUDA workers hand an interprocess event: copies must wait until the worker's kernels are done."""
        if kv.device.type == "cuda":
            cuda_ipc.wait_ipc_event(event_handle, kv.device)

    def _done_handle(self, kv: RegisteredKVCache) -> bytes:
        """b"" on CPU (the copy is complete when we reply); on CUDA an event the worker waits on."""
        if kv.device.type == "cuda":
            return cuda_ipc.export_ipc_event(kv.device)
        return DONE

    def op_unregister_kv_cache(self, args: m.InstanceArgs, identity: bytes) -> None:
        self.drop_worker(args.instance_id, reason="unregistered")
        return None

    def registered_kv(self, instance_id: int) -> RegisteredKVCache | None:
        """The KV cache a worker registered (for ``/kvcache/check``), or None."""
        with self._lock:
            worker = self._workers.get(instance_id)
            return worker.kv if worker is not None else None

    def drop_worker(self, instance_id: int, reason: str) -> bool:
        """Forget a worker: its mapping, its layout reference (and, when it died, its locks)."""
        with self._lock:
            self._nbytes_memo = {}
            worker: Any = self._workers.pop(instance_id, None)
            if worker is None:
                worker = self._engine_driven.pop(instance_id, None)
            if worker is None:
                return False
            model, ws = (worker.kv.model_name, worker.kv.world_size) if isinstance(worker, _Worker) else \
                (worker.model_name, worker.world_size)
            key = (model, ws)
            left = self._layouts.get(key, 1) - 1
            if left > 0:
                self._layouts[key] = left
            else:
                self._layouts.pop(key, None)
        if isinstance(worker, _Worker):
            worker.kv.close()
        logger.info("dropped KV cache of instance %s (%s)", instance_id, reason)
        return True

    def op_clear(self, args: m.ClearArgs, identity: bytes) -> None:
        """CLEAR, unless the server refuses it on the data path (``security.data_path_clear``): then the
        error reply, so the client knows nothing was cleared (there is no in-band failure value)."""
        if not self.clear_allowed:
            raise RequestRejected("CLEAR is disabled on the data path (use the admin-guarded POST /clear-cache)")
        self.l1.clear(force=bool(args.force))
        return None

    # -- keys ---------------------------------------------------------------------------

    def _chunk_range(self, key: m.IPCCacheServerKey) -> tuple[int, int]:
        """A transfer's chunks ``[first, stop)`` by :func:`chunk_span`: ``start`` must be chunk-aligned
        (LMCache asserts it), an unaligned ``end`` drops its partial chunk (complete chunks only)."""
        c = self.chunk_size
        if key.start < 0 or key.start % c or key.end < key.start:
            raise RequestRejected(f"token range [{key.start}, {key.end}) does not start on a chunk boundary "
                                  f"(chunk size {c})")
        return chunk_span(key.start, key.end, c, len(key.token_ids))

    def _check_request_size(self, key: m.IPCCacheServerKey) -> None:
        """The request id and token list are within ``limits`` (else :class:`RequestRejected`)."""
        limits = self.limits
        if len(key.request_id) > limits.max_request_id_length:
            raise RequestRejected(f"request id of {len(key.request_id)} characters "
                                  f"(at most {limits.max_request_id_length})")
        if len(key.token_ids) > limits.max_lookup_tokens:
            raise RequestRejected(f"{len(key.token_ids)} tokens (at most {limits.max_lookup_tokens})")

    def _hashes(self, key: m.IPCCacheServerKey, start: int, end: int) -> list[bytes]:
        self._check_request_size(key)
        validate_model_name(key.model_name)
        validate_cache_salt(key.cache_salt)
        session = self.sessions.get_or_create(key.request_id)
        with self._lock:
            self._requests[key.request_id] = _RequestMeta(key.model_name, key.world_size, key.cache_salt)
        return session.hashes_for(key.token_ids, start, end)

    def _worker(self, instance_id: int) -> _Worker | None:
        with self._lock:
            worker = self._workers.get(instance_id)
            if worker is not None:
                worker.last_seen = self._clock()
            return worker

    # -- store / retrieve -----------------------------------------------------------------

    def _transfer_target(self, args: m.StoreArgs | m.RetrieveArgs, identity: bytes,
                         op: str) -> tuple[RegisteredKVCache, list[ObjectKey]] | None:
        """The worker's KV cache and the range's object keys at its rank, or None (in-band failure)."""
        key = args.key
        self._heard(identity, args.instance_id)
        worker = self._worker(args.instance_id)
        if worker is None or key.worker_id is None:
            return None
        try:
            first, stop = self._chunk_range(key)
            worker.kv.validate_block_ids(args.block_ids, stop - first)
            keys = self._object_keys(key, first, stop)
        except (RequestRejected, InvalidKeyError, TransferError, ValueError) as exc:
            logger.debug("%s rejected: %s", op, safe_text(exc))
            return None
        return worker.kv, keys

    def _object_keys(self, key: m.IPCCacheServerKey, first: int, stop: int) -> list[ObjectKey]:
        """One object key per chunk ``first..stop-1`` at the sending worker's rank."""
        rank = kv_rank_for_worker(key.world_size, key.worker_id)
        c = self.chunk_size
        return [ObjectKey(h, key.model_name, rank, 0, key.cache_salt)
                for h in self._hashes(key, first * c, stop * c)]

    def op_store(self, args: m.StoreArgs, identity: bytes) -> tuple[bytes, bool]:
        target = self._transfer_target(args, identity, "store")
        if target is None:
            return FAILED_TRANSFER
        kv, all_keys = target
        n = len(all_keys)
        if n == 0:
            return (DONE, True)
        null = kv.null_chunk_mask(args.block_ids, n)
        wanted = [i for i in range(n) if not null[i]]
        keys = [all_keys[i] for i in wanted]
        reserved = self.l1.reserve_write(keys, kv.object_nbytes)
        outs: list[Any] = [None] * n
        written_keys = []
        for i, k, res, view in zip(wanted, keys, reserved.results, reserved.views):
            if res == L1Result.SUCCESS:
                outs[i] = view
                written_keys.append(k)
        if not written_keys:
            return (DONE, True)  # everything already stored (or no room: L1 is full)
        try:
            self._wait_for_worker(kv, args.event_ipc_handle)
            started = time.perf_counter()
            kv.gather_chunks(args.block_ids, outs)
            if kv.device.type == "cuda":  # device-to-host copies must land before the objects become readable
                torch.cuda.current_stream(kv.device).synchronize()
            elapsed = time.perf_counter() - started
        except Exception:
            self.l1.delete(written_keys, force=True)
            raise
        self.l1.finish_write(written_keys)
        if self.metrics:
            dp_metrics.record_transfer("store", args.key.model_name, args.key.cache_salt, kv.device.type,
                                       len(written_keys), len(written_keys) * kv.object_nbytes, elapsed)
        return (self._done_handle(kv), True)

    def op_retrieve(self, args: m.RetrieveArgs, identity: bytes) -> tuple[bytes, bool]:
        target = self._transfer_target(args, identity, "retrieve")
        if target is None:
            return FAILED_TRANSFER
        kv, keys = target
        key = args.key
        if not self.lookups.holds(key.request_id, keys):
            return FAILED_TRANSFER
        try:
            read = self.l1.read(keys)
            if any(r != L1Result.SUCCESS for r in read.results):
                return FAILED_TRANSFER
            self._wait_for_worker(kv, args.event_ipc_handle)
            started = time.perf_counter()
            kv.scatter_chunks(args.block_ids, read.views, args.skip_first_n_tokens)
            if kv.device.type == "cuda":  # the L1 objects are read until the host-to-device copies finish
                torch.cuda.current_stream(kv.device).synchronize()
            elapsed = time.perf_counter() - started
        finally:
            # This reader is done with its share of the lookup's locks, whether the copy worked or not.
            self.lookups.release_one(key.request_id, keys)
        if self.metrics:
            dp_metrics.record_transfer("retrieve", key.model_name, key.cache_salt, kv.device.type,
                                       len(keys), len(keys) * kv.object_nbytes, elapsed)
        return (self._done_handle(kv), True)

    # -- engine-driven (pickle) transfers -----------------------------------------------------

    def op_register_engine_driven(self, args: m.RegisterEngineDrivenArgs, identity: bytes) -> Any:
        p = args.payload
        self._heard(identity, p.instance_id)
        with self._lock:
            known = self._engine_driven.get(p.instance_id)
            if known is not None and known.signature == p:
                known.last_seen = self._clock()
                return m.RegisterEngineDrivenContextResponse(shm_name="", pool_size=0)
        if known is not None:  # a restarted worker reusing its id with another model or shape
            self.drop_worker(p.instance_id, reason="re-registered with different parameters")
        validate_model_name(p.model_name)
        if p.world_size < 1 or p.num_layers < 1 or p.hidden_dim_size < 1:
            raise RequestRejected("world_size, num_layers and hidden_dim_size must be positive")
        dtype = parse_dtype(p.dtype_str.removeprefix("torch."))
        # The client ships MLA (single-plane) chunks as [L, T, H] and the others as [2, L, T, H]
        # (EngineDrivenTransferContext.register); T is one chunk of tokens.
        shape = ((p.num_layers, self.chunk_size, p.hidden_dim_size) if p.use_mla
                 else (2, p.num_layers, self.chunk_size, p.hidden_dim_size))
        now = self._clock()
        with self._lock:
            if p.instance_id not in self._engine_driven:
                self._nbytes_memo = {}
                self._engine_driven[p.instance_id] = _EngineDrivenWorker(p.model_name, p.world_size, shape, dtype,
                                                                         now, False, signature=p)
                key = (p.model_name, p.world_size)
                self._layouts[key] = self._layouts.get(key, 0) + 1
        # An empty shm_name selects the pickle transport on the client.
        return m.RegisterEngineDrivenContextResponse(shm_name="", pool_size=0)

    def _engine_worker(self, instance_id: int) -> _EngineDrivenWorker | None:
        with self._lock:
            worker = self._engine_driven.get(instance_id)
            if worker is not None:
                worker.last_seen = self._clock()
            return worker

    def op_commit_store(self, args: m.CommitStoreArgs, identity: bytes) -> bool:
        key = args.key
        self._heard(identity, args.instance_id)
        worker = self._engine_worker(args.instance_id)
        if worker is None or key.worker_id is None:
            return False
        try:
            first, stop = self._chunk_range(key)
            tensors = loads_tensors(args.data, max_bytes=(stop - first) * worker.object_nbytes)
            keys = self._object_keys(key, first, stop)
        except (RequestRejected, InvalidKeyError, UnsafePickleError, pickle.UnpicklingError, ValueError,
                EOFError) as exc:
            logger.debug("commit_store rejected: %s", safe_text(exc))
            return False
        if len(tensors) != len(keys):
            return False
        reserved = self.l1.reserve_write(keys, worker.object_nbytes)
        ok = True
        written, failed = [], []
        for k, res, view, t in zip(keys, reserved.results, reserved.views, tensors):
            if res != L1Result.SUCCESS:
                continue
            if tuple(t.shape) != worker.object_shape or t.dtype != worker.dtype:
                failed.append(k)
                ok = False
                continue
            view.copy_(t.contiguous().view(torch.uint8).reshape(-1))
            written.append(k)
        if failed:
            self.l1.delete(failed, force=True)
        if written:
            self.l1.finish_write(written)
        return ok

    def op_prepare_retrieve(self, args: m.KeyInstanceArgs, identity: bytes) -> m.PrepareRetrieveResponse:
        key = args.key
        self._heard(identity, args.instance_id)
        worker = self._engine_worker(args.instance_id)
        miss = m.PrepareRetrieveResponse(success=False, data=b"", context={})
        if worker is None or key.worker_id is None:
            return miss
        try:
            keys = self._object_keys(key, *self._chunk_range(key))
        except (RequestRejected, InvalidKeyError, ValueError) as exc:
            logger.debug("prepare_retrieve rejected: %s", safe_text(exc))
            return miss
        if not self.lookups.holds(key.request_id, keys):
            return miss
        try:
            read = self.l1.read(keys)
            if any(r != L1Result.SUCCESS for r in read.results):
                return miss
            tensors = [v.view(worker.dtype).reshape(worker.object_shape).clone() for v in read.views]
        finally:
            self.lookups.release_one(key.request_id, keys)  # 0.5.6 releases here, not at commit
        return m.PrepareRetrieveResponse(success=True, data=dumps_tensors(tensors), context={})

    # -- lookup -------------------------------------------------------------------------

    def op_lookup_bounded(self, args: m.KeyTpArgs, identity: bytes) -> None:
        """LOOKUP with the data path's limits: an oversize request id or token list, or a connection
        with ``max_pending_lookups_per_connection`` results still unqueried, is refused without keeping
        anything (its QUERY answers 0); a long token list is hashed off the loop thread (QUERY answers
        None, "still loading", until it is done)."""
        key = args.key
        try:
            self._check_request_size(key)
            self._note_lookup(identity, key.request_id)
        except RequestRejected as exc:
            logger.debug("lookup refused: %s", safe_text(exc))
            if self.metrics:
                dp_metrics.record_early_exit("rejected")
            return None
        if len(key.token_ids) <= self.limits.large_lookup_tokens:
            return self.op_lookup(args, identity)
        self.lookups.lookup(key.request_id, [], 1, owner=identity, pending=True)
        self._lookup_pool.submit(self._offloaded_lookup, args, identity)
        return None

    def _offloaded_lookup(self, args: m.KeyTpArgs, identity: bytes) -> None:
        try:
            self.op_lookup(args, identity)
        except Exception:
            logger.exception("large lookup failed")
            self.lookups.lookup(args.key.request_id, [], 1, owner=identity)  # 0 hits, never stuck pending

    def _note_lookup(self, identity: bytes, request_id: str) -> None:
        """Count a lookup against its connection's cap of unqueried results."""
        cap = self.limits.max_pending_lookups_per_connection
        with self._lock:
            conn = self._connections.get(identity)
            if conn is None:
                conn = self._connections[identity] = _Connection(self._clock(), set())
            pending = conn.lookups
            if request_id in pending or len(pending) < cap:
                pending[request_id] = None
                return
        live = {rid: None for rid in list(pending) if self.lookups.has_result(rid) or self.lookups.is_pending(rid)}
        with self._lock:
            conn.lookups = live
            if len(live) >= cap:
                raise RequestRejected(f"connection has {len(live)} lookup results nobody queried (at most {cap})")
            live[request_id] = None

    def op_lookup(self, args: m.KeyTpArgs, identity: bytes) -> None:
        key = args.key
        self._heard(identity)
        hits = 0
        try:
            if key.num_kv_readers < 1:
                raise RequestRejected(f"num_kv_readers must be >= 1, got {key.num_kv_readers}")
            with self._lock:
                registered = (key.model_name, key.world_size) in self._layouts
            end = chunk_span(0, key.end, self.chunk_size, len(key.token_ids))[1] * self.chunk_size
            if registered and end > 0:
                hashes = self._hashes(key, 0, end)
                ranks = kv_ranks_for_world(key.world_size)
                chunk_keys = [[ObjectKey(h, key.model_name, r, 0, key.cache_salt) for r in ranks] for h in hashes]
                prefetch = self.server.storage.prefetch if self.server.storage is not None else None
                nbytes = self.object_nbytes_for(key.model_name, key.world_size)
                l2 = prefetch is not None and nbytes is not None
                hits = self.lookups.lookup(key.request_id, chunk_keys, key.num_kv_readers, owner=identity,
                                           pending=l2)
                if self.metrics:
                    dp_metrics.record_lookup(key.model_name, key.cache_salt, end)
                    dp_metrics.record_lookup_hits(key.model_name, key.cache_salt, "l1", hits, self.chunk_size,
                                                  len(ranks))
                if l2 and hits < len(chunk_keys):
                    l1_hits, per_chunk = hits, len(ranks)
                    prefetch.submit(chunk_keys[hits:], nbytes, key.num_kv_readers,  # type: ignore[union-attr]
                                    lambda loaded: self._lookup_loaded(key, l1_hits, loaded, per_chunk))
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

    def _lookup_loaded(self, key: m.IPCCacheServerKey, l1_hits: int, loaded: Any, keys_per_chunk: int) -> int:
        """The L2 part of a lookup finished: ``loaded`` chunks follow the ``l1_hits`` found in L1."""
        if self.metrics:
            dp_metrics.record_lookup_hits(key.model_name, key.cache_salt, "l2", len(loaded), self.chunk_size,
                                          keys_per_chunk)
        return self.lookups.complete(key.request_id, l1_hits, loaded, key.num_kv_readers)

    def op_query_prefetch_status(self, args: Any, identity: bytes) -> int | None:
        """Hit chunks once the lookup is done (exactly once), None while it loads from L2, 0 if unknown."""
        return self.lookups.take_result(args.request_id)

    def op_wait_prefetch_status(self, args: m.WaitPrefetchStatusArgs, identity: bytes) -> int | None:
        """As QUERY, waiting up to ``timeout`` seconds (capped at 60) for a lookup still loading."""
        return self.lookups.wait_result(args.request_id, min(max(args.timeout, 0.0), 60.0))

    def object_nbytes_for(self, model_name: str, world_size: int) -> int | None:
        """The chunk object size of a registered (model, world size), from any of its workers."""
        nbytes = self._nbytes_memo.get((model_name, world_size))
        if nbytes is not None:
            return nbytes
        with self._lock:
            nbytes = self._object_nbytes_locked(model_name, world_size)
            if nbytes is not None:
                self._nbytes_memo[(model_name, world_size)] = nbytes
        return nbytes

    def _object_nbytes_locked(self, model_name: str, world_size: int) -> int | None:
        for w in self._workers.values():
            if w.kv.model_name == model_name and w.kv.world_size == world_size:
                return w.kv.object_nbytes
        for e in self._engine_driven.values():
            if e.model_name == model_name and e.world_size == world_size:
                return e.object_nbytes
        return None

    def op_free_lookup_locks(self, args: m.KeyTpArgs, identity: bytes) -> None:
        key = args.key
        self.lookups.release_chunks(key.request_id, *chunk_span(key.start, key.end, self.chunk_size))
        return None

    def op_end_session(self, args: m.RequestIdArgs, identity: bytes) -> None:
        request_id = args.request_id
        session = self.sessions.get(request_id)
        with self._lock:
            meta = self._requests.pop(request_id, None)
        if session is not None and meta is not None:
            hashes = session.cached_hashes()
            ranks = kv_ranks_for_world(meta.world_size)
            keys = [ObjectKey(h, meta.model_name, r, 0, meta.cache_salt) for h in hashes for r in ranks]
            if keys:
                self.l1.touch(keys)  # recency for LRU, as LMCache does
        self.lookups.release_request(request_id)
        self.sessions.remove(request_id)
        return None

    # -- liveness ------------------------------------------------------------------------

    def reap(self, reap_timeout: float, grace: float) -> list[int]:
        """Drop workers silent past their budget, and everything their connections held.

        A worker is silent when neither a PING with its id nor a transfer came
        within ``reap_timeout`` (``grace`` if it never pinged). Lookup locks belong
        to the connection that sent the LOOKUP: a connection whose workers are all
        gone, or a worker-less one (vLLM's scheduler pings with no id) that fell
        silent, loses its requests' locks, results and sessions. Returns the
        dropped instance ids.
        """
        now = self._clock()
        with self._lock:
            everyone: list[tuple[int, Any]] = [*self._workers.items(), *self._engine_driven.items()]
            dead = [iid for iid, w in everyone if now - w.last_seen > (reap_timeout if w.pinged else grace)]
        for iid in dead:
            self.drop_worker(iid, reason="reaped: no ping or transfer within its timeout")
        with self._lock:
            live = set(self._workers) | set(self._engine_driven)
            gone = []
            for ident, conn in list(self._connections.items()):
                if conn.instances:
                    lost = not (conn.instances & live)
                else:
                    lost = now - conn.last_seen > (reap_timeout if conn.pinged else grace)
                if lost:
                    gone.append((ident, list(conn.lookups)))
                    del self._connections[ident]
        for ident, looked_up in gone:
            # Its requests' sessions too: those still holding locks, and those it looked up whose
            # END_SESSION never came (a worker killed between RETRIEVE and END_SESSION; issue 18).
            for request_id in dict.fromkeys([*self.lookups.release_owner(ident), *looked_up]):
                self.sessions.remove(request_id)
        return dead

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            workers = dict(self._workers)
            layouts = dict(self._layouts)
            engine_driven = dict(self._engine_driven)
        return {
            "registered_gpu_ids": sorted(workers),
            "registered_non_cuda_instance_ids": sorted(engine_driven),
            # LMCache's engine-driven module reports {model_name, world_size, block_size, use_mla};
            # our block is the chunk (the worker ships whole chunks), and we add the object's shape.
            "non_cuda_context_meta": {
                str(iid): {"model_name": w.model_name, "world_size": w.world_size, "block_size": self.chunk_size,
                           "use_mla": len(w.object_shape) == 3, "dtype": str(w.dtype).removeprefix("torch."),
                           "object_shape": list(w.object_shape), "object_nbytes": w.object_nbytes}
                for iid, w in sorted(engine_driven.items())
            },
            "cache_context_meta": {
                str(iid): {"model_name": w.kv.model_name, "world_size": w.kv.world_size,
                           "object_nbytes": w.kv.object_nbytes}
                for iid, w in workers.items()
            },
            "registered_layouts": [{"model_name": k[0], "world_size": k[1], "registrations": v}
                                   for k, v in sorted(layouts.items())],
            "lookup_locked_objects": self.lookups.locked_object_count(),
            "connections": len(self._connections),
            "active_prefetch_jobs": self.lookups.pending_results(),
        }

    def close(self) -> None:
        with self._lock:
            ids = [*self._workers, *self._engine_driven]
        for iid in ids:
            self.drop_worker(iid, reason="server stopping")
        self._lookup_pool.shutdown(wait=True, cancel_futures=True)
        self.segments.close()
