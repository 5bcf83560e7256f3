"""The data path of one server: the LMCache 0.5.6 ops bound to their handlers, on the storage engine.

:class:`DataPath` is the composition root. It builds the parts, each given only its
collaborators:

* :class:`~lmcache_core.transport.workers.WorkerRegistry`: registered workers, connections, reaping;
* :class:`~lmcache_core.transport.chunks.KeyPlanner`: request keys → chunk plans and object keys;
* :class:`~lmcache_core.transport.transfers.Transfers`: STORE / RETRIEVE (the server copies);
* :class:`~lmcache_core.transport.engine_driven.EngineDrivenTransfers`: the worker ships tensors;
* :class:`~lmcache_core.transport.lookup.LookupOps`: LOOKUP and its follow-ups;

and binds one handler to each op the op table (:data:`lmcache_core.transport.wire.OP_SPECS`:
args, reply, dispatch, failure value) marks as served. Each handler takes the op's decoded
``Args`` Struct and the client identity and returns the reply value. A well-formed request that
cannot be served returns the op's in-band failure value (``(b"", False)`` for STORE / RETRIEVE,
0 hits for LOOKUP, ...), never silence; see ``docs/datapath.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lmcache_core.storage.lookups import LookupTracker
from lmcache_core.transfer.kvcache import RegisteredKVCache
from lmcache_core.transfer.shm import ShmSegmentCache
from lmcache_core.transport import messages as m
from lmcache_core.transport import metrics as dp_metrics
from lmcache_core.transport.chunks import KeyPlanner
from lmcache_core.transport.engine_driven import EngineDrivenTransfers
from lmcache_core.transport.errors import RequestRejected
from lmcache_core.transport.limits import SECTION as LIMITS_SECTION
from lmcache_core.transport.limits import SecurityConfig
from lmcache_core.transport.lookup import LookupOps
from lmcache_core.transport.transfers import Transfers
from lmcache_core.transport.wire import OP_SPECS, Op
from lmcache_core.transport.workers import WorkerRegistry
from lmcache_core.transport.zmq_server import HandlerSpec

if TYPE_CHECKING:
    from lmcache_core.server import CacheServer

Handler = Callable[[Any, bytes], Any]


class DataPath:
    """Registered workers, lookups and the STORE/RETRIEVE copies for one server."""

    def __init__(self, server: CacheServer, clock: Any = time.monotonic) -> None:
        assert server.storage is not None and server.sessions is not None
        storage, sessions = server.storage, server.sessions
        self.l1 = storage.l1
        self.sessions = sessions
        self.chunk_size = server.mp_config.chunk_size
        self.metrics = not getattr(server.configs.get("observability"), "disable_metrics", False)
        limits = server.configs.get(LIMITS_SECTION)
        self.limits: SecurityConfig = limits if isinstance(limits, SecurityConfig) else SecurityConfig()
        self.clear_allowed = self.limits.clear_allowed(getattr(server.configs.get("http"), "http_admin_token", None))
        self.segments = ShmSegmentCache(self.limits.shm_policy())
        self.lookups = LookupTracker(self.l1)
        self.workers = WorkerRegistry(self.segments, self.chunk_size, clock)
        self.planner = KeyPlanner(sessions, self.chunk_size, self.limits)
        self.transfers = Transfers(self.workers, self.planner, self.l1, self.lookups, metrics=self.metrics)
        self.engine_driven = EngineDrivenTransfers(self.workers, self.planner, self.l1, self.lookups)
        self.lookup_ops = LookupOps(self.workers, self.planner, self.lookups, sessions, self.l1, storage.prefetch,
                                    self.limits, metrics=self.metrics)
        if self.metrics:
            dp_metrics.bind_datapath(self)

    # -- the op table ----------------------------------------------------------------

    def handlers(self) -> dict[Op, Handler]:
        """One handler per op the op table serves (``OP_SPECS[op].dispatch`` is not None)."""
        chunk_size, lookup, transfers, engine_driven = self.chunk_size, self.lookup_ops, self.transfers, \
            self.engine_driven
        return {
            Op.NOOP: lambda args, ident: "OK",
            Op.GET_CHUNK_SIZE: lambda args, ident: chunk_size,
            Op.GET_EXPERIMENTAL: lambda args, ident: [],
            Op.PING: self.op_ping,
            Op.REGISTER_KV_CACHE: self.op_register_kv_cache,
            Op.UNREGISTER_KV_CACHE: self.op_unregister_kv_cache,
            Op.STORE: transfers.store,
            Op.RETRIEVE: transfers.retrieve,
            Op.LOOKUP: lookup.lookup_bounded,
            Op.QUERY_PREFETCH_STATUS: lookup.query_prefetch_status,
            Op.WAIT_PREFETCH_STATUS: lookup.wait_prefetch_status,
            Op.FREE_LOOKUP_LOCKS: lookup.free_lookup_locks,
            Op.END_SESSION: lookup.end_session,
            Op.CLEAR: self.op_clear,
            Op.REPORT_BLOCK_ALLOCATION: lambda args, ident: None,
            Op.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT: engine_driven.register,
            Op.UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT: self.op_unregister_kv_cache,
            Op.PREPARE_STORE: lambda args, ident: m.PrepareStoreResponse(context={}),
            Op.COMMIT_STORE: engine_driven.commit_store,
            Op.PREPARE_RETRIEVE: engine_driven.prepare_retrieve,
            Op.COMMIT_RETRIEVE: lambda args, ident: True,
        }

    def handler_specs(self) -> dict[Op, HandlerSpec]:
        """The ZMQ server's table: each handler with its op's dispatch and failure value from ``OP_SPECS``."""
        handlers = self.handlers()
        served = {op for op, spec in OP_SPECS.items() if spec.dispatch is not None}
        if set(handlers) != served:  # the op table and the bindings are one table: never let them drift
            raise AssertionError(f"op table serves {sorted(o.name for o in served - set(handlers))} without a "
                                 f"handler; handlers for unserved {sorted(o.name for o in set(handlers) - served)}")
        return {op: HandlerSpec(fn, OP_SPECS[op].dispatch, OP_SPECS[op].failure)  # type: ignore[arg-type]
                for op, fn in handlers.items()}

    # -- management ops ----------------------------------------------------------------

    def op_ping(self, args: m.PingArgs, identity: bytes) -> bool:
        self.workers.ping(identity, args.instance_id)
        return True

    def op_register_kv_cache(self, args: m.RegisterKVCacheArgs, identity: bytes) -> None:
        self.workers.heard(identity, args.instance_id)
        self.workers.register_kv_cache(args)
        return None

    def op_unregister_kv_cache(self, args: m.InstanceArgs, identity: bytes) -> None:
        self.workers.drop(args.instance_id, reason="unregistered")
        return None

    def op_clear(self, args: m.ClearArgs, identity: bytes) -> None:
        """CLEAR, unless the server refuses it on the data path (``security.data_path_clear``): then the
        error reply, so the client knows nothing was cleared (there is no in-band failure value)."""
        if not self.clear_allowed:
            raise RequestRejected("CLEAR is disabled on the data path (use the admin-guarded POST /clear-cache)")
        self.l1.clear(force=bool(args.force))
        return None

    # -- what the rest of the server reads ------------------------------------------------

    def registered_kv(self, instance_id: int) -> RegisteredKVCache | None:
        """The KV cache a worker registered (for ``/kvcache/check``), or None."""
        return self.workers.registered_kv(instance_id)

    def object_nbytes_for(self, model_name: str, world_size: int) -> int | None:
        """The chunk object size of a registered (model, world size), from any of its workers."""
        return self.workers.object_nbytes_for(model_name, world_size)

    def drop_worker(self, instance_id: int, reason: str) -> bool:
        """Forget a worker: its mapping and its layout reference."""
        return self.workers.drop(instance_id, reason)

    def reap(self, reap_timeout: float, grace: float) -> list[int]:
        """Drop workers silent past their budget, and everything their connections held.

        Lookup locks belong to the connection that sent the LOOKUP: a connection whose
        workers are all gone, or a worker-less one (vLLM's scheduler pings with no id) that
        fell silent, loses its requests' locks, results and sessions — those still holding
        locks, and those it looked up whose END_SESSION never came (a worker killed between
        RETRIEVE and END_SESSION; issue 18). Returns the dropped instance ids.
        """
        return self.workers.reap(reap_timeout, grace, self._release_connection)

    def _release_connection(self, identity: bytes, looked_up: list[str]) -> None:
        for request_id in dict.fromkeys([*self.lookups.release_owner(identity), *looked_up]):
            self.sessions.remove(request_id)

    def report_status(self) -> dict[str, Any]:
        return {**self.workers.status(), "lookup_locked_objects": self.lookups.locked_object_count(),
                "connections": self.workers.connection_count(),
                "active_prefetch_jobs": self.lookups.pending_results()}

    def close(self) -> None:
        self.workers.close()
        self.lookup_ops.close()
        self.segments.close()
