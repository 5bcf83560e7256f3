"""``lmcache-server``: the launcher.

``lmcache-server [options]`` serves; ``lmcache-server plugins`` prints the
plugin table; ``lmcache-server bench ...`` runs benchmarks.

The options (core groups, one group per plugin config section, ``LMCACHE_*``
variables) are built by :mod:`lmcache_core.options`, the config sections by
:func:`lmcache_core.config.build_configs`; this module only runs commands. Nothing in
``lmcache_core`` imports it. The plugin selection flags are read first (plugins add
options, so they must be known before the full parser exists).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from lmcache_core.argtypes import (  # noqa: F401  (re-exported: the launcher's value types)
    FRACTION,
    NON_NEGATIVE_FLOAT,
    PORT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
)
from lmcache_core.config import build_configs
from lmcache_core.config_file import environ_with_file
from lmcache_core.options import (  # noqa: F401  (re-exported for callers of the launcher)
    ENV_PREFIX,
    add_core_options,
    add_plugin_selection_options,
    apply_env_defaults,
    build_parser,
    env_var_of,
    make_host,
)
from lmcache_core.plugins import PluginError, format_plugin_table
from lmcache_core.server import CacheServer

logger = logging.getLogger("lmcache_core")


# -- commands --------------------------------------------------------------


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_plugins(argv: Sequence[str]) -> int:
    """``lmcache-server plugins [--json] [server options]``: the table ``GET /plugins`` returns.

    It checks what the server checks before it starts the engine, with the same options and the
    same exit codes: plugins that fail to load (fatal with ``--strict-plugins``), duplicate L2
    types or eviction policies (3), options, config sections and ``--l2-adapter`` entries (2). An
    adapter's constructor and ``start()`` run only when the server starts (they touch storage).
    """
    _configure_logging("WARNING")
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    try:
        environ = environ_with_file(argv, os.environ)
        host = make_host(argv, environ)
        doc = host.describe()
        sys.stdout.write(json.dumps(doc, indent=2) + "\n" if as_json else format_plugin_table(doc))
        sys.stdout.flush()
        args = build_parser(host, environ).parse_args(argv)
        refuse_unguarded_run_script(args)
        CacheServer(host, build_configs(args, host.registrations.configs), options=args)  # validates, starts nothing
    except (PluginError, ValueError) as exc:
        print(f"lmcache-server: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 3) if isinstance(exc, PluginError) else 2
    return 0


def serve(args: argparse.Namespace, server: CacheServer) -> int:
    """Serve ``server`` until SIGTERM/SIGINT, then shut down cleanly (exit 0)."""
    import uvicorn

    from lmcache_core.http.app import create_app
    from lmcache_core.http.limits import uvicorn_http_options

    app = create_app(server)
    uv = uvicorn.Server(uvicorn.Config(
        app, host=args.http_host, port=args.http_port, log_level=args.log_level.lower(),
        lifespan="on", access_log=False, **uvicorn_http_options(),
    ))

    def request_exit(signum: int, frame: Any) -> None:
        # uvicorn installs its own handlers while it runs and re-raises the signal
        # after a graceful stop; this handler absorbs that (so we exit 0) and covers
        # a signal that arrives before uvicorn started.
        uv.should_exit = True

    previous = {sig: signal.signal(sig, request_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        # What start-up built (torch, the plugins, the engine) lives as long as the process: move it
        # out of the cyclic GC's generations, so the collections the data path's allocations trigger
        # scan only young objects, not ~200k long-lived ones (a full pass is tens of ms: the LOOKUP
        # tail). Objects stay freed by reference counting; only cycles among them are never collected.
        gc.collect()
        gc.freeze()
        logger.info("HTTP on http://%s:%d", args.http_host, args.http_port)
        uv.run()
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if uv.started or uv.should_exit else 1


def refuse_unguarded_run_script(args: argparse.Namespace) -> None:
    """``--run-script-api-enabled`` needs ``--http-admin-token`` (a ValueError otherwise: exit 2).

    ``/run_script`` runs uploaded Python in the server process; its restrictions are not a
    sandbox (docs/security.md), so it must never be open to whoever reaches the HTTP port.
    """
    if getattr(args, "run_script_api_enabled", False) and not getattr(args, "http_admin_token", None):
        raise ValueError("--run-script-api-enabled requires --http-admin-token: /run_script runs uploaded code "
                         "in the server and is not a sandbox (see docs/security.md)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plugins":
        return cmd_plugins(argv[1:])
    if argv and argv[0] == "bench":
        from lmcache_core.bench.cli import main as bench_main

        return bench_main(argv[1:])
    # Exit codes: 2 for a usage or configuration error, 3 for a plugin failure.
    try:
        environ = environ_with_file(argv, os.environ)  # --config FILE: beneath LMCACHE_* variables
        host = make_host(argv, environ)
        parser = build_parser(host, environ)
        args = parser.parse_args(argv)
        _configure_logging(args.log_level)
        for failed in host.failed:
            logger.warning("plugin %s was skipped: %s", failed.name, failed.error)
        refuse_unguarded_run_script(args)
        server = CacheServer(host, build_configs(args, host.registrations.configs), options=args)
    except PluginError as exc:
        print(f"lmcache-server: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"lmcache-server: {exc}", file=sys.stderr)
        return 2
    try:
        return serve(args, server)
    except PluginError as exc:  # an L2 adapter that fails to build or start says 2 (its config) or 3
        print(f"lmcache-server: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 3)


if __name__ == "__main__":
    sys.exit(main())
