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


def test_one_op_table_says_what_is_served_and_with_which_failure_value(served):
    """``wire.OP_SPECS`` is the only table: the server's handlers are exactly its served ops, each with
    the row's dispatch and failure value; an op it does not serve gets the error reply."""
    server, client, _ = served
    served_ops = {op for op, spec in wire.OP_SPECS.items() if spec.dispatch is not None}
    assert set(server.zmq.handlers) == served_ops
    for op in served_ops:
        handler, spec = server.zmq.handlers[op], wire.OP_SPECS[op]
        assert (handler.dispatch, handler.failure) == (spec.dispatch, spec.failure), op
    assert wire.OP_SPECS[Op.STORE].failure == wire.OP_SPECS[Op.RETRIEVE].failure == (b"", False)
    assert wire.OP_SPECS[Op.QUERY_PREFETCH_STATUS].failure == 0
    assert wire.OP_SPECS[Op.NOOP].failure is wire.NO_FALLBACK  # no in-band value: the error reply
    unserved = sorted(set(Op) - served_ops)
    assert Op.CB_UNIFIED_LOOKUP in unserved and Op.STORE_Q in unserved
    with pytest.raises(wire.ErrorReply, match="unsupported operation CB_UNREGISTER_ROPE"):
        client.call(Op.CB_UNREGISTER_ROPE, 1)
    assert client.noop() == "OK"


def test_lookup_replies_before_its_work_and_the_loop_reads_on_only_after_it(served):
    """LOOKUP's reply (always None) leaves before its handler runs; the next request, even another
    client's, is read only once that handler is done, so a QUERY after it finds the result."""
    import threading

    from lmcache_core.transport.zmq_server import Dispatch, HandlerSpec

    server, client, _ = served
    entered, release = threading.Event(), threading.Event()

    def slow_lookup(args, identity):
        entered.set()
        assert release.wait(20)

    server.zmq.handlers[Op.LOOKUP] = HandlerSpec(slow_lookup, Dispatch.SYNC_AFTER_REPLY, None)
    assert client.call(Op.LOOKUP, make_key(list(range(512)), "early", model_name=MODEL), 1) is None
    assert entered.wait(10)  # the reply came while the handler runs (or is about to)
    other = LMCacheClient(f"tcp://127.0.0.1:{server.mp_config.port}", timeout_s=20)
    answered = threading.Event()
    t = threading.Thread(target=lambda: other.noop() == "OK" and answered.set(), daemon=True)
    try:
        t.start()
        assert not answered.wait(0.3)  # the loop is still inside the LOOKUP's work
        release.set()
        assert answered.wait(10)
    finally:
        release.set()
        t.join(10)
        other.close()


def test_a_query_pipelined_behind_its_lookup_finds_the_result(served):
    """The scheduler may send QUERY without waiting for LOOKUP's reply: it still gets the hits."""
    _, client, kv = served
    register(client, kv)
    fill(kv, 3)
    tokens = list(range(1000, 1512))
    assert client.store(make_key(tokens, "s", model_name=MODEL, worker_id=0), IID, blocks(0, 2)) == (b"", True)
    client.end_session("s")
    key = make_key(tokens, "piped", model_name=MODEL)
    replies = {}
    with client._lock:
        client._sock.send_multipart(wire.encode_request(101, Op.LOOKUP, key, 1))
        client._sock.send_multipart(wire.encode_request(102, Op.QUERY_PREFETCH_STATUS, "piped"))
        for _ in range(2):
            frames = client._recv()
            replies[wire.reply_uid(frames)] = frames
    assert wire.decode_reply(Op.LOOKUP, replies[101]) is None
    assert wire.decode_reply(Op.QUERY_PREFETCH_STATUS, replies[102]) == 2
    client.end_session("piped")


def test_only_an_op_whose_one_reply_is_none_may_reply_before_its_work():
    spec = wire.OP_SPECS[Op.QUERY_PREFETCH_STATUS]
    with pytest.raises(ValueError, match="may reply before its work"):
        wire.OpSpec(spec.op, spec.args_type, spec.params, spec.response_type, spec.pool,
                    dispatch=wire.Dispatch.SYNC_AFTER_REPLY, failure=spec.failure)
    assert wire.OP_SPECS[Op.LOOKUP].dispatch is wire.Dispatch.SYNC_AFTER_REPLY


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


# -- token ranges → chunks: the client's rounding rule (issue: vLLM prefix-cache overlap) ----------------

def lock_counts(server):
    status = server.status()
    return status["storage_manager"]["l1_manager"]["read_locked_count"], status["lookup_locked_objects"]


def test_prefix_cache_overlap_unaligned_free_end_keeps_the_chunk_the_retrieve_needs(served):
    # vLLM already holds 272 tokens (17 blocks of 16): its scheduler frees [0, 272), which must free
    # chunk 0 only, then the worker retrieves [256, 512) skipping the 16 tokens it already has.
    server, client, kv = served
    register(client, kv)
    fill(kv, 3)
    tokens = list(range(512))
    assert client.store(make_key(tokens, "w", model_name=MODEL, worker_id=0), IID, blocks(0, 2)) == (b"", True)
    client.end_session("w")
    stored = chunk_bytes(kv, 0, 2)
    for layer in kv.layers:
        layer[:, 32:64].zero_()
    assert client.lookup(make_key(tokens, "r", model_name=MODEL)) == 2
    client.free_lookup_locks(make_key(tokens, "r", model_name=MODEL, start=0, end=272))
    assert lock_counts(server)[1] == 1  # chunk 1 is still locked for the retrieve
    key = make_key(tokens, "r", model_name=MODEL, worker_id=0, start=256, end=512)
    assert client.retrieve(key, IID, [list(range(48, 64))], skip_first_n_tokens=16) == (b"", True)
    for before, layer in zip(stored, kv.layers):
        assert torch.equal(layer[:, 49:64], before[:, 17:32])  # chunk 1 past the skipped first block
        assert not layer[:, 48].any()  # the skipped block is left alone
    client.end_session("r")
    assert lock_counts(server) == (0, 0)


@pytest.mark.parametrize(("start", "end", "left_locked"), [
    (0, 256, 1), (0, 255, 2), (0, 257, 1), (0, 511, 1), (0, 512, 0), (16, 512, 0), (256, 300, 2), (300, 256, 2),
])
def test_free_lookup_locks_frees_the_start_chunk_and_never_the_unaligned_end_chunk(served, start, end, left_locked):
    server, client, kv = served
    register(client, kv)
    tokens = list(range(512))
    client.store(make_key(tokens, "w", model_name=MODEL, worker_id=0), IID, blocks(0, 2))
    client.end_session("w")
    assert client.lookup(make_key(tokens, "r", model_name=MODEL)) == 2
    client.free_lookup_locks(make_key(tokens, "r", model_name=MODEL, start=start, end=end))
    assert lock_counts(server)[1] == left_locked
    client.end_session("r")
    assert lock_counts(server) == (0, 0)


def test_store_with_an_unaligned_end_stores_the_complete_chunks_only(served):
    _, client, kv = served
    register(client, kv)
    tokens = list(range(600))  # two complete chunks and 88 tokens of a third
    assert client.store(make_key(tokens, "w", model_name=MODEL, worker_id=0), IID, blocks(0, 3)) == (b"", True)
    client.end_session("w")
    assert client.lookup(make_key(tokens, "r", model_name=MODEL)) == 2
    client.end_session("r")
    # an unaligned start is not a range the client sends: refused in-band
    assert client.store(make_key(tokens, "x", model_name=MODEL, worker_id=0, start=16), IID, blocks(0, 2)) == \
        (b"", False)


@pytest.mark.parametrize("use_mla", [True, False])
def test_engine_driven_round_trip_with_the_client_object_shapes(served, use_mla):
    # The 0.5.6 client ships MLA chunks as [L, T, H] and the others as [2, L, T, H].
    from lmcache_core.transfer.tensor_pickle import dumps_tensors, loads_tensors
    from lmcache_core.transport import messages as m

    server, client, _ = served
    layers, hidden, iid = 4, 32, 99
    payload = m.RegisterEngineDrivenContextPayload(iid, MODEL, 1, BLOCK, layers, hidden, "float16", use_mla, CHUNK)
    client.call(Op.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT, payload)
    shape = (layers, CHUNK, hidden) if use_mla else (2, layers, CHUNK, hidden)
    g = torch.Generator().manual_seed(11)
    chunks = [torch.randn(shape, generator=g).to(torch.float16) for _ in range(2)]
    tokens = list(range(512))
    readers = 3 if use_mla else 1  # MLA: every TP rank reads the one stored copy
    assert client.call(Op.COMMIT_STORE, make_key(tokens, "s", model_name=MODEL, worker_id=0), iid,
                       dumps_tensors(chunks)) is True
    client.end_session("s")
    assert server.status()["non_cuda_context_meta"][str(iid)]["use_mla"] is use_mla
    assert client.lookup(make_key(tokens, "r", model_name=MODEL, num_kv_readers=readers)) == 2
    for _ in range(readers):
        reply = client.call(Op.PREPARE_RETRIEVE, make_key(tokens, "r", model_name=MODEL, worker_id=0,
                                                           num_kv_readers=readers), iid)
        assert reply.success is True
        got = loads_tensors(reply.data)
        assert [tuple(t.shape) for t in got] == [shape, shape]
        assert all(torch.equal(a, b) for a, b in zip(got, chunks))
    client.end_session("r")
    assert lock_counts(server) == (0, 0)
    wrong = [torch.zeros((1, *shape) if use_mla else shape[1:], dtype=torch.float16)]
    assert client.call(Op.COMMIT_STORE, make_key(tokens[:256], "x", model_name="other", worker_id=0), iid,
                       dumps_tensors(wrong)) is False
