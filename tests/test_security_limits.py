"""Memory and CPU bombs on the ZMQ data path (issue 13, findings 6 and 8).

The memory attacks run against a real ``lmcache-server`` process, whose resident set size is read from
``/proc/<pid>/status`` before and after; the behaviour tests use an in-process server with small limits.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import torch

from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.config import MPConfig, StorageManagerConfig
from lmcache_core.testing import free_port
from lmcache_core.transfer.client_kv import WorkerKVCache
from lmcache_core.transfer.tensor_pickle import UnsafePickleError, dumps_tensors, loads_tensors
from lmcache_core.transport import messages as m
from lmcache_core.transport import wire
from lmcache_core.transport.limits import SecurityConfig
from lmcache_core.transport.wire import Op
from security_support import cli_server, healthy_client, raw_dealer, rss_bytes, wait_for

MiB = 1 << 20


# -- a real server process ----------------------------------------------------------------------------------------


@pytest.fixture
def server_proc(tmp_path: Path) -> Iterator[tuple[int, str, str]]:
    """``(pid, zmq url, http base)`` of a real ``lmcache-server`` on free ports."""
    with cli_server(tmp_path) as proc:
        yield proc


def _settled_rss(pid: int) -> int:
    """The server's RSS once it stops moving (two equal readings in a row, bounded)."""
    last = rss_bytes(pid)

    def steady() -> bool:
        nonlocal last
        now = rss_bytes(pid)
        same = abs(now - last) < 2 * MiB
        last = now
        return same

    wait_for(steady, timeout_s=20, interval_s=0.3)
    return last


# -- finding 6: the pickle zip bomb ---------------------------------------------------------------------------------


class _Storage:
    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.payload,)


class _Tensor:
    def __init__(self, payload: bytes, numel: int) -> None:
        self.storage, self.numel = _Storage(payload), numel

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, (self.numel,), (1,), False,
                                                 collections.OrderedDict())


def _zip_bomb(tmp_path: Path, inflated: int) -> bytes:
    """A tensor-list pickle whose one storage is a torch zip archive with DEFLATE entries (``inflated`` bytes)."""
    plain = tmp_path / "plain.pt"
    torch.save(torch.empty(inflated, dtype=torch.uint8).untyped_storage(), plain)  # untouched pages: cheap
    out = io.BytesIO()
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for entry in zin.infolist():
            with zin.open(entry) as src, zout.open(entry.filename, "w", force_zip64=True) as dst:
                while block := src.read(8 * MiB):
                    dst.write(block)
    plain.unlink()
    return pickle.dumps([_Tensor(out.getvalue(), inflated)])


def test_loads_tensors_refuses_compressed_entries_and_oversize_payloads(tmp_path):
    bomb = _zip_bomb(tmp_path, 8 * MiB)
    with pytest.raises(UnsafePickleError, match="compressed"):
        loads_tensors(bomb, max_bytes=16 * MiB)
    with pytest.raises(UnsafePickleError, match="payload of"):
        loads_tensors(dumps_tensors([torch.zeros(4 * MiB, dtype=torch.uint8)]), max_bytes=1024)
    good = [torch.arange(64, dtype=torch.float16).reshape(2, 32)]
    back = loads_tensors(dumps_tensors(good), max_bytes=good[0].nbytes)
    assert torch.equal(back[0], good[0])


def test_an_engine_driven_zip_bomb_is_refused_with_bounded_memory(server_proc, tmp_path):
    pid, url, _ = server_proc
    bomb = _zip_bomb(tmp_path, 512 * MiB)
    assert len(bomb) < 8 * MiB
    with LMCacheClient(url, timeout_s=60) as client:
        ctx = m.RegisterEngineDrivenContextPayload(instance_id=9, model_name="bomb", world_size=1, block_size=16,
                                                   num_layers=1,
                                                   hidden_dim_size=8, dtype_str="torch.float16", use_mla=False)
        client.call(Op.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT, ctx)
        before = _settled_rss(pid)
        # VmHWM is the all-time peak (startup's included): reset it so it measures this request alone.
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        key = make_key(list(range(256)), "bomb", model_name="bomb", worker_id=0)
        assert client.call(Op.COMMIT_STORE, key, 9, bomb) is False
        assert rss_bytes(pid, "VmHWM") - before < 64 * MiB  # the peak: the bomb inflates to 512 MiB
    assert healthy_client(url)


# -- finding 8: lookups and messages ------------------------------------------------------------------------------


def test_lookups_with_huge_request_ids_keep_nothing(server_proc):
    pid, url, _ = server_proc
    n, id_len = 2000, 50 * 1024  # 100 MB of request ids
    before = _settled_rss(pid)
    sock = raw_dealer(url, SNDHWM=0)
    try:
        for i in range(n):
            key = make_key(list(range(256)), f"{i:08d}" + "r" * id_len, model_name="m")
            sock.send_multipart(wire.encode_request(i, Op.LOOKUP, key, 1))
        for _ in range(n):  # every one answered (LOOKUP replies carry no value)
            assert sock.poll(60_000)
            sock.recv_multipart()
    finally:
        sock.close()
    assert _settled_rss(pid) - before < 48 * MiB
    assert healthy_client(url)


def test_an_oversize_message_drops_the_connection_before_it_is_buffered(lmcache_server_factory):
    port = free_port()
    server = lmcache_server_factory(configs={"mp": MPConfig(host="127.0.0.1", port=port),
                                             "security": SecurityConfig(zmq_max_message_bytes=MiB)})
    url = f"tcp://127.0.0.1:{port}"
    sock = raw_dealer(url)
    try:
        before = server.zmq.backlog()
        frames = wire.encode_request(1, Op.NOOP)
        sock.send_multipart([frames[0], frames[1] + b"\0" * (2 * MiB)])  # one 2 MiB frame
        sock.send_multipart(wire.encode_request(2, Op.NOOP))
        # libzmq dropped the connection at the frame header; the DEALER reconnects and only the second
        # request, sent after the drop, is answered.
        assert sock.poll(10_000)
        assert wire.reply_uid(sock.recv_multipart()) == 2
        assert not sock.poll(500)
        assert server.zmq.backlog() == before
    finally:
        sock.close()
    assert healthy_client(url)


def _store_one_chunk(client, kv, iid):
    client.register_kv_cache(iid, kv.descriptors(), "m", 1, {"kv_layout": "NHD"})
    assert client.store(make_key(list(range(256)), "seed", model_name="m", worker_id=0), iid,
                        [list(range(1, 17))]) == (b"", True)
    client.end_session("seed")


def test_caps_on_tokens_and_unqueried_lookups_per_connection(lmcache_server_factory):
    port = free_port()
    limits = SecurityConfig(max_lookup_tokens=4096, max_pending_lookups_per_connection=8, max_request_id_length=64)
    lmcache_server_factory(configs={
        "mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.1), "security": limits})
    url = f"tcp://127.0.0.1:{port}"
    kv = WorkerKVCache(1, (2, 32, 16, 2, 8))
    attacker = LMCacheClient(url, timeout_s=20)
    try:
        _store_one_chunk(attacker, kv, 77)
        tokens = list(range(256))
        for i in range(12):  # 8 fit, the next 4 are refused and keep nothing
            attacker.call(Op.LOOKUP, make_key(tokens, f"p{i}", model_name="m"), 1)
        hits = [attacker.call(Op.QUERY_PREFETCH_STATUS, f"p{i}") for i in range(12)]
        assert hits == [1] * 8 + [0] * 4
        # Queried results no longer count: the connection may look up again.
        assert attacker.lookup(make_key(tokens, "again", model_name="m")) == 1
        # Over the token cap, or with an id over the length cap: refused, 0 hits.
        assert attacker.lookup(make_key(list(range(4352)), "long", model_name="m")) == 0
        assert attacker.lookup(make_key(tokens, "x" * 65, model_name="m")) == 0
        assert attacker.store(make_key(tokens, "y" * 65, model_name="m", worker_id=0), 77,
                              [list(range(1, 17))]) == (b"", False)
        with LMCacheClient(url, timeout_s=20) as other:  # another connection has its own budget
            assert other.lookup(make_key(tokens, "o", model_name="m")) == 1
    finally:
        attacker.close()
        kv.close()


def test_long_lookups_run_off_the_loop_thread_and_still_answer(lmcache_server_factory):
    port = free_port()
    limits = SecurityConfig(large_lookup_tokens=512)
    server = lmcache_server_factory(configs={
        "mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.1), "security": limits})
    url = f"tcp://127.0.0.1:{port}"
    kv = WorkerKVCache(1, (2, 32, 16, 2, 8))
    try:
        with LMCacheClient(url, timeout_s=20) as client:
            _store_one_chunk(client, kv, 78)
            long_tokens = list(range(256)) + [5] * 200_000
            assert client.lookup(make_key(long_tokens, "big", model_name="m")) == 1  # via QUERY polling
            client.call(Op.LOOKUP, make_key(long_tokens, "big2", model_name="m"), 1)
            assert client.call(Op.WAIT_PREFETCH_STATUS, "big2", 30.0) == 1
            assert client.noop() == "OK"
        assert server.status()["lookup_locked_objects"] == 2  # one lock per lookup, until RETRIEVE/END_SESSION
    finally:
        kv.close()
