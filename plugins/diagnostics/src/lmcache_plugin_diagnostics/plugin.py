"""Diagnostics: ``/loglevel``, ``/threads``, ``/periodic-threads*``, ``/env`` and ``POST /run_script``.

The seed's "Diagnostics and Debugging" section is the contract; LMCache's shared
``internal_api_server/common`` routes fill its gaps.
None of these routes needs the engine: they answer before it starts and after it
stops (the periodic-thread routes then show an empty registry).

``GET /loglevel`` (text/plain)
    No parameters: ``=== Loggers and Levels ===`` then one ``name: LEVEL`` line per
    logger. ``?logger_name=x``: ``x: LEVEL`` (the logger's own level, so an unset
    one shows ``NOTSET``, as LMCache does). ``?logger_name=x&level=L``: sets the
    logger and every handler attached to it to ``L``, answers ``Set x level to L
    (including all handlers)``; an unknown level is 400 ``Invalid log level: L``.
    ``level`` without ``logger_name`` answers 200 with a JSON ``null`` body
    (``application/json``), which is what LMCache's handler returns there.
``GET /threads`` (text/plain)
    Per live thread ``Thread: <repr>`` and its stack (or ``No stack trace available``),
    separated by blank lines, then ``=== Thread Summary ===`` / ``Total threads: N``
    (N = threads shown). ``name``: case-insensitive substring; ``thread_id``: the
    thread ident, ``0`` meaning no filter; a non-integer ``thread_id`` is 400
    ``Invalid thread_id: <value>`` (text/plain).
``GET /periodic-threads`` (JSON)
    ``{"summary": {total_count, running_count, active_count, by_level}, "threads": [...]}``
    from the server's :class:`~lmcache_core.observability.periodic.PeriodicThreadRegistry`.
    The summary always covers the whole registry; ``level`` (case-insensitive),
    ``running_only`` and ``active_only`` filter ``threads`` only. A bad level is 400
    ``{"error": "Invalid level: X. Valid values: critical, high, medium, low"}``; a
    boolean that is not one of ``true/false/1/0/yes/no/on/off`` is 400 ``{"error": ...}``.
``GET /periodic-threads/{thread_name}`` (JSON)
    One thread's status, or 404 ``{"error": "Thread not found: <name>"}``. The name is a
    path parameter, so a name with ``/`` in it (plain or ``%2F``) is found too.
``GET /periodic-threads-health`` (JSON, always 200)
    ``{"healthy", "unhealthy_count", "unhealthy_threads": [{name, level, last_run_ago, interval}]}``
    over the critical and high threads that are running but not active, as the seed
    defines it. A thread that stopped (``is_running`` false) is not flagged here — the
    core registry's ``unhealthy()`` would flag it, the seed does not; it shows in
    ``/periodic-threads`` with ``is_running: false``.
``GET /env`` (text/plain)
    The process environment as JSON, keys sorted, indented by 2. The values of
    variables whose names look secret (:func:`lmcache_core.config.is_secret_name`:
    key, secret, token, password, passwd, credential anywhere in the name, or a
    word pass, pwd, dsn, pat, cookie, passphrase, otp, case-insensitive) are
    ``"***"``, and in every other value the credentials of a URL
    (``scheme://user:pass@``) are ``***``, unless ``--env-show-secrets``; empty
    values stay empty.
``POST /run_script`` (text/plain)
    Multipart field ``script``: the file is run (:mod:`.sandbox` documents the
    builtins, the importer and the time limit); 200 with ``str(result)`` or
    ``Script executed successfully``; 400 ``No script file provided`` (no field,
    a plain text field, or a body that is not a form); 500 ``Error executing
    script: <reason>`` when it fails to compile, raises, imports a module that is
    not allowed, or passes its time limit (the seed documents this 500).

Safe by default (decided for our users; LMCache has neither):

* ``/run_script`` answers 404 ``run_script is disabled (start the server with
  --run-script-api-enabled)`` unless ``--run-script-api-enabled``: LMCache 0.5.6's
  status for its disabled ``/run_script`` (a text body saying "disabled"), so one
  answer serves both route generations; no client is known to tell a 403 from it.
  The check comes before the body is read; nothing is compiled, imported or run. A Python sandbox
  is not a security boundary, hence off by default and behind the admin token.
* With ``--http-admin-token``, 401 ``{"error": "admin token required"}`` without
  ``Authorization: Bearer <token>`` on: ``/loglevel`` in its *set* mode (one GET
  handler serves all three modes, so it calls
  :func:`lmcache_core.http.guard.has_admin_token` itself and raises
  :class:`~lmcache_core.http.guard.AdminTokenRequired`; the token is checked before
  the level, so an unauthenticated caller learns nothing), ``/threads``,
  ``/periodic-threads``, ``/periodic-threads/{thread_name}``, ``/env`` and
  ``/run_script`` (the guard runs before the enable check: 401, then 404).
  The periodic-thread list and detail are guarded because ``last_summary`` carries
  the text of a failing run's exception (paths, keys, hosts). Open: ``/loglevel``
  list and read (levels are not secrets, and reading changes nothing) and
  ``/periodic-threads-health`` (a probe, like ``/healthcheck``).

Decisions where the seed is silent:

* An empty query value (``?logger_name=``, ``?level=``, ``?name=``, ``?thread_id=``)
  means the parameter is absent, as LMCache's truthiness checks treat it.
* Levels: exactly ``CRITICAL FATAL ERROR WARN WARNING INFO DEBUG NOTSET`` in any case
  (LMCache's ``getattr(logging, L.upper())`` also took ``BASIC_FORMAT`` or
  ``getLogger``); the reply names the canonical upper-case level.
* The list includes ``root`` first, then the other loggers sorted by name (LMCache
  lists them unsorted and leaves root out). Placeholders (parents nobody created) are
  skipped. Reading an unknown logger answers ``x: NOTSET`` without creating it, so a
  read changes nothing; setting one creates it (as LMCache does), so a level can be
  set before the module that logs there is imported. ``root`` names the root logger.
* ``/threads`` formats stacks on a worker thread (it reads source lines from disk);
  that worker shows in its own dump.
* Periodic-thread JSON is encoded with unknown values stringified, so a thread's
  odd ``extra_info`` cannot turn the listing into a 500.
* ``/run_script``: upload at most :data:`MAX_SCRIPT_BYTES` (1 MiB; past it, 413 ``Script
  larger than 1048576 bytes``, text/plain; a body over 1 MiB + 64 KiB is refused while it
  streams, before it is parsed),
  time limit ``--run-script-timeout-seconds`` (default 30 s). Allowed modules are
  imported when a script imports them (LMCache imports them all at startup); at
  startup, with the route enabled, a name that cannot be found is logged as a warning.
  ``print`` writes to the server's stdout, as in LMCache. Scripts run in-process on
  their own thread, so the event loop keeps serving meanwhile.

Options (group "diagnostics plugin"; each also from ``LMCACHE_<DEST>``):
``--run-script-api-enabled``, ``--script-allowed-imports`` (names separated by
spaces or commas; env ``LMCACHE_SCRIPT_ALLOWED_IMPORTS=json,math``),
``--run-script-timeout-seconds``, ``--env-show-secrets``. They are shown in
``GET /conf`` under ``diagnostics``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import threading
import traceback
from typing import Annotated, Any

import anyio
import msgspec
from litestar import MediaType, Request, Response, Router, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions import ClientException
from litestar.params import FromPath, QueryParameter

from lmcache_core.api import (
    TEXT as TEXT_ERRORS,
    AdminTokenRequired,
    CacheServer,
    HTTPError,
    RegisterConfig,
    RegisterRoutes,
    Server,
    error_envelope,
    has_admin_token,
    hookimpl,
    is_secret_name,
    mask_url_credentials,
    openapi,
    require_admin,
)

from .sandbox import ScriptError, run_script

logger = logging.getLogger(__name__)

CONFIG_NAME = "diagnostics"
TEXT = MediaType.TEXT
JSON = MediaType.JSON
MAX_SCRIPT_BYTES = 1 << 20
"""Largest accepted script upload (bytes)."""
_MULTIPART_OVERHEAD = 64 << 10
DEFAULT_SCRIPT_TIMEOUT_S = 30.0
MASK = "***"

LEVELS = {"CRITICAL": logging.CRITICAL, "FATAL": logging.FATAL, "ERROR": logging.ERROR, "WARN": logging.WARNING,
          "WARNING": logging.WARNING, "INFO": logging.INFO, "DEBUG": logging.DEBUG, "NOTSET": logging.NOTSET}
THREAD_LEVELS = ("critical", "high", "medium", "low")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_DIGITS = re.compile(r"[0-9]{1,20}")


ModuleName = Annotated[str, msgspec.Meta(pattern=f"^{_MODULE_NAME.pattern}$")]


class DiagnosticsConfig(msgspec.Struct, kw_only=True):
    """The plugin's options (declared through ``lmcache_register_config``; ``GET /conf`` shows them)."""

    run_script_api_enabled: Annotated[bool, msgspec.Meta(
        description="enable POST /run_script (runs uploaded Python in-process: not a sandbox; "
                    "set --http-admin-token too)")] = False
    script_allowed_imports: Annotated[list[ModuleName], msgspec.Meta(
        description="modules a /run_script script may import (space- or comma-separated)",
        extra={"metavar": "MODULE"})] = []
    run_script_timeout_seconds: Annotated[float, msgspec.Meta(
        gt=0, description="time limit of one /run_script script, in seconds")] = DEFAULT_SCRIPT_TIMEOUT_S
    env_show_secrets: Annotated[bool, msgspec.Meta(
        description="GET /env shows the values of variables named like *KEY*, *SECRET*, *TOKEN*, "
                    "*PASSWORD*, *CREDENTIAL* (masked otherwise)")] = False


# -- what the OpenAPI document says (the handlers build these answers as dicts) ----------------


class LevelCounts(msgspec.Struct):
    total: int
    running: int
    active: int


class RegistrySummary(msgspec.Struct):
    """The whole registry's counts (filters never apply to them)."""

    total_count: int
    running_count: int
    active_count: int
    by_level: dict[str, LevelCounts]


class ThreadStatus(msgspec.Struct):
    """One periodic thread (:meth:`~lmcache_core.observability.periodic.PeriodicThread.get_status`)."""

    name: str
    level: str
    interval: float
    init_wait: float
    is_running: bool
    is_active: bool
    last_run_time: float | None
    last_run_ago: float | None
    total_runs: int
    failed_runs: int
    success_rate: float
    last_summary: dict[str, Any] | None


class PeriodicThreads(msgspec.Struct):
    """``GET /periodic-threads`` 200."""

    summary: RegistrySummary
    threads: list[ThreadStatus]


class StalledThread(msgspec.Struct):
    name: str
    level: str
    last_run_ago: float | None
    interval: float


class ThreadsHealth(msgspec.Struct):
    """``GET /periodic-threads-health`` 200."""

    healthy: bool
    unhealthy_count: int
    unhealthy_threads: list[StalledThread]


_WS = openapi.PY_WHITESPACE
# What each handler's own parsing accepts, as patterns (documented through schema_extra, not enforced).
LOG_LEVEL_PATTERN = f"^({_WS}*({'|'.join(openapi.any_case(n, folded_by='upper') for n in LEVELS)}){_WS}*)?$"
THREAD_LEVEL_PATTERN = f"^({'|'.join(openapi.any_case(n) for n in THREAD_LEVELS)})?$"
FLAG_PATTERN = f"^({_WS}*({'|'.join(openapi.any_case(w) for w in sorted(_TRUE | _FALSE))}){_WS}*)?$"
THREAD_ID_PATTERN = f"^({_WS}*[0-9]{{1,20}}{_WS}*)?$"


def _config(server: CacheServer) -> DiagnosticsConfig:
    """This plugin's config section, built and validated once at start."""
    return server.configs[CONFIG_NAME]  # type: ignore[return-value]


def _text(body: str) -> Response[str]:
    return Response(body, media_type=TEXT)


TEXT_ERRORS_OPT = error_envelope(TEXT_ERRORS)
"""``opt`` of the text/plain routes: their errors are the message itself."""


def _json(doc: Any) -> Response[bytes]:
    return Response(msgspec.json.encode(doc, enc_hook=str), media_type=JSON)


# -- /loglevel -------------------------------------------------------------------------------


def _level_name(logger_: logging.Logger) -> str:
    return logging.getLevelName(logger_.level)


def _existing_logger(name: str) -> logging.Logger | None:
    """The logger called ``name`` if someone created it (``root`` is the root logger); never creates one."""
    if name == "root":
        return logging.getLogger()
    found = logging.Logger.manager.loggerDict.get(name)
    return found if isinstance(found, logging.Logger) else None


def list_loggers() -> str:
    """The list mode's text."""
    loggers = dict(logging.Logger.manager.loggerDict)  # a copy: other threads create loggers meanwhile
    lines = [f"root: {_level_name(logging.getLogger())}"]
    lines += [f"{name}: {_level_name(lg)}" for name, lg in sorted(loggers.items()) if isinstance(lg, logging.Logger)]
    return "=== Loggers and Levels ===\n" + "\n".join(lines)


# Negative data: a `level` without `logger_name` is ignored (200 `null`, as in LMCache), which no per-parameter
# schema can say; the conformance test does not expect an invalid `level` to be refused there.
@get("/loglevel", sync_to_thread=False, opt=TEXT_ERRORS_OPT, summary="List, read or set logger levels (text/plain)",
     operation_class=openapi.operation(also={200: (openapi.JSON, None)}), responses={
         200: openapi.text("the loggers and levels, one logger's level, or `Set <name> level to <LEVEL> ...`; "
                           "`level` without `logger_name` answers JSON `null`"),
         400: openapi.text("`Invalid log level: <level>`"),
         401: openapi.ADMIN_TOKEN_REQUIRED})
def loglevel(
    request: Request[Any, Any, Any],
    logger_name: Annotated[str | None, QueryParameter(description="logger to read or set")] = None,
    level: Annotated[str | None, QueryParameter(description="new level (needs logger_name; sets, admin-guarded)",
                                                schema_extra={"pattern": LOG_LEVEL_PATTERN})] = None,
) -> Response[Any]:
    """List (no parameters), read (``logger_name``) or set (``logger_name`` + ``level``; admin-guarded)."""
    if not logger_name:
        if level:
            return Response(b"null", media_type=JSON)
        return _text(list_loggers())
    if not level:
        found = _existing_logger(logger_name)
        return _text(f"{logger_name}: {_level_name(found) if found is not None else 'NOTSET'}")
    if not has_admin_token(request):
        raise AdminTokenRequired()
    canonical = level.strip().upper()
    if canonical not in LEVELS:
        raise HTTPError(400, f"Invalid log level: {level}")
    value = LEVELS[canonical]
    target = logging.getLogger() if logger_name == "root" else logging.getLogger(logger_name)
    target.setLevel(value)
    for handler in list(target.handlers):
        handler.setLevel(value)
    return _text(f"Set {logger_name} level to {logging.getLevelName(value)} (including all handlers)")


# -- /threads --------------------------------------------------------------------------------


def thread_dump(name: str | None, thread_id: int) -> str:
    """The ``/threads`` text for the threads whose name contains ``name`` and whose ident is ``thread_id``."""
    frames = sys._current_frames()
    needle = name.lower() if name else None
    blocks = []
    for thread in threading.enumerate():
        if needle is not None and needle not in thread.name.lower():
            continue
        if thread_id and thread.ident != thread_id:
            continue
        frame = frames.get(thread.ident) if thread.ident is not None else None
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "No stack trace available"
        blocks.append(f"Thread: {thread!r}\n{stack}")
    del frames  # frames keep every thread's locals alive
    summary = f"=== Thread Summary ===\nTotal threads: {len(blocks)}"
    return "\n\n".join([*blocks, summary])


@get("/threads", sync_to_thread=True, guards=[require_admin], opt=TEXT_ERRORS_OPT,
     summary="Live threads with stack traces (text/plain)",
     responses={200: openapi.text("each thread with its stack, then the summary"),
                400: openapi.text("`Invalid thread_id: <value>`")})
def threads(
    name: Annotated[str | None, QueryParameter(description="case-insensitive substring of the thread name")] = None,
    thread_id: Annotated[str | None, QueryParameter(description="thread ident (0: no filter)",
                                                    schema_extra={"pattern": THREAD_ID_PATTERN})] = None,
) -> Response[str]:
    """Every live thread (filtered) with its stack, then the count."""
    ident = 0
    if thread_id:
        if not _DIGITS.fullmatch(thread_id.strip()):
            raise HTTPError(400, f"Invalid thread_id: {thread_id[:100]}")
        ident = int(thread_id.strip())
    return _text(thread_dump(name, ident))


# -- /periodic-threads -----------------------------------------------------------------------


def _registry_summary(server: CacheServer) -> dict[str, Any]:
    registry = server.threads
    if registry is not None:
        return registry.get_summary()
    return {"total_count": 0, "running_count": 0, "active_count": 0,
            "by_level": {lvl: {"total": 0, "running": 0, "active": 0} for lvl in THREAD_LEVELS}, "threads": []}


def _flag(name: str, value: str | None) -> bool:
    if value is None or value == "":
        return False
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"Invalid {name}: {value[:100]}. Valid values: true, false")


@get("/periodic-threads", sync_to_thread=False, guards=[require_admin], summary="Periodic thread registry",
     responses={200: openapi.json(PeriodicThreads, "the whole registry's summary and the threads that pass"),
                400: openapi.error("an unknown `level`, or a flag that is not true/false/1/0/yes/no/on/off")})
def periodic_threads(
    server: Server,
    level: Annotated[str | None, QueryParameter(description="critical, high, medium or low",
                                                schema_extra={"pattern": THREAD_LEVEL_PATTERN})] = None,
    running_only: Annotated[str | None, QueryParameter(description="only running threads",
                                                       schema_extra={"pattern": FLAG_PATTERN})] = None,
    active_only: Annotated[str | None, QueryParameter(description="only active threads",
                                                      schema_extra={"pattern": FLAG_PATTERN})] = None,
) -> Response[Any]:
    """Summary of the whole registry, plus the threads that pass the filters."""
    wanted = level.lower() if level else None
    if wanted is not None and wanted not in THREAD_LEVELS:
        raise HTTPError(400, f"Invalid level: {level}. Valid values: {', '.join(THREAD_LEVELS)}")
    try:
        running, active = _flag("running_only", running_only), _flag("active_only", active_only)
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None
    summary = _registry_summary(server)
    statuses = summary.pop("threads")
    shown = [s for s in statuses if (wanted is None or s["level"] == wanted)
             and (not running or s["is_running"]) and (not active or s["is_active"])]
    return _json({"summary": summary, "threads": shown})


@get("/periodic-threads/{thread_name:path}", sync_to_thread=False, guards=[require_admin],
     summary="One periodic thread", responses={200: openapi.json(ThreadStatus, "the thread's status"),
                                               404: openapi.error("`Thread not found: <name>`")})
def periodic_thread(server: Server, thread_name: FromPath[str]) -> Response[Any]:
    """One thread's status; 404 ``{"error": "Thread not found: <name>"}``."""
    thread_name = thread_name.removeprefix("/")  # a ``path`` parameter keeps its leading slash
    registry = server.threads
    thread = registry.get(thread_name) if registry is not None else None
    if thread is None:
        raise HTTPError(404, f"Thread not found: {thread_name}")
    return _json(thread.get_status())


@get("/periodic-threads-health", sync_to_thread=False, summary="Critical/high periodic threads that stalled",
     responses={200: openapi.json(ThreadsHealth, "`healthy` is false when a running critical/high thread stalled")})
def periodic_threads_health(server: Server) -> Response[Any]:
    """Always 200; ``healthy`` is false when a running critical or high thread stopped ticking."""
    unhealthy = [{"name": s["name"], "level": s["level"], "last_run_ago": s["last_run_ago"], "interval": s["interval"]}
                 for s in _registry_summary(server)["threads"]
                 if s["level"] in ("critical", "high") and s["is_running"] and not s["is_active"]]
    return _json({"healthy": not unhealthy, "unhealthy_count": len(unhealthy), "unhealthy_threads": unhealthy})


# -- /env ------------------------------------------------------------------------------------


def env_document(environ: dict[str, str], show_secrets: bool) -> str:
    """Sorted, indented JSON of ``environ`` with secret-looking values masked unless ``show_secrets``:
    whole values of secret-named variables, and the credentials of any URL in the other values
    (``DATABASE_URL=postgres://admin:pw@db`` → ``postgres://***@db``)."""
    if show_secrets:
        return json.dumps(environ, indent=2, sort_keys=True)
    shown = {k: (MASK if v and is_secret_name(k) else mask_url_credentials(v)) for k, v in environ.items()}
    return json.dumps(shown, indent=2, sort_keys=True)


@get("/env", sync_to_thread=False, guards=[require_admin], summary="Process environment (text/plain)",
     responses={200: openapi.text("the environment as sorted, indented JSON; secret-looking values `***`")})
def env(server: Server) -> Response[str]:
    """The environment as sorted, pretty-printed JSON, served as text/plain."""
    return _text(env_document(dict(os.environ), _config(server).env_show_secrets))


# -- /run_script -----------------------------------------------------------------------------


@post("/run_script", status_code=200, guards=[require_admin], opt=TEXT_ERRORS_OPT,
      request_max_body_size=MAX_SCRIPT_BYTES + _MULTIPART_OVERHEAD,
      summary="Run an uploaded script (off unless --run-script-api-enabled)",
      operation_class=openapi.operation(body=openapi.multipart_body(["script"], "the Python file to run")),
      responses={200: openapi.text("`str(result)`, or `Script executed successfully`"),
                 400: openapi.text("`No script file provided`"),
                 404: openapi.text("disabled: the server runs without `--run-script-api-enabled`"),
                 413: openapi.text(f"`Script larger than {MAX_SCRIPT_BYTES} bytes`"),
                 500: openapi.text("`Error executing script: <reason>`: it failed to compile, raised, imported a "
                                   "module not allowed, or ran out of time")})
async def run_script_route(request: Request[Any, Any, Any], server: Server) -> Response[str]:
    """404 unless enabled; 400 without a ``script`` file; 200 with the result; 500 when the script fails."""
    config = _config(server)
    if not config.run_script_api_enabled:
        raise HTTPError(404, "run_script is disabled (start the server with --run-script-api-enabled)")
    try:
        form = await request.form()
    except ClientException as exc:  # a malformed multipart body; 413 when it is over the size limit
        if exc.status_code == 413:
            raise HTTPError(413, f"Script larger than {MAX_SCRIPT_BYTES} bytes") from None
        raise HTTPError(400, "No script file provided") from None
    upload = form.get("script")
    if not isinstance(upload, UploadFile):
        raise HTTPError(400, "No script file provided")
    try:
        source = await upload.read(MAX_SCRIPT_BYTES + 1)
    finally:
        await upload.close()
    if len(source) > MAX_SCRIPT_BYTES:
        raise HTTPError(413, f"Script larger than {MAX_SCRIPT_BYTES} bytes")
    try:
        text = await anyio.to_thread.run_sync(
            lambda: run_script(source, allowed_imports=config.script_allowed_imports,
                               timeout_s=config.run_script_timeout_seconds,
                               extra_globals={"app": request.app, "server": server}))
    except ScriptError as exc:
        raise HTTPError(500, f"Error executing script: {exc}") from None
    return _text(text)


# -- options and hooks -----------------------------------------------------------------------


@hookimpl
def lmcache_register_config(register: RegisterConfig) -> None:
    register(CONFIG_NAME, DiagnosticsConfig, title="diagnostics plugin", description="POST /run_script and GET /env.")


@hookimpl
def lmcache_register_routes(register: RegisterRoutes) -> None:
    register(Router(path="/", route_handlers=[loglevel, threads, periodic_threads, periodic_thread,
                                             periodic_threads_health, env, run_script_route],
                    tags=["diagnostics"]))


@hookimpl
def lmcache_startup(server: CacheServer) -> None:
    config = _config(server)
    if not config.run_script_api_enabled:
        return
    if getattr(server.configs.get("http"), "http_admin_token", None):
        logger.warning("POST /run_script is enabled: it runs uploaded Python in this process (admin token required)")
    else:
        logger.warning("POST /run_script is enabled WITHOUT --http-admin-token: anyone who reaches the HTTP port "
                       "can run Python in this process")
    for name in config.script_allowed_imports:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            logger.warning("--script-allowed-imports: module %r cannot be found; scripts importing it will fail", name)
