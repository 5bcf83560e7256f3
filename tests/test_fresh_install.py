"""`pip install .` of the core alone, in a fresh virtual environment, serves with no route plugins."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from lmcache_core.testing import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_core_alone_installs_and_serves_plugins_listing(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    port = free_port()
    proc = subprocess.Popen([str(env_dir / "bin" / "lmcache-server"), "--http-port", str(port), "--port",
                             str(free_port())], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        wait_http(f"http://127.0.0.1:{port}/plugins", proc)
        listing = httpx.get(f"http://127.0.0.1:{port}/plugins").json()
        assert {p["name"] for p in listing["plugins"]} == {"core.eviction", "core.routes", "core.engine"}
        assert listing["failed"] == []
        assert httpx.get(f"http://127.0.0.1:{port}/healthcheck").status_code == 404
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    freeze = subprocess.run([str(py), "-m", "pip", "freeze"], capture_output=True, text=True).stdout
    assert "lmcache-plugin" not in freeze
    assert sys.prefix != str(env_dir)
