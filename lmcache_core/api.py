"""The public plugin API: every name a plugin may import from ``lmcache_core``.

A plugin imports from here (and its tests from :mod:`lmcache_core.testing`); nothing
else in ``lmcache_core`` is a contract, and ``tests/test_import_hygiene.py`` checks that
the in-tree plugins keep to it. ``docs/plugins.md`` documents each group:

Hooks
    :data:`hookimpl`; the ``register`` callables' types (:class:`RegisterConfig`,
    :class:`RegisterRoutes`, :class:`RegisterL2Adapter`, :class:`RegisterEvictionPolicy`);
    :class:`CacheServer`, what lifecycle and status hooks receive; its ``view``
    (:class:`EngineView`: L1 and L2 figures, adapters by type, registered layouts, read-only)
    and ``plugin_state(name)`` (a plugin's mutable state on that server).
Configuration
    A plugin declares a msgspec Struct with ``lmcache_register_config`` and reads it back
    as ``server.configs[name]``. :mod:`argtypes` holds the value types every option uses;
    ``msgspec.Meta(description=...)`` on a field is its help text. :func:`masked` and
    :func:`is_secret_name` hide secrets when showing config.
HTTP
    :class:`HTTPError` (raise it anywhere in a handler), the envelopes (:data:`ERROR`,
    :data:`DETAIL`, :data:`TEXT`, :func:`status_reason`) a ``Router`` declares with
    ``opt=error_envelope(...)``, :class:`EngineUnavailable` and
    :data:`ENGINE_NOT_INITIALIZED` (the 503 before the engine is ready), the dependencies
    :data:`Engine` (the ready server, or the group's 503) and :data:`Server`, the admin
    guard :func:`require_admin` (and :func:`has_admin_token`, :class:`AdminTokenRequired`),
    :func:`unavailable_body` (a fixed 503 body), and :mod:`openapi` (response and body
    declarations for the document).
L2 adapters
    :class:`L2Adapter`, its config base :class:`L2AdapterConfig`, :class:`L2AdapterContext`,
    the result types (:class:`KeyEntry`, :class:`KeyListPage`, :class:`DeleteReport`,
    :class:`AdapterUsage`), :class:`ListingNotSupported`, :class:`Reconfigurable` and
    :class:`ReconfigureError`, :class:`L2Full` (a full backend: skip, not fail); keys
    (:class:`ObjectKey`, :class:`EncodedObjectKey`, the
    validators and the object-name codecs); sizes (:func:`parse_size`, :func:`format_size`);
    :class:`L2Full` (a store skipped for want of room, not a failure). An adapter that wraps
    other adapters builds their configs with :func:`parse_l2_configs` from the types a
    :class:`PluginHost` collected.
Status and metrics
    :func:`full_version`, :func:`package_version`, :func:`commit_id`; :func:`reset_metrics`;
    the metric modules (``http_metrics``, ``l1_metrics``, ``l2_metrics``, ``datapath_metrics``)
    for plugins that show them; :class:`QuotaManager` and its unit helpers.
Data path facts
    :class:`Op` (the ZMQ operations), :class:`L1Result`, the checksum helpers and the
    transfer errors a route may have to answer.
"""

from __future__ import annotations

from lmcache_core import __version__, argtypes, hookimpl
from lmcache_core.buildinfo import commit_id, full_version, package_version
from lmcache_core.config import ConfigSpec, is_secret_name, mask_url_credentials, masked
from lmcache_core.engine_view import EngineView, L1Figures, L2Figures, RegisteredLayout
from lmcache_core.hookspecs import RegisterConfig, RegisterEvictionPolicy, RegisterL2Adapter, RegisterRoutes
from lmcache_core.http import metrics as http_metrics
from lmcache_core.http import openapi
from lmcache_core.http.deps import Engine, Server, unavailable_body
from lmcache_core.http.errors import (
    DETAIL,
    ENGINE_NOT_INITIALIZED,
    ERROR,
    TEXT,
    EngineUnavailable,
    Envelope,
    HTTPError,
    error_envelope,
    safe_text,
    status_reason,
)
from lmcache_core.http.guard import AdminTokenRequired, has_admin_token, require_admin
from lmcache_core.keys import (
    FS_NAME_SUFFIX,
    MAX_CACHE_SALT_CHARS,
    MAX_CHUNK_HASH_BYTES,
    EncodedObjectKey,
    InvalidKeyError,
    ObjectKey,
    UnencodableKeyError,
    fs_file_name,
    kv_ranks_for_world,
    object_name,
    object_name_prefix,
    parse_fs_file_name,
    parse_object_name,
    try_parse_fs_file_name,
    try_parse_object_name,
    validate_cache_salt,
    validate_key,
    validate_model_name,
)
from lmcache_core.observability.metrics import reset_all as reset_metrics
from lmcache_core.plugins import PluginHost
from lmcache_core.server import CacheServer
from lmcache_core.storage import metrics as l1_metrics
from lmcache_core.storage.l1 import L1Result
from lmcache_core.storage.l2 import metrics as l2_metrics
from lmcache_core.storage.l2.base import (
    GIB,
    AdapterUsage,
    DeleteReport,
    KeyEntry,
    KeyListPage,
    L2Adapter,
    L2Full,
    L2AdapterConfig,
    L2AdapterContext,
    L2Full,
    L2Listener,
    ListingNotSupported,
    Reconfigurable,
    ReconfigureError,
    as_bytes_view,
)
from lmcache_core.storage.l2.prefetch_controller import DEFAULT_WARM_JOB_MAX_COMPLETED, DEFAULT_WARM_JOB_TTL_S
from lmcache_core.storage.manager import parse_l2_configs
from lmcache_core.storage.quota import QuotaManager, bytes_to_gib, gib_to_bytes
from lmcache_core.transfer.checksums import ChecksumError, checksum_response, parse_block_ids
from lmcache_core.transfer.kvcache import KVCacheClosedError
from lmcache_core.transfer.layout import LayoutError, TransferError
from lmcache_core.transport import metrics as datapath_metrics
from lmcache_core.transport.wire import Op
from lmcache_core.transport.zmq_server import ZMQ_REQUESTS
from lmcache_core.units import SIZE_ERROR, format_size, parse_size

__all__ = [
    # hooks
    "CacheServer", "RegisterConfig", "RegisterEvictionPolicy", "RegisterL2Adapter", "RegisterRoutes", "hookimpl",
    # the engine, read-only (server.view), and per-server plugin state (server.plugin_state(name))
    "EngineView", "L1Figures", "L2Figures", "RegisteredLayout",
    "__version__",
    # configuration
    "ConfigSpec", "argtypes", "is_secret_name", "mask_url_credentials", "masked",
    # HTTP
    "DETAIL", "ENGINE_NOT_INITIALIZED", "ERROR", "TEXT", "AdminTokenRequired", "Engine", "EngineUnavailable",
    "Envelope", "HTTPError", "Server", "error_envelope", "has_admin_token", "openapi", "require_admin", "safe_text",
    "status_reason", "unavailable_body",
    # L2 adapters, keys, sizes
    "GIB", "AdapterUsage", "DeleteReport", "KeyEntry", "KeyListPage", "L2Adapter", "L2AdapterConfig",
    "L2AdapterContext", "L2Full", "L2Listener", "ListingNotSupported", "Reconfigurable", "ReconfigureError",
    "as_bytes_view",
    "ZMQ_REQUESTS", "L2Full",
    # adapters that wrap adapters (fault injection): the installed adapter types and their configs
    "PluginHost", "parse_l2_configs",
    "DEFAULT_WARM_JOB_MAX_COMPLETED", "DEFAULT_WARM_JOB_TTL_S",
    "FS_NAME_SUFFIX", "MAX_CACHE_SALT_CHARS", "MAX_CHUNK_HASH_BYTES", "EncodedObjectKey", "InvalidKeyError",
    "ObjectKey", "UnencodableKeyError", "fs_file_name", "kv_ranks_for_world", "object_name", "object_name_prefix",
    "parse_fs_file_name", "parse_object_name", "try_parse_fs_file_name", "try_parse_object_name",
    "validate_cache_salt", "validate_key", "validate_model_name",
    "SIZE_ERROR", "format_size", "parse_size",
    # status and metrics
    "QuotaManager", "bytes_to_gib", "commit_id", "datapath_metrics", "full_version", "gib_to_bytes", "http_metrics",
    "l1_metrics", "l2_metrics", "package_version", "reset_metrics",
    # data path facts
    "ChecksumError", "KVCacheClosedError", "L1Result", "LayoutError", "Op", "TransferError", "checksum_response",
    "parse_block_ids",
]
