"""Attacks on the HTTP surface (issue 13, findings 9 and 10), against a real ``lmcache-server`` process."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import httpx

from lmcache_core.http.limits import MAX_HEAD_BYTES
from lmcache_core.testing import free_port
from security_support import cli_server, rss_bytes, wait_for

MiB = 1 << 20


def _flood(host: str, port: int, head: bytes, results: list[str], total: int = 16 * MiB) -> None:
    """Send ``head`` then stream filler into it until the server closes (or ``total`` bytes went)."""
    sock = socket.create_connection((host, port), timeout=30)
    sent = 0
    try:
        sock.sendall(head)
        block = b"a" * 65536
        while sent < total:
            sock.sendall(block)
            sent += len(block)
        results.append(f"not closed after {sent} bytes")
    except (BrokenPipeError, ConnectionResetError):
        results.append("closed")
    finally:
        sock.close()


def test_header_and_url_floods_are_cut_off_and_the_server_stays_healthy(tmp_path):
    with cli_server(tmp_path) as (pid, _, base):
        host, port = "127.0.0.1", int(base.rsplit(":", 1)[1])
        before = rss_bytes(pid)
        results: list[str] = []
        floods = [threading.Thread(target=_flood, args=(host, port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Flood: ",
                                                        results)),
                  threading.Thread(target=_flood, args=(host, port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Flood: ",
                                                        results)),
                  threading.Thread(target=_flood, args=(host, port, b"GET /", results))]
        for t in floods:
            t.start()
        try:
            # While the floods run: the probe answers.
            assert httpx.get(f"{base}/healthcheck", timeout=10).status_code == 200
        finally:
            for t in floods:
                t.join(60)
        assert results == ["closed"] * 3
        assert rss_bytes(pid) - before < 32 * MiB
        # A request with a large but sane head is still served.
        r = httpx.get(f"{base}/healthcheck", headers={"X-Big": "b" * (MAX_HEAD_BYTES // 2)}, timeout=10)
        assert r.status_code == 200
        assert wait_for(lambda: httpx.get(f"{base}/", timeout=10).status_code == 200)


def test_an_oversize_head_gets_a_400_and_a_closed_connection(tmp_path):
    with cli_server(tmp_path) as (_, _, base):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\nX-Big: " + b"c" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400")


def test_run_script_api_refuses_to_start_without_an_admin_token(tmp_path):
    cmd = [sys.executable, "-m", "lmcache_core.cli", "--run-script-api-enabled", "--host", "127.0.0.1",
           "--port", str(free_port()), "--http-port", str(free_port())]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "--run-script-api-enabled requires --http-admin-token" in out.stderr
    assert "not a sandbox" in out.stderr
