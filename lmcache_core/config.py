"""Configuration objects, one msgspec Struct per section.

The launcher (:mod:`lmcache_core.cli`) fills them from flags and environment
variables; ``GET /conf`` serves them. Field names equal the argparse ``dest``
of their flag, so a section is built from parsed arguments by name
(:func:`section_from_args`). Defaults follow LMCache 0.5.6 where it has the
flag (``spec/lmcache-mp-core.md`` §1), with two deliberate differences:
``--l1-size-gb`` defaults to 1 and ``--eviction-policy`` to ``LRU`` (LMCache
requires both), so ``lmcache-server`` with no flags starts a useful server;
and ``--http-host`` defaults to ``127.0.0.1`` (LMCache's code binds 0.0.0.0,
its newest docs say 127.0.0.1; an operator must opt in to exposure).
"""

from __future__ import annotations

import argparse
from typing import Any, TypeVar

import msgspec


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
    l1_align_bytes: int = 4096
    l1_write_ttl_seconds: float = 600.0
    l1_read_ttl_seconds: float = 300.0
    eviction_policy: str = "LRU"
    eviction_trigger_watermark: float = 0.8
    eviction_ratio: float = 0.2
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


# Names whose values are never shown by /conf (keys, tokens, passwords).
SECRET_MARKERS = ("key", "secret", "token", "password", "passwd", "credential")


def is_secret_name(name: str) -> bool:
    """True for a config field or variable name that looks like it holds a secret."""
    lowered = name.lower()
    return any(marker in lowered for marker in SECRET_MARKERS)


def masked(value: Any) -> Any:
    """A JSON-able copy of ``value`` with secret-looking fields replaced by ``"***"``."""
    if isinstance(value, msgspec.Struct):
        value = msgspec.to_builtins(value)
    if isinstance(value, dict):
        return {
            k: ("***" if is_secret_name(str(k)) and v not in (None, "") else masked(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value
