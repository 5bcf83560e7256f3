"""Engine-driven transfers (ops 14-19): the worker gathers and scatters itself and ships chunk tensors.

The worker registers the shape of one chunk object (REGISTER_..._ENGINE_DRIVEN_CONTEXT), then
sends whole chunks as pickled tensors (COMMIT_STORE) and receives them the same way
(PREPARE_RETRIEVE). Pickles are loaded with :func:`loads_tensors`, which refuses anything but
tensors and bounds the bytes it will allocate by the request's chunk count. PREPARE_STORE and
COMMIT_RETRIEVE carry nothing for us (answered by the op table's constants in
:mod:`lmcache_core.transport.handlers`).
"""

from __future__ import annotations

import logging
import pickle

import torch

from lmcache_core.keys import InvalidKeyError
from lmcache_core.storage.l1 import L1Manager, L1Result
from lmcache_core.storage.lookups import LookupTracker
from lmcache_core.transfer.tensor_pickle import UnsafePickleError, dumps_tensors, loads_tensors
from lmcache_core.transport import messages as m
from lmcache_core.transport.chunks import KeyPlanner
from lmcache_core.transport.errors import RequestRejected
from lmcache_core.transport.workers import WorkerRegistry
from lmcache_core.transport.zmq_server import safe_text

logger = logging.getLogger(__name__)

# An empty shm_name selects the pickle transport on the client.
REGISTERED = m.RegisterEngineDrivenContextResponse(shm_name="", pool_size=0)


class EngineDrivenTransfers:
    """REGISTER (engine-driven), COMMIT_STORE and PREPARE_RETRIEVE."""

    def __init__(self, registry: WorkerRegistry, planner: KeyPlanner, l1: L1Manager, lookups: LookupTracker) -> None:
        self.registry = registry
        self.planner = planner
        self.l1 = l1
        self.lookups = lookups

    def register(self, args: m.RegisterEngineDrivenArgs, identity: bytes) -> m.RegisterEngineDrivenContextResponse:
        self.registry.heard(identity, args.payload.instance_id)
        self.registry.register_engine_driven(args.payload)
        return REGISTERED

    def commit_store(self, args: m.CommitStoreArgs, identity: bytes) -> bool:
        key = args.key
        worker = self.registry.engine_worker(identity, args.instance_id)
        if worker is None or key.worker_id is None:
            return False
        try:
            # The pickle is checked before anything is hashed: a refused one leaves no session behind.
            first, stop = self.planner.chunk_range(key)
            tensors = loads_tensors(args.data, max_bytes=(stop - first) * worker.object_nbytes)
            keys = self.planner.transfer_keys(key, first, stop)
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
            self.l1.abandon_write(failed)
        if written:
            self.l1.finish_write(written)
        return ok

    def prepare_retrieve(self, args: m.KeyInstanceArgs, identity: bytes) -> m.PrepareRetrieveResponse:
        key = args.key
        worker = self.registry.engine_worker(identity, args.instance_id)
        miss = m.PrepareRetrieveResponse(success=False, data=b"", context={})
        if worker is None or key.worker_id is None:
            return miss
        try:
            keys = self.planner.transfer_plan(key).keys
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
