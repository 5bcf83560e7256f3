"""Fixtures for the interoperability suite (``make interop``): the real LMCache 0.5.6 peer and our server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmcache_core.bench.peer import PEER_ENV, peer_server_cmd
from lmcache_core.testing import free_port, server_process

PEER_VENV = Path(os.environ.get("LMCACHE_PEER_VENV", Path.home() / ".cache/lmcache-peer/venv"))


@dataclass
class Served:
    zmq_url: str
    http_url: str
    proc: subprocess.Popen


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env.update(extra)
    return env


def _serve(cmd: list[str], env: dict[str, str], zp: int, hp: int, log: Path) -> Iterator[Served]:
    with server_process(cmd, f"http://127.0.0.1:{hp}/healthcheck", env=env, log=log) as proc:
        yield Served(f"tcp://127.0.0.1:{zp}", f"http://127.0.0.1:{hp}", proc)


@pytest.fixture(scope="session")
def peer_python() -> Path:
    py = PEER_VENV / "bin" / "python"
    if not py.exists():
        pytest.fail(f"no LMCache peer at {PEER_VENV}: run interop/install-peer.sh (make interop does)")
    return py


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[Served]:
    zp, hp = free_port(), free_port()
    yield from _serve([sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
                       "--http-port", str(hp), "--l1-size-gb", "1", "--log-level", "WARNING"],
                      _clean_env(), zp, hp, tmp_path / "ours.log")


@pytest.fixture(params=["default", "skip_l1"])
def ours_with_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """lmcache-server with an FS L2, with each --l2-store-policy."""
    zp, hp = free_port(), free_port()
    adapter = '{"type": "fs", "base_path": "%s"}' % (tmp_path / "l2")
    yield from _serve([sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
                       "--http-port", str(hp), "--l1-size-gb", "1", "--log-level", "WARNING",
                       "--l2-adapter", adapter, "--l2-store-policy", request.param], _clean_env(), zp, hp,
                      tmp_path / "ours.log")


@pytest.fixture
def theirs(tmp_path: Path, peer_python: Path) -> Iterator[Served]:
    zp, hp = free_port(), free_port()
    yield from _serve(peer_server_cmd(peer_python.parent / "lmcache", zp, hp, 1, "--supported-transfer-mode", "auto"),
                      _clean_env(**PEER_ENV), zp, hp, tmp_path / "peer.log")


@pytest.fixture(scope="module")
def ours_module(tmp_path_factory) -> Iterator[Served]:
    zp, hp = free_port(), free_port()
    yield from _serve([sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
                       "--http-port", str(hp), "--l1-size-gb", "1", "--log-level", "WARNING"],
                      _clean_env(), zp, hp, tmp_path_factory.mktemp("ours") / "ours.log")


@pytest.fixture(scope="module")
def theirs_module(tmp_path_factory) -> Iterator[Served]:
    lmcache = PEER_VENV / "bin" / "lmcache"
    if not lmcache.exists():
        pytest.fail(f"no LMCache peer at {PEER_VENV}: make interop installs it")
    zp, hp = free_port(), free_port()
    yield from _serve(peer_server_cmd(lmcache, zp, hp, 1, "--supported-transfer-mode", "auto"),
                      _clean_env(**PEER_ENV), zp, hp, tmp_path_factory.mktemp("theirs") / "peer.log")
