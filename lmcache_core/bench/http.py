"""HTTP requests/s: ``/healthcheck``, ``/status`` and ``GET /quota`` under 16 concurrent connections.

lmcache-server (all installed plugins) and, when its peer venv exists, the real
LMCache 0.5.6 server are started as separate processes with the same L1 size,
and driven in the same run by the same load generator with 16 keep-alive
HTTP/1.1 connections, each sending its next request as soon as the previous
answer is complete (closed loop): ``wrk`` (one thread, C; Debian package
``wrk``) when it is on PATH, else a Python asyncio client, which on a small
machine takes CPU from the servers and compresses the ratio. The row names
the generator used.

Each row: requests/s, p50 and p99 latency, non-200 answers, for both servers,
and the ratio ours/theirs (target ≥ 2).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

from lmcache_core.bench.peer import PEER_VENV, peer_env, peer_lmcache, peer_server_cmd
from lmcache_core.testing import free_port, stop_process_group, wait_http

PATHS = ("/healthcheck", "/status", "/quota")
CONNECTIONS = 16


async def _connection(host: str, port: int, request: bytes, stop_at: float, latencies: list[float],
                      statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, val = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(val)
                elif lname == b"transfer-encoding" and b"chunked" in val.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            elif length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _load_async(host: str, port: int, path: str, seconds: float, connections: int) -> dict[str, Any]:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\n\r\n".encode()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter()
    await asyncio.gather(*(_connection(host, port, request, start + seconds, latencies, statuses)
                           for _ in range(connections)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    return {
        "requests_per_s": round(n / elapsed, 1),
        "p50_ms": round(latencies[n // 2] * 1e3, 3) if n else None,
        "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1e3, 3) if n else None,
        "non_200": sum(c for s, c in statuses.items() if s != 200),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return round(float(value) * _UNITS[unit], 3)


def _load_wrk(wrk: str, port: int, path: str, seconds: float, connections: int) -> dict[str, Any]:
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                          f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"requests_per_s": round(rps, 1), "p50_ms": _wrk_ms(p50), "p99_ms": _wrk_ms(p99),
            "non_200": int(non2xx.group(1)) if non2xx else 0}


def generator() -> str:
    """``wrk`` when it is installed, else ``asyncio``."""
    return "wrk" if shutil.which("wrk") else "asyncio"


def load(port: int, path: str, seconds: float = 3.0, connections: int = CONNECTIONS,
         warmup_s: float = 0.5) -> dict[str, Any]:
    """Closed-loop load on ``http://127.0.0.1:port{path}``; a short warm-up first (not counted)."""
    asyncio.run(_load_async("127.0.0.1", port, path, warmup_s, connections))
    wrk = shutil.which("wrk")
    if wrk:
        return _load_wrk(wrk, port, path, seconds, connections)
    return asyncio.run(_load_async("127.0.0.1", port, path, seconds, connections))


def _serve(cmd: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthcheck", proc, timeout_s=180)
    except BaseException:
        stop_process_group(proc)
        raise
    return proc


def _measure(cmd: list[str], port: int, env: dict[str, str], seconds: float) -> dict[str, dict[str, Any]]:
    proc = _serve(cmd, port, env)
    try:
        return {path: load(port, path, seconds) for path in PATHS}
    finally:
        stop_process_group(proc)


def run(seconds: float = 3.0, l1_size_gb: float = 1.0) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    port = free_port()
    ours = _measure([sys.executable, "-m", "lmcache_core.cli", "--l1-size-gb", str(l1_size_gb),
                     "--http-port", str(port), "--port", str(free_port()), "--log-level", "WARNING"],
                    port, env, seconds)
    theirs: dict[str, dict[str, Any]] | None = None
    peer = peer_lmcache()
    if peer is not None:
        port = free_port()
        theirs = _measure(peer_server_cmd(peer, free_port(), port, l1_size_gb), port, peer_env(env), seconds)
    rows = []
    for path in PATHS:
        row: dict[str, Any] = {"bench": "http", "path": path, "connections": CONNECTIONS, "seconds": seconds,
                               "generator": generator(),
                               **{f"ours_{k}": v for k, v in ours[path].items()}}
        if theirs is None:
            row["lmcache_0_5_6"] = f"not measured: no peer at {PEER_VENV} (run interop/install-peer.sh)"
        else:
            row.update({f"lmcache_0_5_6_{k}": v for k, v in theirs[path].items()})
            if theirs[path]["requests_per_s"]:
                row["ratio_rps_ours_over_lmcache"] = round(
                    ours[path]["requests_per_s"] / theirs[path]["requests_per_s"], 2)
        row["target_ratio"] = 2.0
        rows.append(row)
    return rows
