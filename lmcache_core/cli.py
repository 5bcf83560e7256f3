"""``lmcache-server``: the launcher.

``lmcache-server [options]`` serves; ``lmcache-server plugins`` prints the
plugin table; ``lmcache-server bench ...`` runs benchmarks.

Options come in groups (MP server, storage, HTTP, observability, plugins)
plus one group per plugin that adds options through ``lmcache_add_options``.
Every option can also be given as an environment variable
``LMCACHE_<DEST>`` (``--l1-size-gb`` → ``LMCACHE_L1_SIZE_GB``); a flag on the
command line wins over the variable, the variable over the default. The
plugin selection flags are read first (plugins add options, so they must be
known before the full parser exists).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lmcache_core import __version__
from lmcache_core.config import CORE_SECTIONS, section_from_args
from lmcache_core.plugins import PluginError, PluginHost, format_plugin_table
from lmcache_core.server import CacheServer

logger = logging.getLogger("lmcache_core")

ENV_PREFIX = "LMCACHE_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# -- value parsers (argparse ``type=``) ------------------------------------


def _number(kind: Callable[[str], Any], *, minimum: float | None = None, maximum: float | None = None,
            min_inclusive: bool = True) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
            raise argparse.ArgumentTypeError(f"{value} must be {'>=' if min_inclusive else '>'} {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} must be <= {maximum}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _power_of_two(text: str) -> int:
    value = _number(int, minimum=1)(text)
    if value & (value - 1):
        raise argparse.ArgumentTypeError(f"{value} is not a power of two")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at column {exc.colno}) in {shown!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text[:80]!r}")
    if not isinstance(value.get("type"), str) or not value["type"]:
        raise argparse.ArgumentTypeError('needs a "type" naming the adapter type')
    return value


def _env_json_objects(text: str) -> list[dict[str, Any]]:
    """``LMCACHE_L2_ADAPTER``: one JSON object, or a JSON array of them."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg})") from None
        return [_json_object(json.dumps(item)) for item in items]
    return [_json_object(stripped)]


def _bool_env(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


PORT = _number(int, minimum=1, maximum=65535)
POSITIVE_INT = _number(int, minimum=1)
NON_NEGATIVE_FLOAT = _number(float, minimum=0.0)
POSITIVE_FLOAT = _number(float, minimum=0.0, min_inclusive=False)
FRACTION = _number(float, minimum=0.0, maximum=1.0, min_inclusive=False)


# -- parser ----------------------------------------------------------------


def _env(action: argparse.Action, name: str) -> argparse.Action:
    """Give ``action`` an explicit environment variable name (the default is derived from its dest)."""
    action.env_var = name  # type: ignore[attr-defined]
    return action


def add_plugin_selection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("plugins", "Which plugins load. Built-in core plugins always load.")
    _env(group.add_argument("--plugins", metavar="A,B", default=None,
                            help="load only these plugins (entry-point names), comma-separated"), "LMCACHE_PLUGINS")
    _env(group.add_argument("--disable-plugins", metavar="A,B", default=None,
                            help="never load these plugins, comma-separated"), "LMCACHE_DISABLED_PLUGINS")
    group.add_argument("--strict-plugins", action="store_true", default=False,
                       help="a plugin that fails to load stops startup (non-zero exit naming it)")


def add_core_options(parser: argparse.ArgumentParser) -> None:
    """The core option groups; names and defaults follow LMCache where it has the flag."""
    mp = parser.add_argument_group("MP server", "The ZMQ data path used by inference workers.")
    mp.add_argument("--host", default="localhost", help="ZMQ bind host")
    mp.add_argument("--port", type=PORT, default=5555, help="ZMQ bind port")
    mp.add_argument("--instance-id", default="", help="server identity (empty: a random UUID at start)")
    mp.add_argument("--chunk-size", type=POSITIVE_INT, default=256, help="tokens per cache object")
    mp.add_argument("--max-workers", type=POSITIVE_INT, default=1, help="base size of both worker pools")
    mp.add_argument("--max-gpu-workers", type=POSITIVE_INT, default=None,
                    help="transfer pool size (STORE/RETRIEVE, one client per thread); default --max-workers")
    mp.add_argument("--max-cpu-workers", type=POSITIVE_INT, default=None,
                    help="pool size for the other requests; default --max-workers")
    mp.add_argument("--hash-algorithm", default="blake3", help="chunk hash algorithm")
    mp.add_argument("--supported-transfer-mode", default="auto",
                    choices=["auto", "lmcache_driven", "engine_driven"], help="transfer modes offered to workers")
    mp.add_argument("--session-ttl-seconds", type=POSITIVE_FLOAT, default=600.0,
                    help="idle time after which a request's session (cached hashes) expires")
    mp.add_argument("--worker-reap-timeout-seconds", type=NON_NEGATIVE_FLOAT, default=120.0,
                    help="silence after which a worker's registrations and locks are released (0: never)")
    mp.add_argument("--worker-registration-grace-seconds", type=NON_NEGATIVE_FLOAT, default=3600.0,
                    help="budget for a worker that registered but never pinged")

    st = parser.add_argument_group("storage", "L1 (CPU memory), eviction and the L2 cascade.")
    st.add_argument("--l1-size-gb", type=POSITIVE_FLOAT, default=1.0, help="L1 capacity in GiB (reserved lazily)")
    st.add_argument("--l1-align-bytes", type=_power_of_two, default=4096, help="L1 object alignment")
    st.add_argument("--l1-write-ttl-seconds", type=POSITIVE_FLOAT, default=600.0, help="TTL of an object's write lock")
    st.add_argument("--l1-read-ttl-seconds", type=POSITIVE_FLOAT, default=300.0, help="TTL of an object's read lock")
    st.add_argument("--eviction-policy", default="LRU", help="eviction policy name (registered by plugins)")
    st.add_argument("--eviction-trigger-watermark", type=FRACTION, default=0.8,
                    help="usage ratio that triggers eviction, in (0, 1]")
    st.add_argument("--eviction-ratio", type=FRACTION, default=0.2, help="fraction evicted per trigger, in (0, 1]")
    _env(st.add_argument("--l2-adapter", type=_json_object, action="append", default=[], metavar="JSON",
                         help='an L2 adapter, e.g. \'{"type":"fs","base_path":"/data"}\'; repeatable, '
                              "order = priority (env: one JSON object or a JSON array)"), "LMCACHE_L2_ADAPTER")
    st.add_argument("--l2-store-policy", default="default", choices=["default", "skip_l1"],
                    help="default: keep stored chunks in L1; skip_l1: drop them from L1 once in L2")
    st.add_argument("--l2-prefetch-policy", default="default", choices=["default", "retain"],
                    help="default: prefetched chunks are temporary; retain: keep them in L1")
    st.add_argument("--l2-prefetch-max-in-flight", type=POSITIVE_INT, default=8,
                    help="L2 prefetch requests in flight at once")

    http = parser.add_argument_group("HTTP", "The HTTP API for operators and tools.")
    http.add_argument("--http-host", default="127.0.0.1", help="HTTP bind host")
    http.add_argument("--http-port", type=PORT, default=8080, help="HTTP bind port")
    http.add_argument("--http-admin-token", default=None, metavar="TOKEN",
                      help="require 'Authorization: Bearer TOKEN' on mutating and diagnostic routes "
                           "(liveness, readiness, /metrics and reads stay open)")

    obs = parser.add_argument_group("observability", "Logging and metrics.")
    obs.add_argument("--log-level", default="INFO", type=str.upper,
                     choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"], help="log level")
    obs.add_argument("--disable-metrics", action="store_true", default=False, help="do not collect metrics")


def env_var_of(action: argparse.Action) -> str:
    """The environment variable that supplies ``action``'s default."""
    return getattr(action, "env_var", None) or ENV_PREFIX + action.dest.upper()


def apply_env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Set each option's default from its ``LMCACHE_*`` variable, validating it like the flag."""
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", argparse.SUPPRESS):
            continue
        name = env_var_of(action)
        if action.help and "[env:" not in action.help:
            action.help = f"{action.help} [env: {name}]"
        if name not in environ:
            continue
        raw = environ[name]
        try:
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                value: Any = _bool_env(raw)
            elif isinstance(action, argparse._AppendAction):
                value = _env_json_objects(raw) if action.type is _json_object else [
                    action.type(v) if action.type else v for v in raw.split(",") if v]
            else:
                value = action.type(raw) if action.type else raw
                if action.choices is not None and value not in action.choices:
                    raise argparse.ArgumentTypeError(
                        f"{value!r} is not one of {', '.join(map(str, action.choices))}")
        except (argparse.ArgumentTypeError, ValueError) as exc:
            parser.error(f"environment variable {name}: {exc}")
        action.default = value


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser(host: PluginHost, environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The full ``lmcache-server`` parser: core groups, plugin groups, env defaults."""
    parser = argparse.ArgumentParser(
        prog="lmcache-server",
        description="KV-cache server for LLM inference (LMCache MP-server compatible). "
        "Subcommands: 'lmcache-server plugins' lists plugins; 'lmcache-server bench' runs benchmarks.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"lmcache-server {__version__}")
    add_core_options(parser)
    add_plugin_selection_options(parser)
    host.add_options(parser)
    apply_env_defaults(parser, os.environ if environ is None else environ)
    return parser


def _selection(argv: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    add_plugin_selection_options(pre)
    apply_env_defaults(pre, environ)
    args, _ = pre.parse_known_args(argv)
    return args


def make_host(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> PluginHost:
    """Load plugins as ``argv`` / the environment select them."""
    sel = _selection(argv, os.environ if environ is None else environ)
    return PluginHost(allow=sel.plugins, deny=sel.disable_plugins, strict=sel.strict_plugins)


def build_configs(args: argparse.Namespace) -> dict[str, Any]:
    """Every core config section from parsed arguments."""
    return {name: section_from_args(section, args) for name, section in CORE_SECTIONS.items()}


# -- commands --------------------------------------------------------------


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_plugins(argv: Sequence[str]) -> int:
    """``lmcache-server plugins [--json]``: the table ``GET /plugins`` returns."""
    _configure_logging("WARNING")
    as_json = "--json" in argv
    host = make_host([a for a in argv if a != "--json"])
    doc = host.describe()
    sys.stdout.write(json.dumps(doc, indent=2) + "\n" if as_json else format_plugin_table(doc))
    return 0


def serve(args: argparse.Namespace, server: CacheServer) -> int:
    """Serve ``server`` until SIGTERM/SIGINT, then shut down cleanly (exit 0)."""
    import uvicorn

    from lmcache_core.http.app import create_app

    app = create_app(server)
    uv = uvicorn.Server(uvicorn.Config(
        app, host=args.http_host, port=args.http_port, log_level=args.log_level.lower(),
        lifespan="on", access_log=False,
    ))

    def request_exit(signum: int, frame: Any) -> None:
        # uvicorn installs its own handlers while it runs and re-raises the signal
        # after a graceful stop; this handler absorbs that (so we exit 0) and covers
        # a signal that arrives before uvicorn started.
        uv.should_exit = True

    previous = {sig: signal.signal(sig, request_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        logger.info("HTTP on http://%s:%d", args.http_host, args.http_port)
        uv.run()
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if uv.started or uv.should_exit else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "plugins":
        return cmd_plugins(argv[1:])
    if argv and argv[0] == "bench":
        from lmcache_core.bench.cli import main as bench_main

        return bench_main(argv[1:])
    # Exit codes: 2 for a usage or configuration error, 3 for a plugin failure.
    try:
        host = make_host(argv)
        parser = build_parser(host)
        args = parser.parse_args(argv)
        _configure_logging(args.log_level)
        for failed in host.failed:
            logger.warning("plugin %s was skipped: %s", failed.name, failed.error)
        server = CacheServer(host, options=args)
    except PluginError as exc:
        print(f"lmcache-server: {exc}", file=sys.stderr)
        return 3
    except ValueError as exc:
        print(f"lmcache-server: {exc}", file=sys.stderr)
        return 2
    try:
        return serve(args, server)
    except PluginError as exc:
        print(f"lmcache-server: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
