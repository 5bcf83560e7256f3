"""The real LMCache 0.5.6 client end to end on a file-backed Device-DAX L2 (``make interop``).

lmcache-server runs with ``--l2-adapter '{"type": "dax", ...}'`` on a regular file standing in
for ``/dev/daxX.Y``. The real client library (``interop/peer_client.py``, run by the peer venv's
python) registers a KV cache, stores 512 tokens, and, given the HTTP URL, waits for the
write-behind, ``POST /clear-cache`` and checks that the same lookup hits from the DAX L2 alone
and the retrieved bytes are equal. The DAX status then shows the chunks in their slots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lmcache_core.testing import free_port, server_process

HERE = Path(__file__).parent
PEER_ENV = {"LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "PYTHONWARNINGS": "ignore"}
SLOT_BYTES = 1 << 20  # the workload's chunk object is 256 KiB (2 layers of (2, 16, 16, 2, 64) fp16)
DEVICE_BYTES = 64 << 20


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env.update(extra)
    return env


@pytest.fixture(params=[False, True], ids=["volatile", "persistent"])
def ours_with_dax(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    device = tmp_path / "dax0.0"
    with open(device, "wb") as f:
        f.truncate(DEVICE_BYTES)
    adapter = {"type": "dax", "device_path": str(device), "max_dax_size_gb": DEVICE_BYTES / (1 << 30),
               "slot_bytes": SLOT_BYTES, "persist_enabled": request.param, "hotplug_enabled": True}
    zp, hp = free_port(), free_port()
    cmd = [sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp), "--http-port",
           str(hp), "--l1-size-gb", "1", "--log-level", "WARNING", "--l2-adapter", json.dumps(adapter)]
    with server_process(cmd, f"http://127.0.0.1:{hp}/healthcheck", env=_clean_env(), log=tmp_path / "ours.log"):
        yield f"tcp://127.0.0.1:{zp}", f"http://127.0.0.1:{hp}"


def test_real_client_hits_from_the_dax_l2_after_clear_cache(ours_with_dax: tuple[str, str],
                                                            peer_python: Path) -> None:
    zmq_url, http_url = ours_with_dax
    proc = subprocess.run([str(peer_python), str(HERE / "peer_client.py"), zmq_url, http_url], capture_output=True,
                          text=True, timeout=300, env=_clean_env(**PEER_ENV))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["failed"] == {} and proc.returncode == 0, result
    assert result["checks"]["l2_lookup_hits"] == 2 and result["checks"]["l2_bytes_equal"] is True
    status = httpx.get(f"{http_url}/reconfigure/dax/status", timeout=10).json()["adapters"][0]["status"]
    [device] = status["devices"]
    assert device["live_slot_count"] >= 2 and status["total_used_bytes"] == device["live_slot_count"] * SLOT_BYTES
    assert device["locked_key_count"] == 0 and device["borrowed_slot_count"] == 0
    l1 = httpx.get(f"{http_url}/status", timeout=10).json()["storage_manager"]["l1_manager"]
    assert (l1["read_locked_count"], l1["write_locked_count"]) == (0, 0)
