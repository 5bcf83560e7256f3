"""STORE and RETRIEVE: the server copies chunks between a worker's registered KV cache and L1.

Each request is resolved once into a :class:`~lmcache_core.transport.chunks.ChunkPlan` (range,
keys, block ids validated and null-masked), then copied with the planned block ids. A request
that cannot be served answers ``FAILED_TRANSFER`` (the op's in-band failure value).

Replies carry an empty event handle ``b""`` on CPU: the copy is finished before the reply is
sent, which is what ``b""`` tells the client ("no device work was submitted; the reply itself
means completion"). On CUDA the reply carries an IPC event the worker waits on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from lmcache_core.keys import InvalidKeyError
from lmcache_core.storage.l1 import L1Manager, L1Result
from lmcache_core.storage.lookups import LookupTracker
from lmcache_core.transfer import cuda_ipc
from lmcache_core.transfer.kvcache import RegisteredKVCache, TransferError
from lmcache_core.transport import messages as m
from lmcache_core.transport import metrics as dp_metrics
from lmcache_core.transport.chunks import ChunkPlan, KeyPlanner
from lmcache_core.transport.errors import RequestRejected
from lmcache_core.transport.wire import FAILED_TRANSFER
from lmcache_core.transport.workers import WorkerRegistry
from lmcache_core.transport.zmq_server import safe_text

logger = logging.getLogger(__name__)

DONE = b""


def _wait_for_worker(kv: RegisteredKVCache, event_handle: bytes) -> None:
    """CUDA workers hand an interprocess event: copies must wait until the worker's kernels are done."""
    if kv.device.type == "cuda":
        cuda_ipc.wait_ipc_event(event_handle, kv.device)


def _done_handle(kv: RegisteredKVCache) -> bytes:
    """b"" on CPU (the copy is complete when we reply); on CUDA an event the worker waits on."""
    if kv.device.type == "cuda":
        return cuda_ipc.export_ipc_event(kv.device)
    return DONE


class Transfers:
    """STORE and RETRIEVE for workers whose KV cache the server maps (REGISTER_KV_CACHE)."""

    def __init__(self, registry: WorkerRegistry, planner: KeyPlanner, l1: L1Manager, lookups: LookupTracker,
                 *, metrics: bool) -> None:
        self.registry = registry
        self.planner = planner
        self.l1 = l1
        self.lookups = lookups
        self.metrics = metrics

    def _plan(self, args: m.StoreArgs | m.RetrieveArgs, identity: bytes,
              op: str) -> tuple[RegisteredKVCache, ChunkPlan] | None:
        """The worker's KV cache and the request's plan, or None (in-band failure)."""
        key = args.key
        worker = self.registry.worker(identity, args.instance_id)
        if worker is None or key.worker_id is None:
            return None
        try:
            return worker.kv, self.planner.transfer_plan(key, worker.kv, args.block_ids)
        except (RequestRejected, InvalidKeyError, TransferError, ValueError) as exc:
            logger.debug("%s rejected: %s", op, safe_text(exc))
            return None

    def store(self, args: m.StoreArgs, identity: bytes) -> tuple[bytes, bool]:
        planned = self._plan(args, identity, "store")
        if planned is None:
            return FAILED_TRANSFER
        kv, plan = planned
        blocks = plan.blocks
        assert blocks is not None
        n = plan.num_chunks
        if n == 0:
            return (DONE, True)
        wanted = [i for i in range(n) if not blocks.null[i]]
        keys = [plan.keys[i] for i in wanted]
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
            _wait_for_worker(kv, args.event_ipc_handle)
            started = time.perf_counter()
            kv.gather_planned(blocks, outs)
            if kv.device.type == "cuda":  # device-to-host copies must land before the objects become readable
                torch.cuda.current_stream(kv.device).synchronize()
            elapsed = time.perf_counter() - started
        except Exception:
            self.l1.abandon_write(written_keys)
            raise
        self.l1.finish_write(written_keys)
        if self.metrics:
            dp_metrics.record_transfer("store", args.key.model_name, args.key.cache_salt, kv.device.type,
                                       len(written_keys), len(written_keys) * kv.object_nbytes, elapsed)
        return (_done_handle(kv), True)

    def retrieve(self, args: m.RetrieveArgs, identity: bytes) -> tuple[bytes, bool]:
        planned = self._plan(args, identity, "retrieve")
        if planned is None:
            return FAILED_TRANSFER
        kv, plan = planned
        assert plan.blocks is not None
        keys = plan.keys
        key = args.key
        if not self.lookups.holds(key.request_id, keys):
            return FAILED_TRANSFER
        try:
            read = self.l1.read(keys)
            if any(r != L1Result.SUCCESS for r in read.results):
                return FAILED_TRANSFER
            _wait_for_worker(kv, args.event_ipc_handle)
            started = time.perf_counter()
            kv.scatter_planned(plan.blocks, read.views, args.skip_first_n_tokens)
            if kv.device.type == "cuda":  # the L1 objects are read until the host-to-device copies finish
                torch.cuda.current_stream(kv.device).synchronize()
            elapsed = time.perf_counter() - started
        finally:
            # This reader is done with its share of the lookup's locks, whether the copy worked or not.
            self.lookups.release_one(key.request_id, keys)
        if self.metrics:
            dp_metrics.record_transfer("retrieve", key.model_name, key.cache_salt, kv.device.type,
                                       len(keys), len(keys) * kv.object_nbytes, elapsed)
        return (_done_handle(kv), True)
