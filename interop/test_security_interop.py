"""The real LMCache 0.5.6 client over the hardened data path (issue 13): an ``ipc://`` endpoint whose file
permissions decide who may connect (docs/security.md), with the real client library and ``lmcache bench
server`` (its checksums over HTTP too)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmcache_core.bench.peer import PEER_ENV
from lmcache_core.testing import free_port, server_process

HERE = Path(__file__).parent


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env.update(extra)
    return env


@pytest.fixture
def ours_on_ipc(tmp_path: Path) -> Iterator[tuple[str, str]]:
    base = tempfile.mkdtemp(prefix="lmcache-ipc-", dir="/tmp")  # short: a Unix socket path has a length limit
    sock = os.path.join(base, "mp.sock")
    hp = free_port()
    cmd = [sys.executable, "-m", "lmcache_core.cli", "--zmq-endpoint", f"ipc://{sock}", "--zmq-ipc-permissions",
           "0600", "--http-port", str(hp), "--l1-size-gb", "1", "--log-level", "WARNING",
           "--http-admin-token", "interop-t0ken"]
    try:
        with server_process(cmd, f"http://127.0.0.1:{hp}/healthcheck", env=_clean_env(), log=tmp_path / "ours.log"):
            assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
            yield f"ipc://{sock}", f"http://127.0.0.1:{hp}"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_real_client_library_round_trip_over_ipc(ours_on_ipc, peer_python):
    url, _ = ours_on_ipc
    proc = subprocess.run([str(peer_python), str(HERE / "peer_client.py"), url], capture_output=True, text=True,
                          timeout=300, env=_clean_env(**PEER_ENV))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert proc.returncode == 0 and result["failed"] == {}, result
    assert result["checks"]["bytes_equal"] is True


def test_real_bench_server_over_ipc(ours_on_ipc, peer_python):
    url, http_url = ours_on_ipc
    proc = subprocess.run([str(peer_python.parent / "lmcache"), "bench", "server", "--rpc-url", url, "--url", http_url,
                           "--mode", "cpu", "--kvcache-shape-spec", "(2,64,16,2,64):float16:2", "--num-tokens", "512",
                           "--start", "0", "--end", "3", "--interval", "0.2"],
                          capture_output=True, text=True, timeout=300, env=_clean_env(**PEER_ENV))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    ok, fail = re.search(r"Checksum OK:\s+(\d+)", out), re.search(r"Checksum FAIL:\s+(\d+)", out)
    assert ok and fail, out[-4000:]
    assert (int(ok.group(1)), int(fail.group(1))) == (3, 0)
