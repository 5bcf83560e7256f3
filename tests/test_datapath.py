"""The ZMQ data path end to end: a real socket, real shared memory, our client as the worker."""

from __future__ import annotations

import pytest
import torch

from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.config import MPConfig, StorageManagerConfig
from lmcache_core.testing import free_port
from lmcache_core.transfer.client_kv import WorkerKVCache
from lmcache_core.transport import wire
from lmcache_core.transport.wire import Op

CHUNK = 256
BLOCK = 16
BPC = CHUNK // BLOCK
SHAPE = (2, 64, BLOCK, 2, 8)  # NHD: (K/V, blocks, block size, heads, head size)
MODEL = "golden-model"
IID = 7000000000000000001


@pytest.fixture
def served(lmcache_server_factory):
    port = free_port()
    server = lmcache_server_factory(configs={
        "mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.25),
    })
    client = LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=20)
    kv = WorkerKVCache(2, SHAPE)
    yield server, client, kv
    client.close()
    kv.close()


def register(client, kv, iid=IID, model=MODEL):
    client.register_kv_cache(iid, kv.descriptors(), model, 1, {"kv_layout": "NHD"})


def fill(kv, seed=0):
    g = torch.Generator().manual_seed(seed)
    for layer in kv.layers:
        layer.copy_(torch.randn(layer.shape, generator=g, dtype=torch.float32).to(layer.dtype))


def blocks(first, n_chunks):
    return [list(range(first, first + n_chunks * BPC))]


def chunk_bytes(kv, first_block, n_chunks):
    return [layer[:, first_block:first_block + n_chunks * BPC].clone() for layer in kv.layers]


def test_management_ops(served):
    _, client, _ = served
    assert client.noop() == "OK"
    assert client.get_chunk_size() == CHUNK
    assert client.call(Op.GET_EXPERIMENTAL) == []
    assert client.ping(None) is True


def test_store_lookup_retrieve_round_trip_bytes_equal(served):
    server, client, kv = served
    register(client, kv)
    fill(kv)
    tokens = list(range(512))
    assert client.lookup(make_key(tokens, "r1", model_name=MODEL)) == 0
    assert client.store(make_key(tokens, "r1", model_name=MODEL, worker_id=0), IID, blocks(0, 2)) == (b"", True)
    client.end_session("r1")
    stored = chunk_bytes(kv, 0, 2)
    assert client.lookup(make_key(tokens, "r2", model_name=MODEL)) == 2
    assert client.retrieve(make_key(tokens, "r2", model_name=MODEL, worker_id=0), IID, blocks(32, 2)) == (b"", True)
    for before, layer in zip(stored, kv.layers):
        assert torch.equal(layer[:, 32:64], before)
    client.end_session("r2")
    status = server.status()
    assert status["storage_manager"]["l1_manager"]["read_locked_count"] == 0
    assert status["lookup_locked_objects"] == 0 and status["active_sessions"] == 0


def test_partial_prefix_and_salt_isolation(served):
    _, client, kv = served
    register(client, kv)
    fill(kv, 1)
    tokens = list(range(512))
    client.store(make_key(tokens, "s", model_name=MODEL, worker_id=0), IID, blocks(0, 2))
    other = tokens[:256] + [9] * 256
    assert client.lookup(make_key(other, "p", model_name=MODEL)) == 1
    client.end_session("p")
    assert client.lookup(make_key(tokens, "salted", model_name=MODEL, cache_salt="alice")) == 0
    assert client.lookup(make_key(tokens, "other-model", model_name="nobody")) == 0


def test_failures_are_in_band(served):
    _, client, kv = served
    register(client, kv)
    tokens = list(range(512))
    assert client.store(make_key(tokens, "u", worker_id=0), 12345, blocks(0, 2)) == (b"", False)
    assert client.retrieve(make_key(tokens, "u", worker_id=0), 12345, blocks(0, 2)) == (b"", False)
    short = [list(range(BPC))]  # one chunk's worth for a two-chunk range
    assert client.store(make_key(tokens, "u", model_name=MODEL, worker_id=0), IID, short) == (b"", False)
    assert client.retrieve(make_key(tokens, "u", model_name=MODEL, worker_id=0), IID, blocks(0, 2)) == (b"", False)
    assert client.lookup(make_key(tokens, "z", model_name=MODEL, num_kv_readers=0)) == 0
    assert client.lookup(make_key(tokens, "m", model_name="bad@model")) == 0
    assert client.call(Op.QUERY_PREFETCH_STATUS, "never-looked-up") == 0
    assert client.end_session("unknown") is None
    assert client.unregister_kv_cache(999) is None


def test_malformed_frames_get_an_error_reply_and_the_server_keeps_serving(served):
    _, client, _ = served
    cases = [
        [b"\x01", b"\x0b"],  # retired op id 11
        [b"\x02", b"\xcd\x03\xe7"],  # unknown op id 999
        [b"\x03", b"\x16"],  # ping without its payload frame
        [b"\x04", b"\x06", b"\xc1"],  # store with an undecodable payload
        [b"\xc1", b"\x18"],  # a uid that is not msgpack
    ]
    for frames in cases:
        reply = client.send_raw(frames)
        assert reply[0] == frames[0]  # the uid frame is echoed
        assert reply[1] == b"\xa5error"  # msgpack "error": the 0.5.6 client fails fast
    assert client.noop() == "OK"


def test_a_failing_handler_answers_and_the_server_keeps_serving(served):
    from lmcache_core.transport import messages as m

    _, client, kv = served
    good = kv.descriptors()[0].descriptor
    missing = m.DeviceIPCWrapper(m.CpuShmIPCData(shm_name="/lmcache_kv_does_not_exist", nbytes=good.nbytes,
                                                 version=1, metadata=good.metadata))
    with pytest.raises(wire.ErrorReply, match="register_kv_cache failed"):
        client.register_kv_cache(1, [missing], MODEL, 1, {"kv_layout": "NHD"})
    assert client.noop() == "OK"
    register(client, kv)
    assert client.ping(IID) is True


def test_unregister_then_store_fails_and_reregister_is_idempotent(served):
    server, client, kv = served
    register(client, kv)
    register(client, kv)
    assert server.status()["registered_gpu_ids"] == [IID]
    client.unregister_kv_cache(IID)
    assert server.status()["registered_gpu_ids"] == []
    assert client.store(make_key(list(range(256)), "x", model_name=MODEL, worker_id=0), IID, blocks(0, 1)) == \
        (b"", False)


def test_cuda_descriptors_are_refused_clearly_without_cuda(served):
    from lmcache_core.transport import messages as m

    _, client, kv = served
    meta = kv.descriptors()[0].descriptor.metadata
    cuda = m.DeviceIPCWrapper(m.CudaIPCData(handle=(0, b"\0" * 64, 1 << 20, 0, None, 0, None, False), version=1,
                                            metadata=m.TensorMetadata(dtype=meta.dtype, shape=meta.shape,
                                                                      stride=meta.stride, storage_offset=0,
                                                                      device_uuid="GPU-00000000")))
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal is for CPU-only servers")
    with pytest.raises(wire.ErrorReply, match="register_kv_cache failed: CudaUnavailableError"):
        client.register_kv_cache(5, [cuda], MODEL, 1, {"kv_layout": "NHD"})
    mixed = [cuda, *kv.descriptors()]
    with pytest.raises(wire.ErrorReply, match="RequestRejected"):
        client.register_kv_cache(6, mixed, MODEL, 1, {"kv_layout": "NHD"})
    assert client.noop() == "OK"
