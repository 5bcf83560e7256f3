"""The ``lmcache-server`` option parser: core groups, plugin groups, ``LMCACHE_*`` variables.

Options come in groups (MP server, storage, HTTP, observability, plugins) plus one group
per plugin config section (``lmcache_register_config``: flags derived from the Struct's
fields by :func:`lmcache_core.config.add_config_options`) and whatever legacy plugins add through
``lmcache_add_options``. Every option can also be given as an environment variable
``LMCACHE_<DEST>`` (``--l1-size-gb`` → ``LMCACHE_L1_SIZE_GB``); a flag on the command line
wins over the variable, the variable over the default. The value types are
:mod:`lmcache_core.argtypes`. This module sits below the launcher (:mod:`lmcache_core.cli`)
and the server, so both build parsers without importing each other.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lmcache_core import config_file
from lmcache_core.argtypes import (
    FRACTION,
    NON_NEGATIVE_FLOAT,
    PORT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    boolean,
    env_json_objects,
    json_object,
    power_of_two,
    salt_quota,
)
from lmcache_core.config import add_config_options
from lmcache_core.plugins import PluginHost
from lmcache_core.versions import VersionAction

ENV_PREFIX = "LMCACHE_"


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
    st.add_argument("--l1-prefault-ahead-gb", type=NON_NEGATIVE_FLOAT, default=0.0,
                    help="keep this much L1 memory past what is in use populated in the background, so "
                         "first-fill STOREs do not page-fault (0: off, memory is touched as STOREs come)")
    st.add_argument("--l1-align-bytes", type=power_of_two, default=4096, help="L1 object alignment")
    st.add_argument("--l1-write-ttl-seconds", type=POSITIVE_FLOAT, default=600.0, help="TTL of an object's write lock")
    st.add_argument("--l1-read-ttl-seconds", type=POSITIVE_FLOAT, default=300.0, help="TTL of an object's read lock")
    st.add_argument("--eviction-policy", default="LRU", help="eviction policy name (registered by plugins)")
    st.add_argument("--eviction-trigger-watermark", type=FRACTION, default=0.8,
                    help="usage ratio that triggers eviction, in (0, 1]")
    st.add_argument("--cache-salt-quota", type=salt_quota, action="append", default=[], metavar="SALT=GB",
                    help="a per-salt quota in GiB in force from startup (as PUT /quota/SALT sets at run time), so "
                         "IsolatedLRU keeps a salt's recovered L2 objects after a restart; repeatable "
                         "(env: comma-separated)")
    st.add_argument("--eviction-ratio", type=FRACTION, default=0.2, help="fraction evicted per trigger, in (0, 1]")
    _env(st.add_argument("--l2-adapter", type=json_object, action="append", default=[], metavar="JSON",
                         help='an L2 adapter, e.g. \'{"type":"fs","base_path":"/data"}\'; repeatable, '
                              "order = priority (env: one JSON object or a JSON array)"), "LMCACHE_L2_ADAPTER")
    st.add_argument("--l2-store-policy", default="default", choices=["default", "skip_l1"],
                    help="default: keep stored chunks in L1; skip_l1: drop them from L1 once in L2")
    st.add_argument("--l2-prefetch-policy", default="default", choices=["default", "retain"],
                    help="default: prefetched chunks are temporary; retain: keep them in L1")
    st.add_argument("--l2-prefetch-max-in-flight", type=POSITIVE_INT, default=8,
                    help="L2 prefetch requests in flight at once")
    st.add_argument("--shutdown-drain-seconds", type=NON_NEGATIVE_FLOAT, default=30.0,
                    help="on SIGTERM/SIGINT, time allowed to write the queued write-behind keys to L2 "
                         "(what is left is logged)")

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


# -- environment -------------------------------------------------------------------------------


def env_var_of(action: argparse.Action) -> str:
    """The environment variable that supplies ``action``'s default."""
    return getattr(action, "env_var", None) or ENV_PREFIX + action.dest.upper()


def apply_env_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Set each option's default from its ``LMCACHE_*`` variable, validating it like the flag."""
    config_file.apply_file_defaults(parser, environ)  # a --config file the launcher read: beneath the variables
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
            if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                   argparse.BooleanOptionalAction)):
                value: Any = boolean(raw)
            elif isinstance(action, argparse._AppendAction):
                value = env_json_objects(raw) if action.type is json_object else [
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
    """The full ``lmcache-server`` parser: core groups, plugin config groups, legacy plugin options, env defaults."""
    parser = argparse.ArgumentParser(
        prog="lmcache-server",
        description="KV-cache server for LLM inference (LMCache MP-server compatible). "
        "Subcommands: 'lmcache-server plugins' lists plugins; 'lmcache-server bench' runs benchmarks.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action=VersionAction)
    add_core_options(parser)
    add_plugin_selection_options(parser)
    config_file.add_config_option(parser)
    for spec in host.registrations.configs:
        add_config_options(parser, spec)
    host.add_options(parser)
    apply_env_defaults(parser, os.environ if environ is None else environ)
    return parser


def default_options(host: PluginHost) -> argparse.Namespace:
    """Every option at its default (no command line, no environment)."""
    return build_parser(host, environ={}).parse_args([])


def plugin_selection(argv: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    """Only the plugin selection flags (read before the full parser exists: plugins add options)."""
    pre = argparse.ArgumentParser(add_help=False)
    add_plugin_selection_options(pre)
    apply_env_defaults(pre, environ)
    args, _ = pre.parse_known_args(argv)
    return args


def make_host(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> PluginHost:
    """Load plugins as ``argv`` / the environment select them."""
    sel = plugin_selection(argv, os.environ if environ is None else environ)
    return PluginHost(allow=sel.plugins, deny=sel.disable_plugins, strict=sel.strict_plugins)


__all__ = [
    "ENV_PREFIX", "add_config_options", "add_core_options", "add_plugin_selection_options", "apply_env_defaults",
    "build_parser", "default_options", "env_var_of", "make_host", "plugin_selection",
]
