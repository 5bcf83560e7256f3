"""The dashboard: ``GET /dashboard`` (the page), ``GET /dashboard/data`` and ``GET /dashboard/fleet``.

``GET /dashboard``
    One HTML page with its script and style (``/dashboard/dashboard.js``, ``/dashboard/dashboard.css``),
    all shipped in this package: no CDN, no build step, hand-written SVG charts. The page polls
    ``/dashboard/data`` every second and redraws; charts keep a rolling window of five minutes in
    the browser. It answers whatever the engine's state, so the page can show "starting".
``GET /dashboard/data``
    :class:`~lmcache_plugin_dashboard.snapshot.DashboardData`, from in-process counters only
    (see :mod:`lmcache_plugin_dashboard.snapshot`); 503 ``{"error": "engine not initialized",
    "state": "starting"}`` before the engine is ready and after it stopped.
``GET /dashboard/fleet``
    This node and every ``--dashboard-peer`` (see :mod:`lmcache_plugin_dashboard.fleet`).

Options: ``--dashboard-peer URL`` (repeatable; ``LMCACHE_DASHBOARD_PEER``, comma-separated) and
``--dashboard-peer-timeout-seconds`` (``LMCACHE_DASHBOARD_PEER_TIMEOUT_SECONDS``, default 1).
Shown in ``/conf`` as the ``dashboard`` section.

Guards: none of these routes is guarded by ``--http-admin-token``: they are reads, like
``/status`` and ``/metrics``, and the page has no way to hold a secret. The token (when set) is
only sent to peers.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.resources
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
from litestar import MediaType, Response, Router, get
from litestar.openapi.datastructures import ResponseSpec

from lmcache_core import hookimpl
from lmcache_core.http import openapi
from lmcache_core.http.deps import Engine, Server, unavailable_body
from lmcache_core.server import CacheServer
from lmcache_plugin_dashboard import exporter, fleet, snapshot
from lmcache_plugin_dashboard.latency import LookupTimer

CONFIG_NAME = "dashboard"
STARTING_BODY = {"error": "engine not initialized", "state": "starting"}
NO_CACHE = {"Cache-Control": "no-cache"}


class DashboardConfig(msgspec.Struct, kw_only=True):
    """``/conf`` section ``dashboard``."""

    dashboard_peer: list[str] = msgspec.field(default_factory=list)
    dashboard_peer_timeout_seconds: float = fleet.DEFAULT_TIMEOUT_S


@dataclass
class _NodeState:
    config: DashboardConfig
    started: float = field(default_factory=time.monotonic)
    timer: LookupTimer = field(default_factory=LookupTimer)


_STATES: weakref.WeakKeyDictionary[CacheServer, _NodeState] = weakref.WeakKeyDictionary()


def _asset(name: str) -> bytes:
    return (importlib.resources.files(__package__) / "static" / name).read_bytes()


PAGE = _asset("index.html")
SCRIPT = _asset("dashboard.js")
STYLE = _asset("dashboard.css")


# -- options -------------------------------------------------------------------------------


def _peer_url(text: str) -> str:
    try:
        return fleet.parse_peer_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 60:
        raise argparse.ArgumentTypeError(f"{value} must be > 0 and <= 60 seconds")
    return value


@hookimpl
def lmcache_add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dashboard plugin", "GET /dashboard: the live page and its fleet view.")
    group.add_argument("--dashboard-peer", type=_peer_url, action="append", default=[], metavar="URL",
                       help="another lmcache-server node's HTTP base URL, shown in the fleet view; repeatable "
                            "(env: comma-separated)")
    group.add_argument("--dashboard-peer-timeout-seconds", type=_timeout, default=fleet.DEFAULT_TIMEOUT_S,
                       help="how long the fleet view waits for one peer")


def _config(server: CacheServer) -> DashboardConfig:
    options = server.options
    peers = list(dict.fromkeys(getattr(options, "dashboard_peer", None) or []))  # once each, in order
    timeout = getattr(options, "dashboard_peer_timeout_seconds", fleet.DEFAULT_TIMEOUT_S)
    return DashboardConfig(dashboard_peer=peers, dashboard_peer_timeout_seconds=timeout)


# -- lifecycle -----------------------------------------------------------------------------


@hookimpl
def lmcache_startup(server: CacheServer) -> None:
    config = _config(server)
    if CONFIG_NAME not in server.configs:
        server.register_config(CONFIG_NAME, config)
    state = _NodeState(config)
    obs = server.configs.get("observability")
    if not getattr(obs, "disable_metrics", False):
        if server.zmq is not None:
            state.timer.install(server.zmq)
        exporter.bind(server)
    _STATES[server] = state


@hookimpl
def lmcache_shutdown(server: CacheServer) -> None:
    exporter.unbind(server)
    state = _STATES.pop(server, None)
    if state is not None:
        state.timer.uninstall()


def _state(server: CacheServer) -> _NodeState:
    state = _STATES.get(server)
    if state is None:  # a server started without our startup hook (plugin registered late): defaults
        state = _STATES.setdefault(server, _NodeState(_config(server)))
    return state


# -- routes --------------------------------------------------------------------------------


def _static(body: bytes, media_type: str) -> Response[bytes]:
    return Response(body, media_type=media_type, headers=NO_CACHE)


@get("/dashboard", sync_to_thread=False, summary="The live dashboard page", include_in_schema=True,
     responses={200: ResponseSpec(data_container=str, media_type=MediaType.HTML, generate_examples=False,
                                  description="the page (HTML); it polls `/dashboard/data`")})
def page() -> Response[bytes]:
    """The page; answers before the engine is ready too (it then shows "starting")."""
    return _static(PAGE, "text/html; charset=utf-8")


@get("/dashboard/dashboard.js", sync_to_thread=False, summary="The dashboard's script",
     responses={200: ResponseSpec(data_container=str, media_type="text/javascript", generate_examples=False,
                                  description="plain JavaScript, no dependencies")})
def script() -> Response[bytes]:
    """The page's script (shipped in the package)."""
    return _static(SCRIPT, "text/javascript; charset=utf-8")


@get("/dashboard/dashboard.css", sync_to_thread=False, summary="The dashboard's style sheet",
     responses={200: ResponseSpec(data_container=str, media_type="text/css", generate_examples=False,
                                  description="the page's CSS")})
def style() -> Response[bytes]:
    """The page's style sheet (shipped in the package)."""
    return _static(STYLE, "text/css; charset=utf-8")


def _snapshot(server: CacheServer) -> snapshot.DashboardData:
    state = _state(server)
    return snapshot.build(server, started=state.started, latency=state.timer.percentiles(),
                          peers=state.config.dashboard_peer)


@get("/dashboard/data", sync_to_thread=True, summary="One snapshot for the dashboard",
     responses={200: openapi.json(snapshot.DashboardData, "the snapshot; counters are cumulative")})
def data(engine: Engine) -> snapshot.DashboardData:
    """Counters, usage and health from in-process state only: cheap enough to poll every second."""
    return _snapshot(engine)


@get("/dashboard/fleet", summary="This node and its --dashboard-peer nodes",
     responses={200: openapi.json(fleet.FleetData, "one row per node (this one first) and the totals")})
async def fleet_view(server: Server) -> fleet.FleetData:
    """Peers are fetched concurrently, each within the peer timeout; a peer that fails is a ``down`` row."""
    state = _state(server)
    config = state.config

    async def own() -> fleet.FleetNode:
        start = time.perf_counter()
        if server.ready:
            try:
                doc = await anyio.to_thread.run_sync(_snapshot, server)
            except RuntimeError:  # stopped between the check and the snapshot
                pass
            else:
                return fleet.node_from_data("", msgspec.to_builtins(doc), (time.perf_counter() - start) * 1000.0)
        return fleet.starting_node("", snapshot.node_name(server), None)

    token = server.http_config.http_admin_token or None
    own_row, peer_rows = await asyncio.gather(
        own(), fleet.fetch_peers(config.dashboard_peer, config.dashboard_peer_timeout_seconds, token))
    nodes = [own_row, *peer_rows]
    return fleet.FleetData(nodes=nodes, totals=fleet.totals(nodes))


router = Router(path="/", route_handlers=[page, script, style, data, fleet_view], tags=["dashboard"],
                opt=unavailable_body(STARTING_BODY))


@hookimpl
def lmcache_register_routes(register: Any) -> None:
    register(router)
