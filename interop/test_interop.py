"""lmcache-server driven by the real LMCache 0.5.6 client (``make interop``; not part of ``make test``)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest


HERE = Path(__file__).parent
PEER_ENV = {"LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "PYTHONWARNINGS": "ignore"}


def _clean_env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env.update(extra)
    return env
BENCH_ARGS = ["--mode", "cpu", "--kvcache-shape-spec", "(2,64,16,2,64):float16:2", "--num-tokens", "512",
              "--start", "0", "--end", "3", "--interval", "0.2"]


def lock_hygiene(http_url: str) -> dict:
    status = httpx.get(f"{http_url}/status", timeout=10).json()
    return {
        "read_locked": status["storage_manager"]["l1_manager"]["read_locked_count"],
        "write_locked": status["storage_manager"]["l1_manager"]["write_locked_count"],
        "lookup_locked": status["lookup_locked_objects"],
        "sessions": status["active_sessions"],
    }


@pytest.mark.parametrize("mode", ["lmcache_driven", "engine_driven"])
def test_real_bench_server_passes_against_lmcache_server(ours, peer_python, mode):
    proc = subprocess.run([str(peer_python.parent / "lmcache"), "bench", "server", "--rpc-url", ours.zmq_url,
                           "--url", ours.http_url, "--transfer-mode", mode, *BENCH_ARGS],
                          capture_output=True, text=True, timeout=300, env=_clean_env(**PEER_ENV))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    ok = re.search(r"Checksum OK:\s+(\d+)", out)
    fail = re.search(r"Checksum FAIL:\s+(\d+)", out)
    assert ok and fail, out[-4000:]
    assert (int(ok.group(1)), int(fail.group(1))) == (3, 0)
    assert lock_hygiene(ours.http_url) == {"read_locked": 0, "write_locked": 0, "lookup_locked": 0, "sessions": 0}


def run_peer_client(peer_python: Path, zmq_url: str, http_url: str | None = None) -> dict:
    proc = subprocess.run([str(peer_python), str(HERE / "peer_client.py"), zmq_url, *([http_url] if http_url else [])],
                          capture_output=True,
                          text=True, timeout=300, env=_clean_env(**PEER_ENV))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    result["returncode"] = proc.returncode
    return result


def test_real_client_library_round_trip_prefix_salt_and_lock_hygiene(ours, peer_python):
    result = run_peer_client(peer_python, ours.zmq_url)
    assert result["failed"] == {} and result["returncode"] == 0, result
    assert result["checks"]["bytes_equal"] is True
    assert lock_hygiene(ours.http_url) == {"read_locked": 0, "write_locked": 0, "lookup_locked": 0, "sessions": 0}


def test_same_workload_gives_the_same_answers_on_the_real_server(theirs, peer_python):
    # The workload script is checked against LMCache itself, so its expectations are LMCache's.
    result = run_peer_client(peer_python, theirs.zmq_url)
    assert result["failed"] == {} and result["returncode"] == 0, result


def test_real_client_hits_from_the_fs_l2_after_clear_cache(ours_with_fs, peer_python):
    result = run_peer_client(peer_python, ours_with_fs.zmq_url, ours_with_fs.http_url)
    assert result["failed"] == {} and result["returncode"] == 0, result
    assert result["checks"]["l2_lookup_hits"] == 2 and result["checks"]["l2_bytes_equal"] is True
    assert lock_hygiene(ours_with_fs.http_url) == {"read_locked": 0, "write_locked": 0, "lookup_locked": 0,
                                                   "sessions": 0}
