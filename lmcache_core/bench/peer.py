"""The real LMCache 0.5.6 server as a baseline and interop partner (installed by ``interop/install-peer.sh``).

One place for where its venv is, the environment it runs quietly with, and its
command line, so every benchmark and interop test starts it the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

PEER_VENV = Path(os.environ.get("LMCACHE_PEER_VENV", Path.home() / ".cache/lmcache-peer/venv"))
PEER_ENV = {"LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "PYTHONWARNINGS": "ignore"}


def peer_lmcache() -> Path | None:
    """The peer's ``lmcache`` executable, or None when the peer venv is not installed."""
    exe = PEER_VENV / "bin" / "lmcache"
    return exe if exe.exists() else None


def peer_server_cmd(lmcache: Path | str, zmq_port: int, http_port: int, l1_size_gb: float,
                    *extra: str) -> list[str]:
    """``lmcache server`` on 127.0.0.1 with an LRU L1 of ``l1_size_gb`` and ``extra`` arguments."""
    return [str(lmcache), "server", "--host", "127.0.0.1", "--port", str(zmq_port), "--http-host", "127.0.0.1",
            "--http-port", str(http_port), "--l1-size-gb", str(l1_size_gb), "--eviction-policy", "LRU", *extra]


def peer_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` plus :data:`PEER_ENV`."""
    return {**base, **PEER_ENV}
