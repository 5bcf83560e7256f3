"""/status, /conf and /quota answer while a store-heavy workload runs, and do not stall it.

One server as in production: the data path (ZMQ loop, store lanes, eviction,
write-behind to an FS L2) and the HTTP app share the process and its GIL. A
worker thread stores 8 MiB requests back to back into an L1 small enough to
evict continuously. Nothing here is timed; the test asserts orderings:

1. while the workload runs, an HTTP client reads the three routes round after
   round; every answer is a 200 with a full body, several rounds complete, and
   the workload completes stores during the HTTP phase (both sides progress);
2. 24 HTTP requests are sent and then *not read* (the clients stall, so each
   response sits in a socket buffer or a blocked send): the workload still
   completes more stores before any of them is read. A handler that held an
   engine lock while writing its response would stop the workload here.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx

from lmcache_core.cli import build_parser
from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.plugins import PluginHost
from lmcache_core.transfer.client_kv import WorkerKVCache

MODEL = "under-load"
CHUNK = 256
PATHS = ("/status", "/conf", "/quota")
MAX_STORES = 50_000  # bounds on the workload, whatever happens
MAX_SECONDS = 180.0


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    sock.settimeout(30)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the headers"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the body"
        body += chunk
    return int(head[9:12]), body


def test_status_conf_and_quota_answer_during_a_store_heavy_workload(lmcache_server_factory, lmcache_http,
                                                                    tmp_path: Path):
    host = PluginHost()
    options = build_parser(host, environ={}).parse_args([
        "--l1-size-gb", "0.0625", "--eviction-policy", "LRU",
        "--l2-adapter", f'{{"type":"fs","base_path":"{tmp_path}"}}'])
    server = lmcache_server_factory(entry_points=True, options=options)
    url = lmcache_http(server)
    http_port = int(url.rsplit(":", 1)[1])
    # 4 layers x (2, 64 blocks, 16 tokens, 8 heads, 128) fp16: one 256-token chunk is 4 MiB.
    kv = WorkerKVCache(4, (2, 64, 16, 8, 128))
    client = LMCacheClient(f"tcp://127.0.0.1:{server.mp_config.port}", timeout_s=30)
    client.register_kv_cache(1, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})

    stores = [0]
    failures: list[str] = []
    stop = threading.Event()

    def workload() -> None:
        deadline = time.monotonic() + MAX_SECONDS
        i = 0
        while not stop.is_set() and i < MAX_STORES and time.monotonic() < deadline:
            tokens = [i * 7919 + t for t in range(2 * CHUNK)]  # a new prefix every time
            reply = client.store(make_key(tokens, f"s{i}", model_name=MODEL, worker_id=0), 1, [list(range(32))])
            if reply != (b"", True):
                failures.append(f"store {i}: {reply!r}")
            client.end_session(f"s{i}")
            stores[0] += 1
            i += 1

    worker = threading.Thread(target=workload, name="store-workload")
    stalled: list[socket.socket] = []
    worker.start()
    try:
        assert _wait_for(lambda: stores[0] >= 3, 60), "the workload did not start"

        # 1. Both sides progress: HTTP rounds until the workload has done 10 more stores.
        at_start, rounds = stores[0], 0
        with httpx.Client(base_url=url, timeout=30) as http:
            while stores[0] < at_start + 10 or rounds < 3:
                assert rounds < 2000 and worker.is_alive(), (rounds, stores[0])
                status, conf, quota = (http.get(p) for p in PATHS)
                for resp in (status, conf, quota):
                    assert resp.status_code == 200, (resp.request.url, resp.status_code, resp.text[:200])
                assert status.json()["is_healthy"] is True and "storage_manager" in status.json()
                assert set(conf.json()) >= {"mp", "storage_manager", "observability", "http"}
                assert "users" in quota.json()
                rounds += 1
        assert worker.is_alive(), "the workload ended during the HTTP phase"

        # 2. Stalled HTTP readers do not stall the data path.
        for i in range(24):
            sock = socket.create_connection(("127.0.0.1", http_port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET {PATHS[i % 3]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            stalled.append(sock)
        before = stores[0]
        assert _wait_for(lambda: stores[0] >= before + 5, 60), (before, stores[0])
        for i, sock in enumerate(stalled):
            code, body = _read_response(sock)
            assert code == 200 and body.startswith(b"{"), (PATHS[i % 3], code, body[:100])
    finally:
        stop.set()
        worker.join(timeout=60)
        for sock in stalled:
            sock.close()
        client.close()
        kv.close()
    assert not worker.is_alive()
    assert failures == []
