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

Options (:class:`DashboardConfig`, declared with ``lmcache_register_config``): ``--dashboard-peer URL``
(repeatable, or several separated by commas; ``LMCACHE_DASHBOARD_PEER``) and
``--dashboard-peer-timeout-seconds`` (``LMCACHE_DASHBOARD_PEER_TIMEOUT_SECONDS``, default 1, at most 60).
Shown in ``/conf`` as the ``dashboard`` section.

Guards: none of these routes is guarded by ``--http-admin-token``: they are reads, like
``/status`` and ``/metrics``, and the page has no way to hold a secret. The token (when set) is
only sent to peers.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import time
import weakref
from dataclasses import dataclass, field
from typing import Annotated

import anyio
import msgspec
from litestar import MediaType, Response, Router, get
from litestar.openapi.datastructures import ResponseSpec

from lmcache_core.api import (
    CacheServer,
    Engine,
    RegisterConfig,
    RegisterRoutes,
    Server,
    hookimpl,
    openapi,
    unavailable_body,
)
from lmcache_plugin_dashboard import exporter, fleet, snapshot
from lmcache_plugin_dashboard.latency import LookupTimer

CONFIG_NAME = "dashboard"
STARTING_BODY = {"error": "engine not initialized", "state": "starting"}
NO_CACHE = {"Cache-Control": "no-cache"}


class DashboardConfig(msgspec.Struct, kw_only=True):
    """``--dashboard-peer`` / ``LMCACHE_DASHBOARD_PEER`` and ``--dashboard-peer-timeout-seconds``;
    ``GET /conf`` shows them under ``dashboard``."""

    peer: Annotated[list[Annotated[str, fleet.PEER_URL]], msgspec.Meta(
        description="another lmcache-server node's HTTP base URL (http(s)://host[:port][/prefix]), shown in the "
                    "fleet view; repeatable, or several separated by commas",
        extra={"metavar": "URL"})] = msgspec.field(default_factory=list)
    peer_timeout_seconds: Annotated[float, msgspec.Meta(
        gt=0, le=60, description="how long the fleet view waits for one peer (connecting and answering)")] = \
        fleet.DEFAULT_TIMEOUT_S


@dataclass
class _NodeState:
    config: DashboardConfig
    peers: list[str] = field(init=False)
    started: float = field(default_factory=time.monotonic)
    timer: LookupTimer = field(default_factory=LookupTimer)

    def __post_init__(self) -> None:
        self.peers = _peers(self.config)


_STATES: weakref.WeakKeyDictionary[CacheServer, _NodeState] = weakref.WeakKeyDictionary()


def _asset(name: str) -> bytes:
    return (importlib.resources.files(__package__) / "static" / name).read_bytes()


PAGE = _asset("index.html")
SCRIPT = _asset("dashboard.js")
STYLE = _asset("dashboard.css")


# -- configuration -------------------------------------------------------------------------


@hookimpl
def lmcache_register_config(register: RegisterConfig) -> None:
    register(CONFIG_NAME, DashboardConfig, prefix="dashboard-", title="dashboard plugin",
             description="GET /dashboard: the live page and its fleet view.")


def _config(server: CacheServer) -> DashboardConfig:
    config = server.configs.get(CONFIG_NAME)
    return config if isinstance(config, DashboardConfig) else DashboardConfig()


def _peers(config: DashboardConfig) -> list[str]:
    """The peer URLs without a trailing ``/``, each once, in order."""
    return list(dict.fromkeys(fleet.normalized_peer_url(url) for url in config.peer))


# -- lifecycle -----------------------------------------------------------------------------


@hookimpl
def lmcache_startup(server: CacheServer) -> None:
    state = _NodeState(_config(server))
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
                          peers=state.peers)


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
        own(), fleet.fetch_peers(state.peers, config.peer_timeout_seconds, token))
    nodes = [own_row, *peer_rows]
    return fleet.FleetData(nodes=nodes, totals=fleet.totals(nodes))


router = Router(path="/", route_handlers=[page, script, style, data, fleet_view], tags=["dashboard"],
                opt=unavailable_body(STARTING_BODY))


@hookimpl
def lmcache_register_routes(register: RegisterRoutes) -> None:
    register(router)
