"""Configuration objects, one msgspec Struct per section, and how sections are built.

The launcher (:mod:`lmcache_core.cli`, through :mod:`lmcache_core.options`) fills them
from flags and environment variables; ``GET /conf`` serves them. A plugin declares its
section once, as a Struct, through ``lmcache_register_config`` (a :class:`ConfigSpec`):
the flags, variables, defaults and help text are derived from the Struct's fields
(:mod:`lmcache_core.options`), and :func:`build_configs` builds and validates every
section once, before the server starts. Field names equal the argparse ``dest``
of their flag, so a section is built from parsed arguments by name
(:func:`section_from_args`). Defaults follow LMCache 0.5.6 where it has the
flag (as its ``lmcache server --help`` shows), with two deliberate differences:
``--l1-size-gb`` defaults to 1 and ``--eviction-policy`` to ``LRU`` (LMCache
requires both), so ``lmcache-server`` with no flags starts a useful server;
and ``--http-host`` defaults to ``127.0.0.1`` (LMCache's code binds 0.0.0.0,
its newest docs say 127.0.0.1; an operator must opt in to exposure).
"""

from __future__ import annotations

import argparse
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from lmcache_core.argtypes import for_type, optional_of, unwrap


class MPConfig(msgspec.Struct, kw_only=True):
    """The ZMQ data-path server (``--host``, ``--port``, pools, hashing, workers)."""

    host: str = "localhost"
    port: int = 5555
    instance_id: str = ""
    chunk_size: int = 256
    max_workers: int = 1
    max_gpu_workers: int | None = None
    max_cpu_workers: int | None = None
    hash_algorithm: str = "blake3"
    supported_transfer_mode: str = "auto"
    session_ttl_seconds: float = 600.0
    worker_reap_timeout_seconds: float = 120.0
    worker_registration_grace_seconds: float = 3600.0


class StorageManagerConfig(msgspec.Struct, kw_only=True):
    """L1, eviction and the L2 cascade."""

    l1_size_gb: float = 1.0
    l1_prefault_ahead_gb: float = 0.0
    l1_align_bytes: int = 4096
    l1_write_ttl_seconds: float = 600.0
    l1_read_ttl_seconds: float = 300.0
    eviction_policy: str = "LRU"
    eviction_trigger_watermark: float = 0.8
    eviction_ratio: float = 0.2
    cache_salt_quota: list[tuple[str, float]] = msgspec.field(default_factory=list)  # (salt, GiB) at startup
    l2_adapter: list[dict[str, Any]] = msgspec.field(default_factory=list)
    l2_store_policy: str = "default"
    l2_prefetch_policy: str = "default"
    l2_prefetch_max_in_flight: int = 8


class ObservabilityConfig(msgspec.Struct, kw_only=True):
    """Logging and metrics."""

    log_level: str = "INFO"
    disable_metrics: bool = False


class HTTPConfig(msgspec.Struct, kw_only=True):
    """The HTTP frontend."""

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_admin_token: str | None = None


class PluginsConfig(msgspec.Struct, kw_only=True):
    """Which plugins load (``--plugins``, ``--disable-plugins``, ``--strict-plugins``)."""

    plugins: str | None = None
    disable_plugins: str | None = None
    strict_plugins: bool = False


CORE_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "mp": MPConfig,
    "storage_manager": StorageManagerConfig,
    "observability": ObservabilityConfig,
    "http": HTTPConfig,
    "plugins": PluginsConfig,
}

S = TypeVar("S", bound=msgspec.Struct)


def section_from_args(section: type[S], args: argparse.Namespace) -> S:
    """Build a config Struct from parsed arguments, taking each field from the same-named ``dest``."""
    values = {name: getattr(args, name) for name in section.__struct_fields__ if hasattr(args, name)}
    return section(**values)


@dataclass(frozen=True)
class ConfigSpec:
    """One plugin config section, as ``register(name, config_type, ...)`` declared it.

    ``name`` is the key in ``server.configs`` and ``GET /conf``; ``prefix`` is put before
    each field's name to make its flag and ``dest`` (``prefix="l2-"``, field
    ``warm_job_ttl_seconds`` → ``--l2-warm-job-ttl-seconds``, ``LMCACHE_L2_WARM_JOB_TTL_SECONDS``).
    ``title`` and ``description`` head the option group in ``--help``.
    """

    name: str
    config_type: type[msgspec.Struct]
    plugin: str
    prefix: str = ""
    title: str = ""
    description: str | None = None

    def dest(self, field: str) -> str:
        """The argparse ``dest`` (and, upper-cased, the ``LMCACHE_*`` suffix) of ``field``."""
        return self.prefix.replace("-", "_") + field

    def flag(self, field: str) -> str:
        """The command-line flag of ``field``."""
        return "--" + self.dest(field).replace("_", "-")


class ConfigError(ValueError):
    """A config section whose values break its Struct's constraints (a usage error: exit 2)."""


def validated(section: type[S], values: dict[str, Any], *, name: str) -> S:
    """``values`` as a ``section`` Struct, every field type and ``msgspec.Meta`` constraint checked."""
    try:
        return msgspec.convert(values, section)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"config {name!r}: {exc}") from None


def plugin_config_from_args(spec: ConfigSpec, args: argparse.Namespace) -> msgspec.Struct:
    """The section ``spec`` declares, from parsed arguments (a field missing there keeps its default)."""
    values = {f: getattr(args, spec.dest(f)) for f in spec.config_type.__struct_fields__
              if hasattr(args, spec.dest(f))}
    return validated(spec.config_type, values, name=spec.name)


def build_configs(args: argparse.Namespace, specs: Any = ()) -> dict[str, msgspec.Struct]:
    """Every core section and every plugin section (``specs``: :class:`ConfigSpec` s) from parsed arguments."""
    configs: dict[str, msgspec.Struct] = {name: section_from_args(section, args)
                                          for name, section in CORE_SECTIONS.items()}
    for spec in specs:
        configs[spec.name] = plugin_config_from_args(spec, args)
    return configs


# -- plugin config sections: the option group of a Struct --------------------------------------------------------------------


class _ExtendItems(argparse.Action):
    """``--flag a b,c`` → ``["a", "b", "c"]``: each token is parsed to a list, the lists are joined.

    A repeated flag appends (``--flag a --flag b`` → ``["a", "b"]``, as ``action="append"`` does);
    the first occurrence replaces the default (which may come from an ``LMCACHE_*`` variable).
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Sequence[Any] | str | None, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        flat: list[Any] = [] if current is None or current is self.default else list(current)
        for item in values or []:
            flat.extend(item if isinstance(item, list) else [item])
        setattr(namespace, self.dest, flat)


def _items(item_type: Any) -> Any:
    """A parser of ``"a, b c"`` into a list of ``item_type`` values (commas or blanks between)."""
    one = for_type(item_type)

    def parse(text: str) -> list[Any]:
        return [one(part) for part in text.replace(",", " ").split()]

    parse.__name__ = f"{one.__name__} list"
    return parse


def _field_meta(annotation: Any) -> tuple[str | None, dict[str, Any]]:
    """The ``description`` and ``extra`` of a field's ``msgspec.Meta`` annotations."""
    _, metas = unwrap(annotation)
    description = next((m.description for m in metas if m.description), None)
    extra: dict[str, Any] = {}
    for m in metas:
        extra.update(m.extra or {})
    return description, extra


def add_config_options(parser: argparse.ArgumentParser, spec: ConfigSpec) -> list[str]:
    """Add one option per field of ``spec``'s Struct, in one group; returns the ``dest`` s added.

    Derived from each field: the flag (:meth:`ConfigSpec.flag`), the default, the help text
    (``msgspec.Meta(description=...)``), the value type with its bounds
    (:func:`lmcache_core.argtypes.for_type`), ``choices`` for a ``Literal``, ``store_true``
    for a ``bool`` that defaults to false (``--x/--no-x`` when it defaults to true), and
    ``nargs="*"`` (items split on commas or blanks) for a ``list``. ``Meta(extra={"metavar": ...})``
    sets the metavar.
    """
    group = parser.add_argument_group(spec.title or f"{spec.name} ({spec.plugin})", spec.description)
    hints = typing.get_type_hints(spec.config_type, include_extras=True)
    dests: list[str] = []
    for field in msgspec.structs.fields(spec.config_type):
        annotation = hints[field.name]
        description, extra = _field_meta(annotation)
        base, _ = unwrap(annotation)
        inner, _ = optional_of(base)
        inner_base, _ = unwrap(inner)
        default = (field.default_factory() if field.default_factory is not msgspec.NODEFAULT
                   else None if field.default is msgspec.NODEFAULT else field.default)
        kwargs: dict[str, Any] = {"dest": spec.dest(field.name), "default": default,
                                  "help": description or field.name.replace("_", " ")}
        if "metavar" in extra:
            kwargs["metavar"] = extra["metavar"]
        if field.required:
            kwargs["required"] = True
        if inner_base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
        elif typing.get_origin(inner_base) in (list, tuple, set, frozenset):
            (item,) = typing.get_args(inner_base)[:1] or (str,)
            kwargs.update(nargs="*", type=_items(item), action=_ExtendItems)
        else:
            kwargs["type"] = for_type(annotation)
            if typing.get_origin(inner_base) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(inner_base))
        group.add_argument(spec.flag(field.name), **kwargs)
        dests.append(kwargs["dest"])
    return dests



SELECTION_FLAGS = ("--plugins", "--disable-plugins", "--strict-plugins", "--version", "--help", "-h")


def reserved_flags() -> list[str]:
    """The flags of the core option groups: no plugin config field may take one."""
    flags = [f"--{field.replace('_', '-')}" for section in CORE_SECTIONS.values()
             for field in section.__struct_fields__]
    return list(dict.fromkeys([*flags, *SELECTION_FLAGS]))


# Names whose values are never shown by /conf or /env (keys, tokens, passwords).
SECRET_MARKERS = ("key", "secret", "token", "password", "passwd", "credential")
# Short markers match a whole word of the name only (``DB_PASS``, ``MYSQL_PWD``, ``SENTRY_DSN``,
# ``GITHUB_PAT``), so ``PATH`` or ``COMPASS`` stay readable.
SECRET_WORDS = frozenset({"pass", "pwd", "dsn", "pat", "cookie", "passphrase", "otp"})
_NAME_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def is_secret_name(name: str) -> bool:
    """True for a config field or variable name that looks like it holds a secret."""
    lowered = name.lower()
    if any(marker in lowered for marker in SECRET_MARKERS):
        return True
    return any(word.lower() in SECRET_WORDS for word in _NAME_WORDS.findall(name))  # DB_PASS, dbPass


# ``scheme://userinfo@``: the userinfo runs to the authority's last "@" (a password may hold one).
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s]*)@")


def mask_url_credentials(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced: ``https://user:pass@host`` → ``https://***@host``.

    Works on any string (a URL alone, or one inside a command line, a log line, a DSN);
    text without ``scheme://...@`` comes back unchanged.
    """
    if "@" not in text or "://" not in text:
        return text
    return _URL_USERINFO.sub(lambda m: f"{m['scheme']}***@", text)


def masked(value: Any) -> Any:
    """A JSON-able copy of ``value`` with secrets hidden, at any depth.

    A field whose name looks secret (:func:`is_secret_name`) becomes ``"***"``; in every
    other string, URL credentials are replaced (:func:`mask_url_credentials`).
    """
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, dict):
        return {
            k: ("***" if is_secret_name(str(k)) and v not in (None, "") else masked(v)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [masked(v) for v in value]
    if isinstance(value, str):
        return mask_url_credentials(value)
    return value
