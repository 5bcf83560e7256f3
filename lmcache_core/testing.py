"""Test helpers and pytest fixtures for lmcache-server and its plugin authors.

Installed as a pytest plugin (entry point ``pytest11: lmcache``), so a plugin's
test suite gets these fixtures without importing anything:

``lmcache_server_factory``
    ``make(plugins=[...], entry_points=False, configs=None, start=True, **host_kwargs)``
    builds a :class:`~lmcache_core.server.CacheServer` whose plugin host has the
    built-ins plus the given plugins (modules or ``(name, module)`` pairs), and,
    with ``entry_points=True``, every installed plugin. Started servers are
    stopped at teardown.
``lmcache_http``
    ``serve(server) -> base_url``: serves the server's Litestar app with uvicorn
    on 127.0.0.1 (a free port) in a thread, for real HTTP requests; stopped at
    teardown.
``lmcache_serve_app``
    ``serve(app) -> base_url``: the same for an ASGI app the test built itself.

``lmcache_options``
    ``options(argv=[...], plugins=[...], environ={...}) -> Namespace``: a command line parsed as
    ``lmcache-server`` parses it with the built-ins and ``plugins`` (their flags included); pass
    it as ``options=`` to the factory, which also takes ``argv=`` / ``environ=`` itself.
``lmcache_openapi_check``
    :func:`~lmcache_core.http_contract.check_openapi`: schemathesis over the served document's
    operations (a plugin passes ``paths=`` to check its own routes).

Outside pytest, :func:`make_server`, :func:`serving` and :func:`serving_app` do the same;
:func:`parse_options` parses a command line with a plugin's options; :func:`route_table` says
which routes ``require_admin`` guards, read off the app (never a hard-coded list). The module imports
pytest only when pytest is installed (the fixtures need it), so ``lmcache-server bench``,
which uses the helpers, runs on a plain install.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from lmcache_core.http_contract import check_openapi, is_admin_guarded, route_table
from lmcache_core.client import LMCacheClient, make_key  # noqa: F401  (for plugin tests: a real data-path client)
from lmcache_core.plugins import PluginHost
from lmcache_core.server import CacheServer
from lmcache_core.transfer.client_kv import WorkerKVCache  # noqa: F401  (a worker's KV cache, for plugin tests)

try:
    import pytest
except ImportError:  # a plain install: the helpers work, the fixtures are not defined
    pytest = None  # type: ignore[assignment]

PluginSpec = ModuleType | tuple[str, object]


def _named(plugins: Iterable[PluginSpec]) -> list[tuple[str, object]]:
    named = []
    for p in plugins:
        if isinstance(p, tuple):
            named.append(p)
        else:
            named.append((p.__name__, p))
    return named


def make_server(
    plugins: Iterable[PluginSpec] = (),
    *,
    entry_points: bool = False,
    configs: dict[str, msgspec.Struct] | None = None,
    options: argparse.Namespace | None = None,
    start: bool = True,
    **host_kwargs: Any,
) -> CacheServer:
    """A server with the built-ins, ``plugins`` and (optionally) installed entry points.

    ``options`` is a parsed command line (default: every option's default);
    ``configs`` replaces config sections outright. Unless ``configs`` has an
    ``mp`` section or ``options`` a non-default ``--port``, the ZMQ socket binds
    127.0.0.1 on a free port.
    """
    host = PluginHost(load_entry_points=entry_points, extra_plugins=_named(plugins), **host_kwargs)
    configs = dict(configs or {})
    if "mp" not in configs and (options is None or options.port == 5555):
        # Tests run many servers: give each its own ZMQ port unless the caller chose one.
        from lmcache_core.config import MPConfig

        configs["mp"] = MPConfig(host="127.0.0.1", port=free_port())
    server = CacheServer(host, configs, options)
    if start:
        server.start()
    return server


def parse_options(plugins: Iterable[PluginSpec], argv: list[str], environ: dict[str, str] | None = None
                  ) -> argparse.Namespace:
    """``argv`` parsed as ``lmcache-server`` would with the built-ins and ``plugins`` (their config flags
    included) and ``environ`` as the environment (default: none): pass it as ``options=`` to :func:`make_server`."""
    from lmcache_core.options import build_parser

    host = PluginHost(load_entry_points=False, extra_plugins=_named(plugins))
    return build_parser(host, environ=environ or {}).parse_args(argv)


class _Uvicorn:
    """uvicorn serving one app on a given socket, in a daemon thread."""

    def __init__(self, app: Any, sock: socket.socket) -> None:
        import uvicorn

        started = threading.Event()

        class _Server(uvicorn.Server):
            async def startup(self, sockets: list[socket.socket] | None = None) -> None:
                await super().startup(sockets=sockets)
                started.set()

        self.server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
        self.started = started
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True,
                                       name="lmcache-test-uvicorn")

    def start(self, timeout: float = 30.0) -> None:
        self.thread.start()
        if not self.started.wait(timeout):
            raise RuntimeError("uvicorn did not start")

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


@contextlib.contextmanager
def serving_app(app: Any) -> Iterator[str]:
    """Serve any ASGI ``app`` on 127.0.0.1 (uvicorn, in a thread) and yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    runner = _Uvicorn(app, sock)
    runner.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.stop()
        sock.close()


@contextlib.contextmanager
def serving(server: CacheServer) -> Iterator[str]:
    """Serve ``server``'s HTTP app on 127.0.0.1 and yield its base URL."""
    from lmcache_core.http.app import create_app

    with serving_app(create_app(server)) as url:
        yield url


def write_dist(root: Path, dist_name: str, entry_points: dict[str, str], version: str = "1.0") -> Path:
    """Write ``<dist>-<version>.dist-info`` (METADATA + entry_points.txt) under ``root``.

    With ``root`` on ``sys.path`` (or ``PYTHONPATH``), ``importlib.metadata``
    finds the distribution and its ``lmcache`` entry points exactly as it finds
    an installed package's.
    """
    info = root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    lines = ["[lmcache]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return info


def wait_http(url: str, proc: Any = None, *, expect: int = 200, timeout_s: float = 60.0,
              poll_s: float = 0.01) -> None:
    """Wait until ``url`` answers ``expect`` (a server starting up); fail early if ``proc`` exits.

    Bounded by ``timeout_s``; raises ``RuntimeError`` on timeout or when the process died.
    """
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 (loopback)
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = None
        if status == expect:
            return
        time.sleep(poll_s)
    raise RuntimeError(f"{url} did not answer {expect} within {timeout_s}s")


def stop_process_group(proc: Any, timeout_s: float = 30.0) -> None:
    """SIGTERM the process group of ``proc`` (started with ``start_new_session=True``); SIGKILL if it lingers."""
    import os
    import signal
    import subprocess

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except ProcessLookupError:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=timeout_s)


@contextlib.contextmanager
def server_process(cmd: list[str], health_url: str, *, env: dict[str, str] | None = None, log: Path | None = None,
                   timeout_s: float = 120.0) -> Iterator[Any]:
    """Run a server command in its own process group until the block ends; yields the ``Popen`` once
    ``health_url`` answers 200. Output goes to ``log`` (or is discarded)."""
    import subprocess

    out = log.open("a") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    try:
        wait_http(health_url, proc, timeout_s=timeout_s)
        yield proc
    finally:
        stop_process_group(proc)


def wait_for(condition: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.02,
             what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy and return that; fail after ``timeout_s``.

    For tests: the bounded-deadline wait that stands in for a sleep.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s} s")
        time.sleep(interval_s)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if pytest is not None:

    @pytest.fixture
    def lmcache_server_factory() -> Iterator[Any]:
        """Factory for :class:`CacheServer` instances; each is stopped at teardown."""
        made: list[CacheServer] = []

        def make(plugins: Iterable[PluginSpec] = (), *, argv: list[str] | None = None,
                 environ: dict[str, str] | None = None, **kwargs: Any) -> CacheServer:
            plugins = list(plugins)
            if argv is not None or environ is not None:
                kwargs["options"] = parse_options(plugins, list(argv or []), environ)
            server = make_server(plugins, **kwargs)
            made.append(server)
            return server

        yield make
        for server in made:
            server.stop()


    @pytest.fixture
    def lmcache_options() -> Any:
        """``options(argv=(), plugins=(), environ=None)``: :func:`parse_options` with keywords, no internals."""
        def options(argv: Iterable[str] = (), plugins: Iterable[PluginSpec] = (),
                    environ: dict[str, str] | None = None) -> argparse.Namespace:
            return parse_options(plugins, list(argv), environ)

        return options


    @pytest.fixture
    def lmcache_openapi_check() -> Any:
        """:func:`~lmcache_core.http_contract.check_openapi` (``check(base_url, paths=..., excluded=...)``)."""
        return check_openapi


    @pytest.fixture
    def lmcache_serve_app() -> Iterator[Any]:
        """``serve(app) -> base_url`` for an app the test built itself (e.g. one without a server on
        its state, to reach the "not initialized" answers); real HTTP, stopped at teardown."""
        with contextlib.ExitStack() as stack:
            yield lambda app: stack.enter_context(serving_app(app))


    @pytest.fixture
    def lmcache_http() -> Iterator[Any]:
        """``serve(server) -> base_url``: real HTTP on 127.0.0.1, stopped at teardown."""
        stack = contextlib.ExitStack()

        def serve(server: CacheServer) -> str:
            return stack.enter_context(serving(server))

        with stack:
            yield serve
