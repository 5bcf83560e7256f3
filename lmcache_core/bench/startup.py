"""Start-up benchmark: seconds from launch to the first healthy ``/healthcheck``, and RSS 2 s later.

Measured for lmcache-server with every installed plugin, and in the same run for
two baselines: the floor of any torch-based Python server (a process that only imports
torch: its time and its RSS right after), and the real
LMCache 0.5.6 server when its peer venv exists (``interop/install-peer.sh``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from lmcache_core.bench.peer import PEER_VENV, peer_env, peer_lmcache, peer_server_cmd
from lmcache_core.testing import free_port, stop_process_group



def _rss_bytes(pid: int) -> int:
    """Resident set of ``pid`` and its descendants (LMCache spawns helpers)."""
    total = 0
    pids = [pid]
    try:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 (loopback only)
            return resp.status == 200
    except OSError:
        return False


def measure_server(cmd: list[str], http_port: int, env: dict[str, str] | None = None,
                   timeout_s: float = 120.0, settle_s: float = 2.0) -> dict[str, Any]:
    """Launch ``cmd``; time to first 200 on /healthcheck; RSS ``settle_s`` later; stop it."""
    url = f"http://127.0.0.1:{http_port}/healthcheck"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = start + timeout_s
        while not _healthy(url):
            if proc.poll() is not None:
                return {"error": f"exited with {proc.returncode} before healthy"}
            if time.perf_counter() > deadline:
                return {"error": f"not healthy within {timeout_s}s"}
            time.sleep(0.01)
        ready_s = time.perf_counter() - start
        time.sleep(settle_s)  # the figure is defined as RSS 2 s after healthy
        rss = _rss_bytes(proc.pid)
        return {"seconds_to_healthy": round(ready_s, 3), "rss_mb": round(rss / 2**20, 1)}
    finally:
        stop_process_group(proc)


def measure_import_torch() -> dict[str, Any]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c",
         "import torch,pathlib;print([l for l in pathlib.Path('/proc/self/status').read_text().splitlines()"
         " if l.startswith('VmRSS:')][0].split()[1])"],
        capture_output=True, text=True, check=True)
    return {"seconds": round(time.perf_counter() - start, 3), "rss_mb": round(int(out.stdout.split()[-1]) / 1024, 1)}


def run(l1_size_gb: float = 4.0) -> list[dict[str, Any]]:
    """JSON-able rows: ours, then the baselines measured in the same run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    port = free_port()
    ours = measure_server([sys.executable, "-m", "lmcache_core.cli", "--l1-size-gb", str(l1_size_gb),
                           "--http-port", str(port), "--port", str(free_port()), "--log-level", "WARNING"],
                          port, env)
    torch_floor = measure_import_torch()
    row: dict[str, Any] = {
        "bench": "startup", "l1_size_gb": l1_size_gb, **ours,
        "baseline_import_torch_seconds": torch_floor["seconds"],
        "baseline_import_torch_rss_mb": torch_floor["rss_mb"],
        "target_seconds": 3.0, "target_rss_mb": 400,
    }
    peer = peer_lmcache()
    if peer is not None:
        port = free_port()
        theirs = measure_server(peer_server_cmd(peer, free_port(), port, l1_size_gb), port, peer_env(env))
        row["lmcache_0_5_6_seconds_to_healthy"] = theirs.get("seconds_to_healthy")
        row["lmcache_0_5_6_rss_mb"] = theirs.get("rss_mb")
        if "error" in theirs:
            row["lmcache_0_5_6_error"] = theirs["error"]
        elif "seconds_to_healthy" in ours:
            row["ratio_seconds_ours_over_lmcache"] = round(ours["seconds_to_healthy"] / theirs["seconds_to_healthy"], 3)
            row["ratio_rss_ours_over_lmcache"] = round(ours["rss_mb"] / theirs["rss_mb"], 3)
    else:
        row["lmcache_0_5_6"] = f"not measured: no peer at {PEER_VENV} (run interop/install-peer.sh)"
    return [row]
