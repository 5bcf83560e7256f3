"""STORE GB/s while ``GET /dashboard/data`` is polled at 10 Hz, beside the same server not polled.

One lmcache-server process (every installed plugin, the dashboard among them) serves; this
process plays a vLLM worker (a CPU shared-memory KV cache: 8 layers, 8 heads x 128 dims,
fp16, 16-token blocks, so 8 MiB chunk objects) and STOREs one new chunk per request in a closed
loop. Phases alternate, ``quiet, polled, polled, quiet, ...`` (``LMCACHE_BENCH_DASHBOARD_ROUNDS``
pairs, default 4, of ``LMCACHE_BENCH_DASHBOARD_SECONDS`` each, default 2): in a polled phase a
separate process (as a browser is) fetches ``/dashboard/data`` every 100 ms over one keep-alive
connection, as a page left open ten times over would. GB/s is what the server copied in (its
``store_bytes_total``) over the phase's wall time, so a STORE refused for lack of room counts
nothing. The row gives the median of each kind, the ratio polled/quiet (target >= 0.95) and the
poll latencies.
"""

from __future__ import annotations

import os
import statistics
import sys
import multiprocessing
import time
from typing import Any

import httpx

from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.testing import free_port, server_process
from lmcache_core.transfer.client_kv import WorkerKVCache

CHUNK, BLOCK = 256, 16
BPC = CHUNK // BLOCK
LAYERS, HEADS, HEAD_DIM = 8, 8, 128
CHUNKS_PER_STORE = 1
POLL_HZ = 10.0
MODEL = "bench-dashboard"
IID = 4242


def _env_number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _stored_bytes(http: httpx.Client) -> float:
    return float(http.get("/dashboard/data").json()["traffic"]["store_bytes_total"])


def _poll(base_url: str, hz: float, ready: Any, go: Any, done: Any, results: Any) -> None:
    """In its own process (as a browser is): while ``go`` is set, GET ``/dashboard/data`` at ``hz``;
    after each polled phase, put ``(latencies, failures)`` on ``results``; exit once ``done`` is set."""
    period = 1.0 / hz
    with httpx.Client(base_url=base_url, timeout=10.0) as http:
        ready.set()
        while not done.is_set():
            if not go.wait(0.05):
                continue
            latencies: list[float] = []
            failures = 0
            next_at = time.perf_counter()
            while go.is_set():
                start = time.perf_counter()
                try:
                    ok = http.get("/dashboard/data").status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                failures += 0 if ok else 1
                next_at += period
                time.sleep(max(0.0, next_at - time.perf_counter()))  # the 10 Hz pacing
            results.put((latencies, failures))


def _store_phase(client: LMCacheClient, http: httpx.Client, seconds: float, first_request: int) -> tuple[float, int]:
    """STORE new chunks for ``seconds``; ``(GB/s the server copied, requests sent)``."""
    n_blocks = CHUNKS_PER_STORE * BPC
    before = _stored_bytes(http)
    start = time.perf_counter()
    sent = 0
    while time.perf_counter() - start < seconds:
        r = first_request + sent
        tokens = [(r * 1_000_003 + i) % 60_000 for i in range(CHUNKS_PER_STORE * CHUNK)]
        key = make_key(tokens, f"bench-{r}", model_name=MODEL, worker_id=0)
        client.store(key, IID, [list(range(n_blocks))])
        client.end_session(f"bench-{r}")
        sent += 1
    elapsed = time.perf_counter() - start
    return (_stored_bytes(http) - before) / elapsed / 1e9, sent


def run() -> list[dict[str, Any]]:
    seconds = _env_number("LMCACHE_BENCH_DASHBOARD_SECONDS", 2.0)
    rounds = int(_env_number("LMCACHE_BENCH_DASHBOARD_ROUNDS", 4))
    http_port, zmq_port = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    cmd = [sys.executable, "-m", "lmcache_core.cli", "--l1-size-gb", "1", "--http-port", str(http_port),
           "--host", "127.0.0.1", "--port", str(zmq_port), "--log-level", "WARNING"]
    row: dict[str, Any] = {"bench": "dashboard", "poll_hz": POLL_HZ, "seconds_per_phase": seconds, "rounds": rounds,
                           "chunk_mib": LAYERS * 2 * CHUNK * HEADS * HEAD_DIM * 2 / 2**20,
                           "chunks_per_store": CHUNKS_PER_STORE, "target_ratio_min": 0.95}
    with server_process(cmd, f"{base}/healthcheck", env=env):
        with httpx.Client(base_url=base, timeout=30.0) as http:
            if http.get("/dashboard/data").status_code != 200:
                row["result"] = "not measured: the dashboard plugin is not installed"
                return [row]
            kv = WorkerKVCache(LAYERS, (2, CHUNKS_PER_STORE * BPC, BLOCK, HEADS, HEAD_DIM))
            client = LMCacheClient(f"tcp://127.0.0.1:{zmq_port}", timeout_s=60)
            try:
                client.register_kv_cache(IID, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
                _store_phase(client, http, min(1.0, seconds), 0)  # warm-up: page in L1 and the segments
                quiet: list[float] = []
                polled: list[float] = []
                latencies: list[float] = []
                failures = 0
                request = 1_000_000
                ctx = multiprocessing.get_context("spawn")
                ready, go, done, results = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
                poller = ctx.Process(target=_poll, args=(base, POLL_HZ, ready, go, done, results), daemon=True)
                poller.start()
                try:
                    if not ready.wait(180):
                        raise RuntimeError("the poller process did not start")
                    for i in range(rounds):
                        # ABBA order (quiet-polled, polled-quiet, ...): a drift over the run (L1 filling,
                        # other load on the machine) weighs on both kinds alike
                        for poll in ((False, True) if i % 2 == 0 else (True, False)):
                            if poll:
                                go.set()
                            try:
                                gbps, sent = _store_phase(client, http, seconds, request)
                            finally:
                                go.clear()
                            request += sent
                            (polled if poll else quiet).append(gbps)
                            if poll:
                                phase_latencies, phase_failures = results.get(timeout=60)
                                latencies += phase_latencies
                                failures += phase_failures
                finally:
                    done.set()
                    poller.join(30)
            finally:
                client.close()
                kv.close()
    latencies.sort()
    q, p = statistics.median(quiet), statistics.median(polled)
    row.update({
        "store_GBps_quiet": round(q, 3), "store_GBps_polled": round(p, 3),
        "store_GBps_quiet_phases": [round(v, 3) for v in quiet],
        "store_GBps_polled_phases": [round(v, 3) for v in polled],
        "ratio_polled_over_quiet": round(p / q, 3) if q else None,
        "polls": len(latencies), "poll_failures": failures,
        "poll_p50_ms": round(latencies[len(latencies) // 2] * 1e3, 2) if latencies else None,
        "poll_p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3, 2)
        if latencies else None,
    })
    return [row]
