"""Who is connected: registered workers (both transfer modes), client connections, liveness.

:class:`WorkerRegistry` owns the registrations (REGISTER_KV_CACHE's mapped KV caches and the
engine-driven contexts), the per-connection records the reaper and the lookup cap read, the
registered layouts ``(model, world size)`` LOOKUP checks, and the chunk object size per layout.
It knows nothing of L1, lookups or sessions: :meth:`reap` hands each lost connection to the
caller, which releases what that connection held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lmcache_core.keys import validate_model_name
from lmcache_core.transfer import cuda_ipc
from lmcache_core.transfer.kvcache import RegisteredKVCache
from lmcache_core.transfer.layout import parse_dtype, resolve_kv_layout
from lmcache_core.transfer.shm import ShmSegmentCache
from lmcache_core.transport import messages as m
from lmcache_core.transport.errors import RequestRejected
from lmcache_core.transport.zmq_server import safe_text

logger = logging.getLogger(__name__)


@dataclass
class Worker:
    """A worker whose KV cache the server maps and copies itself (REGISTER_KV_CACHE)."""

    kv: RegisteredKVCache
    registered_at: float
    last_seen: float
    pinged: bool = False
    signature: Any = None  # what the registration named: a different one replaces this worker

    @property
    def layout_key(self) -> tuple[str, int]:
        return (self.kv.model_name, self.kv.world_size)

    @property
    def object_nbytes(self) -> int:
        return self.kv.object_nbytes

    def close(self) -> None:
        self.kv.close()


@dataclass
class EngineDrivenWorker:
    """A worker that gathers/scatters itself and ships chunk tensors (ops 14-19)."""

    model_name: str
    world_size: int
    object_shape: tuple[int, ...]
    dtype: torch.dtype
    last_seen: float
    pinged: bool = False
    signature: Any = None

    @property
    def layout_key(self) -> tuple[str, int]:
        return (self.model_name, self.world_size)

    @property
    def object_nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.object_shape:
            n *= d
        return n

    def close(self) -> None:
        pass


@dataclass
class Connection:
    """A client connection (ZMQ identity): which worker instances it speaks for, when last heard."""

    last_seen: float
    instances: set[int]
    pinged: bool = False
    lookups: dict[str, None] = field(default_factory=dict)  # request ids looked up, results maybe unqueried


class WorkerRegistry:
    """Registered workers and connections of one server (thread-safe)."""

    def __init__(self, segments: ShmSegmentCache, chunk_size: int, clock: Callable[[], float] = time.monotonic):
        self.segments = segments
        self.chunk_size = chunk_size
        self._clock = clock
        self._lock = threading.Lock()
        self._workers: dict[int, Worker] = {}
        self._engine_driven: dict[int, EngineDrivenWorker] = {}
        # (model, world size) -> chunk object size, read by every LOOKUP; rebuilt when workers change.
        self._nbytes_memo: dict[tuple[str, int], int] = {}
        self._layouts: dict[tuple[str, int], int] = {}  # (model, world_size) -> live registrations
        self._connections: dict[bytes, Connection] = {}

    # -- connections ------------------------------------------------------------------

    def heard(self, identity: bytes, instance_id: int | None = None, *, ping: bool = False) -> None:
        """Note that a connection spoke (and for which worker instance): liveness for the reaper."""
        now = self._clock()
        with self._lock:
            conn = self._connections.get(identity)
            if conn is None:
                conn = self._connections[identity] = Connection(now, set())
            conn.last_seen = now
            conn.pinged |= ping
            if instance_id is not None:
                conn.instances.add(instance_id)

    def ping(self, identity: bytes, instance_id: int | None) -> None:
        """PING: the connection and (with an id) its worker are alive; the worker is now on the ping budget."""
        self.heard(identity, instance_id, ping=True)
        if instance_id is not None:
            with self._lock:
                worker: Any = self._workers.get(instance_id) or self._engine_driven.get(instance_id)
                if worker is not None:
                    worker.last_seen = self._clock()
                    worker.pinged = True

    def note_lookup(self, identity: bytes, request_id: str, cap: int, still_open: Callable[[str], bool]) -> None:
        """Count a lookup against its connection's cap of unqueried results (:class:`RequestRejected` past it).

        ``still_open(request_id)``: whether a lookup's result is still waiting for its QUERY; the
        others are pruned before the cap is applied.
        """
        with self._lock:
            conn = self._connections.get(identity)
            if conn is None:
                conn = self._connections[identity] = Connection(self._clock(), set())
            pending = conn.lookups
            if request_id in pending or len(pending) < cap:
                pending[request_id] = None
                return
        live = {rid: None for rid in list(pending) if still_open(rid)}
        with self._lock:
            conn.lookups = live
            if len(live) >= cap:
                raise RequestRejected(f"connection has {len(live)} lookup results nobody queried (at most {cap})")
            live[request_id] = None

    # -- registration -----------------------------------------------------------------

    def register_kv_cache(self, args: m.RegisterKVCacheArgs) -> None:
        """REGISTER_KV_CACHE: map the worker's KV cache (idempotent; a changed registration replaces it)."""
        signature = (args.model_name, args.world_size, [w.descriptor for w in args.kv_cache], args.layout_hints,
                     args.engine_group_infos)
        with self._lock:
            known = self._workers.get(args.instance_id)
            if known is not None and known.signature == signature:  # idempotent: refreshes liveness
                known.last_seen = self._clock()
                return
        if known is not None:  # a restarted worker reusing its id: never keep the dead one's mapping
            self.drop(args.instance_id, reason="re-registered with different descriptors")
        validate_model_name(args.model_name)
        if args.world_size < 1:
            raise RequestRejected(f"world_size must be >= 1, got {args.world_size}")
        descriptors = [w.descriptor for w in args.kv_cache]
        if descriptors and all(isinstance(d, m.CudaIPCData) for d in descriptors):
            kv = self._map_cuda(args, descriptors)
        elif all(isinstance(d, m.CpuShmIPCData) for d in descriptors):
            kv = self._map_cpu_shm(args, descriptors)
        else:
            kinds = sorted({type(d).__name__ for d in descriptors})
            raise RequestRejected(f"KV cache descriptors must all be cpu_shm, or all cuda (got {kinds})")
        now = self._clock()
        with self._lock:
            if args.instance_id in self._workers:  # lost a race with itself: keep the first
                kv.close()
                return
            self._add_locked(args.instance_id, self._workers, Worker(kv, now, now, signature=signature))
        logger.info("registered KV cache of instance %s (%s, world size %d, %d layers on %s)",
                    args.instance_id, safe_text(args.model_name), args.world_size, len(descriptors), kv.device)

    def _map_cpu_shm(self, args: m.RegisterKVCacheArgs, descriptors: list[Any]) -> RegisteredKVCache:
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

    def _map_cuda(self, args: m.RegisterKVCacheArgs, descriptors: list[Any]) -> RegisteredKVCache:
        """CUDA IPC: rebuild each layer on the local device with the same UUID (zero copy).

        Written for CUDA builds; a server without CUDA refuses with a clear error.
        """
        layers = [cuda_ipc.rebuild_cuda_tensor(d.handle, d.metadata.dtype, d.metadata.shape, d.metadata.stride,
                                               d.metadata.storage_offset, d.metadata.device_uuid)
                  for d in descriptors]
        layout = resolve_kv_layout(layers, dict(args.layout_hints or {}), list(args.engine_group_infos or []),
                                   self.chunk_size, default_kv_layout="NHD")
        return RegisteredKVCache(args.instance_id, args.model_name, args.world_size, layers, layout)

    def register_engine_driven(self, p: m.RegisterEngineDrivenContextPayload) -> None:
        """REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT: the chunk shape the worker will ship (idempotent)."""
        with self._lock:
            known = self._engine_driven.get(p.instance_id)
            if known is not None and known.signature == p:
                known.last_seen = self._clock()
                return
        if known is not None:  # a restarted worker reusing its id with another model or shape
            self.drop(p.instance_id, reason="re-registered with different parameters")
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
                self._add_locked(p.instance_id, self._engine_driven,
                                 EngineDrivenWorker(p.model_name, p.world_size, shape, dtype, now, False, signature=p))

    def _add_locked(self, instance_id: int, table: dict[int, Any], worker: Worker | EngineDrivenWorker) -> None:
        table[instance_id] = worker
        self._nbytes_memo = {}
        key = worker.layout_key
        self._layouts[key] = self._layouts.get(key, 0) + 1

    def drop(self, instance_id: int, reason: str) -> bool:
        """Forget a worker: its mapping and its layout reference. False if it was not registered."""
        with self._lock:
            self._nbytes_memo = {}
            worker: Worker | EngineDrivenWorker | None = self._workers.pop(instance_id, None)
            if worker is None:
                worker = self._engine_driven.pop(instance_id, None)
            if worker is None:
                return False
            key = worker.layout_key
            left = self._layouts.get(key, 1) - 1
            if left > 0:
                self._layouts[key] = left
            else:
                self._layouts.pop(key, None)
        worker.close()
        logger.info("dropped KV cache of instance %s (%s)", instance_id, reason)
        return True

    # -- reads ------------------------------------------------------------------------

    def worker(self, identity: bytes, instance_id: int) -> Worker | None:
        """A transfer from ``identity`` for ``instance_id``: both are alive (a transfer counts as a sign
        of life); the registered worker, or None."""
        self.heard(identity, instance_id)
        return self._touch(self._workers, instance_id)

    def engine_worker(self, identity: bytes, instance_id: int) -> EngineDrivenWorker | None:
        """As :meth:`worker`, for an engine-driven registration."""
        self.heard(identity, instance_id)
        return self._touch(self._engine_driven, instance_id)

    def _touch(self, table: dict[int, Any], instance_id: int) -> Any:
        with self._lock:
            worker = table.get(instance_id)
            if worker is not None:
                worker.last_seen = self._clock()
            return worker

    def registered_kv(self, instance_id: int) -> RegisteredKVCache | None:
        """The KV cache a worker registered (for ``/kvcache/check``), or None."""
        with self._lock:
            worker = self._workers.get(instance_id)
            return worker.kv if worker is not None else None

    def has_layout(self, model_name: str, world_size: int) -> bool:
        """Whether any worker of ``(model_name, world_size)`` is registered (LOOKUP answers 0 otherwise)."""
        return (model_name, world_size) in self._layouts  # one dict read: atomic under the GIL

    def object_nbytes_for(self, model_name: str, world_size: int) -> int | None:
        """The chunk object size of a registered (model, world size), from any of its workers."""
        nbytes = self._nbytes_memo.get((model_name, world_size))
        if nbytes is not None:
            return nbytes
        with self._lock:
            for w in [*self._workers.values(), *self._engine_driven.values()]:
                if w.layout_key == (model_name, world_size):
                    self._nbytes_memo[(model_name, world_size)] = w.object_nbytes
                    return w.object_nbytes
        return None

    # -- liveness ---------------------------------------------------------------------

    def reap(self, reap_timeout: float, grace: float, release: Callable[[bytes, list[str]], None]) -> list[int]:
        """Drop workers silent past their budget; hand each connection lost with them to ``release``.

        A worker is silent when neither a PING with its id nor a transfer came within
        ``reap_timeout`` (``grace`` if it never pinged). A connection whose workers are all
        gone, or a worker-less one (vLLM's scheduler pings with no id) that fell silent, is
        forgotten and ``release(identity, request ids it looked up)`` is called for it.
        Returns the dropped instance ids.
        """
        now = self._clock()
        with self._lock:
            everyone: list[tuple[int, Any]] = [*self._workers.items(), *self._engine_driven.items()]
            dead = [iid for iid, w in everyone if now - w.last_seen > (reap_timeout if w.pinged else grace)]
        for iid in dead:
            self.drop(iid, reason="reaped: no ping or transfer within its timeout")
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
            release(ident, looked_up)
        return dead

    def connection_count(self) -> int:
        return len(self._connections)

    def status(self) -> dict[str, Any]:
        """The registration part of the data path's status (``/status``, ``/kvcache/check``)."""
        with self._lock:
            workers = dict(self._workers)
            layouts = dict(self._layouts)
            engine_driven = dict(self._engine_driven)
        chunk_size = self.chunk_size
        return {
            "registered_gpu_ids": sorted(workers),
            "registered_non_cuda_instance_ids": sorted(engine_driven),
            # LMCache's engine-driven module reports {model_name, world_size, block_size, use_mla};
            # our block is the chunk (the worker ships whole chunks), and we add the object's shape.
            "non_cuda_context_meta": {
                str(iid): {"model_name": w.model_name, "world_size": w.world_size, "block_size": chunk_size,
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
        }

    def close(self) -> None:
        """Drop every worker (the server is stopping)."""
        with self._lock:
            ids = [*self._workers, *self._engine_driven]
        for iid in ids:
            self.drop(iid, reason="server stopping")
