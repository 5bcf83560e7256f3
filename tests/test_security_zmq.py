"""Attacks on the ZMQ data path (issue 13, findings 1 and 8): a peer that never reads, oversize frames,
floods of lookups. Real server, real sockets; each test shows the attacker refused and others served."""

from __future__ import annotations

import threading

import httpx
import msgspec
import zmq

from lmcache_core.client import LMCacheClient
from lmcache_core.transport import wire
from lmcache_core.transport.wire import Op
from lmcache_core.transport.zmq_server import MAX_UID_FRAME_BYTES, Dispatch, HandlerSpec
from security_support import healthy_client, raw_dealer, wait_for


def _url(server) -> str:
    return f"tcp://127.0.0.1:{server.mp_config.port}"


def _noop(uid: object) -> list[bytes]:
    frames = wire.encode_request(0, Op.NOOP)
    return [msgspec.msgpack.encode(uid), *frames[1:]]


def test_a_client_that_never_reads_cannot_wedge_the_loop(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory(entry_points=True, allow="health")
    base = lmcache_http(server)
    url = _url(server)
    attacker = raw_dealer(url, RCVHWM=1, RCVBUF=4096, SNDHWM=0)
    try:
        frames = _noop("x" * (MAX_UID_FRAME_BYTES - 8))  # the largest uid still answered
        sent = 0
        # Enough replies to fill the kernel buffers, libzmq's pipe and our backlog many times over.
        while server.zmq.backlog()["dropped"] == 0 and sent < 400_000:
            for _ in range(2000):
                attacker.send_multipart(frames)
            sent += 2000
        wait_for(lambda: server.zmq.backlog()["dropped"] > 0, timeout_s=60)
        # The attacker is still connected and still not reading: everyone else is served at once.
        assert healthy_client(url, timeout_s=5)
        assert httpx.get(f"{base}/healthcheck", timeout=5).json() == {"status": "healthy"}
        backlog = server.zmq.backlog()
        assert backlog["replies"] <= 64 and backlog["peers"] <= 2
    finally:
        attacker.close()
    assert healthy_client(url, timeout_s=5)


def test_an_oversize_uid_is_dropped_unanswered(lmcache_server_factory):
    server = lmcache_server_factory()
    attacker = raw_dealer(_url(server))
    try:
        attacker.send_multipart(_noop("y" * 65536))
        attacker.send_multipart(_noop(7))  # then a normal request on the same connection
        assert attacker.poll(5000, zmq.POLLIN)
        reply = attacker.recv_multipart()
        assert msgspec.msgpack.decode(reply[0]) == 7  # the 64 KiB one got no answer
    finally:
        attacker.close()
    assert healthy_client(_url(server))


def test_a_stuck_loop_shows_in_healthcheck(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory(entry_points=True, allow="health")
    base = lmcache_http(server)
    release = threading.Event()
    entered = threading.Event()

    def stuck(args, identity):
        entered.set()
        release.wait(30)
        return "OK"

    server.zmq.handlers[Op.NOOP] = HandlerSpec(stuck, Dispatch.SYNC)  # a handler that blocks the loop thread
    client = LMCacheClient(_url(server), timeout_s=30)
    t = threading.Thread(target=client.noop, daemon=True)
    t.start()
    try:
        assert entered.wait(10)
        r = wait_for(lambda: (r := httpx.get(f"{base}/healthcheck", timeout=5)).status_code == 503 and r,
                     timeout_s=20, interval_s=0.2)
        assert r.json()["status"] == "unhealthy" and "stalled" in r.json()["reason"]
    finally:
        release.set()
        t.join(10)
        client.close()
    wait_for(lambda: httpx.get(f"{base}/healthcheck", timeout=5).status_code == 200, timeout_s=10)


def _stored_chunk_server(factory, **security):
    from lmcache_core.config import HTTPConfig, MPConfig, StorageManagerConfig
    from lmcache_core.testing import free_port
    from lmcache_core.transport.limits import SecurityConfig

    port = free_port()
    server = factory(configs={
        "mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.1),
        "http": HTTPConfig(http_admin_token="s3cret"),
        "security": SecurityConfig(**security)})
    return server, f"tcp://127.0.0.1:{port}"


def _l1_objects(server) -> int:
    return server.status()["storage_manager"]["l1_manager"]["total_object_count"]


def test_data_path_clear_is_refused_when_an_admin_token_is_set(lmcache_server_factory):
    from lmcache_core.client import make_key
    from lmcache_core.transfer.client_kv import WorkerKVCache

    server, url = _stored_chunk_server(lmcache_server_factory)
    kv = WorkerKVCache(1, (2, 32, 16, 2, 8))
    try:
        with LMCacheClient(url, timeout_s=20) as client:
            client.register_kv_cache(5, kv.descriptors(), "m", 1, {"kv_layout": "NHD"})
            assert client.store(make_key(list(range(256)), "s", model_name="m", worker_id=0), 5,
                                [list(range(1, 17))]) == (b"", True)
            client.end_session("s")
            assert _l1_objects(server) == 1
            try:
                client.clear(force=True)
                raise AssertionError("CLEAR was not refused")
            except wire.ErrorReply as exc:
                assert "clear failed" in exc.reason
            assert _l1_objects(server) == 1  # nothing was cleared
            assert client.noop() == "OK"
    finally:
        kv.close()


def test_data_path_clear_can_be_allowed_explicitly(lmcache_server_factory):
    server, url = _stored_chunk_server(lmcache_server_factory, data_path_clear="allow")
    with LMCacheClient(url, timeout_s=20) as client:
        assert client.clear(force=True) is None


def test_client_strings_cannot_forge_log_lines(lmcache_server_factory, caplog):
    import logging

    from lmcache_core.transfer.client_kv import WorkerKVCache

    server = lmcache_server_factory()
    caplog.set_level(logging.DEBUG, logger="lmcache_core")
    kv = WorkerKVCache(1, (2, 8, 16, 2, 8))
    try:
        with LMCacheClient(_url(server), timeout_s=20) as client:
            client.register_kv_cache(11, kv.descriptors(), "m\n2026-01-01 INFO forged: all good", 1,
                                     {"kv_layout": "NHD"})
            client.call(Op.LOOKUP, _key_with_model("x\ny"), 1)
    finally:
        kv.close()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("lmcache_core.transport")]
    assert any("forged" in msg for msg in messages)
    assert not any("\n" in msg for msg in messages)


def _key_with_model(model):
    from lmcache_core.client import make_key

    return make_key(list(range(256)), "r" * 600, model_name=model)  # an oversize request id: refused, logged


def test_failure_logging_is_rate_limited_not_silenced(caplog):
    import logging

    from lmcache_core.transport.zmq_server import RateLimitedLogger

    now = [0.0]
    log = RateLimitedLogger(burst=5, period=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="lmcache_core.transport.zmq_server")
    for i in range(2000):  # more distinct reasons than the old once-per-reason logger ever logged
        log(f"reason {i}")
    assert len(caplog.records) == 5 and log.suppressed == 1995
    now[0] = 10.5
    log("reason after the window")
    texts = [r.getMessage() for r in caplog.records]
    assert texts[-2] == "1995 more data-path failures were not logged" and texts[-1] == "reason after the window"
