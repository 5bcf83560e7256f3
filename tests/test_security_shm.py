"""Attacks through shared memory (issue 13, findings 2, 3): a segment shrunk after registration, a worker
restarted under the same instance id. Real server, real ZMQ, real /dev/shm segments."""

from __future__ import annotations

import os

import pytest
import torch

from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.config import MPConfig, StorageManagerConfig
from lmcache_core.testing import free_port
from lmcache_core.transfer.client_kv import WorkerKVCache
from lmcache_core.transfer.shm import shm_path
from security_support import healthy_client

CHUNK = 256
BLOCK = 16
BPC = CHUNK // BLOCK
SHAPE = (2, 64, BLOCK, 2, 8)
MODEL = "sec-model"
IID = 4242


@pytest.fixture
def served(lmcache_server_factory):
    port = free_port()
    server = lmcache_server_factory(configs={
        "mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.25),
    })
    url = f"tcp://127.0.0.1:{port}"
    client = LMCacheClient(url, timeout_s=20)
    yield server, client, url
    client.close()


def _register(client, kv, iid=IID):
    client.register_kv_cache(iid, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})


def _fill(kv, value):
    for layer in kv.layers:
        layer.fill_(value)


def _blocks(first, n_chunks):
    return [list(range(first, first + n_chunks * BPC))]


def test_a_segment_shrunk_after_registration_fails_the_request_instead_of_killing_the_server(served):
    server, client, url = served
    kv = WorkerKVCache(2, SHAPE)
    victim = WorkerKVCache(2, SHAPE)
    try:
        _register(client, kv)
        _register(client, victim, iid=IID + 1)
        _fill(victim, 3.0)
        tokens = list(range(512))
        for s in kv._shared:  # the attack: shrink every mapped segment to nothing
            os.truncate(shm_path(s.fields["shm_name"]), 0)
        assert client.store(make_key(tokens, "a", model_name=MODEL, worker_id=0), IID, _blocks(0, 2)) == \
            (b"", False)
        assert client.retrieve(make_key(tokens, "a", model_name=MODEL, worker_id=0), IID, _blocks(0, 2)) == \
            (b"", False)
        # Still alive, still serving the other worker, byte for byte.
        assert healthy_client(url)
        assert client.store(make_key(tokens, "v", model_name=MODEL, worker_id=0), IID + 1, _blocks(0, 2)) == \
            (b"", True)
        client.end_session("v")
        assert client.lookup(make_key(tokens, "v2", model_name=MODEL)) == 2
        assert client.retrieve(make_key(tokens, "v2", model_name=MODEL, worker_id=0), IID + 1,
                               _blocks(32, 2)) == (b"", True)
        for layer in victim.layers:
            assert torch.equal(layer[:, 32:64], torch.full_like(layer[:, 32:64], 3.0))
        # Nothing half-written of the failed STORE is readable.
        client.end_session("v2")
        l1 = server.status()["storage_manager"]["l1_manager"]
        assert l1["write_locked_count"] == 0
    finally:
        kv.close()
        victim.close()


def test_a_worker_restarted_under_the_same_id_gets_its_own_memory(served):
    server, client, url = served
    dead = WorkerKVCache(2, SHAPE)
    _fill(dead, 1.0)
    _register(client, dead)
    dead_names = {s["shm_name"] for s in server.datapath.segments.segments()}
    dead.close()  # died without unregistering (segments unlinked, still mapped by the server)
    fresh = WorkerKVCache(2, SHAPE)
    try:
        _fill(fresh, 2.0)
        _register(client, fresh)  # same instance id, new segments
        mapped = {s["shm_name"] for s in server.datapath.segments.segments()}
        assert not (mapped & dead_names)  # the dead worker's mappings are gone
        tokens = list(range(512))
        assert client.store(make_key(tokens, "r", model_name=MODEL, worker_id=0), IID, _blocks(0, 2)) == \
            (b"", True)
        client.end_session("r")
        for layer in fresh.layers:
            layer[:, 32:64].zero_()
        assert client.lookup(make_key(tokens, "r2", model_name=MODEL)) == 2
        assert client.retrieve(make_key(tokens, "r2", model_name=MODEL, worker_id=0), IID, _blocks(32, 2)) == \
            (b"", True)
        for layer in fresh.layers:
            assert torch.equal(layer[:, 32:64], torch.full_like(layer[:, 32:64], 2.0))
        # Identical re-registration stays idempotent: same mapping, one registration.
        before = server.datapath.segments.segments()
        _register(client, fresh)
        assert server.datapath.segments.segments() == before
        assert server.status()["registered_gpu_ids"] == [IID]
    finally:
        fresh.close()
