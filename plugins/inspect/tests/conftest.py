"""``serve_app(app) -> base_url``: real HTTP (uvicorn on 127.0.0.1) for an app built by the test itself,
e.g. one without a server on its state (the "not initialized" states the seed documents)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn


@contextlib.contextmanager
def _serving(app: Any, timeout_s: float = 30.0) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="test-serve-app")
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()


@pytest.fixture
def serve_app() -> Iterator[Any]:
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(_serving(app))
