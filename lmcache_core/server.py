"""The cache server: one object that owns configuration, plugins and the engine.

:class:`CacheServer` is what route plugins receive (through the ``engine``
dependency) and what lifecycle and status hooks are called with. Building it
is cheap; :meth:`CacheServer.start` wires the engine and runs the plugins'
startup hooks, after which :attr:`CacheServer.ready` is true and routes that
need the engine stop answering 503.
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

import msgspec

from lmcache_core import __version__
from lmcache_core.config import HTTPConfig, MPConfig, StorageManagerConfig, build_configs
from lmcache_core.engine_view import EngineView
from lmcache_core.hashing import TokenHasher
from lmcache_core.observability.periodic import PeriodicThreadRegistry, ThreadLevel
from lmcache_core.options import default_options
from lmcache_core.plugins import PluginHost, Registry
from lmcache_core.sessions import SessionManager
from lmcache_core.storage.manager import StorageManager, parse_l2_configs
from lmcache_core.transfer.threads import fit_intraop_threads
from lmcache_core.transport.handlers import DataPath
from lmcache_core.transport.zmq_server import ZmqServer

logger = logging.getLogger(__name__)

SESSION_CLEANUP_THREAD = "SessionManager-cleanup-thread"
SESSION_CLEANUP_INTERVAL_S = 60.0
WORKER_REAPER_THREAD = "lmcache-mp-worker-reaper"


class CacheServer:
    """Configuration, plugin host and engine of one lmcache-server instance."""

    def __init__(
        self,
        plugin_host: PluginHost,
        configs: dict[str, msgspec.Struct] | None = None,
        options: argparse.Namespace | None = None,
    ) -> None:
        """``configs`` are the built config sections (:func:`lmcache_core.config.build_configs`); a
        section missing there is built from ``options`` (a parsed command line), or, without
        them, from every option's default. ``options`` stays readable as :attr:`options` for
        plugins that add raw flags through ``lmcache_add_options``."""
        self.plugin_host = plugin_host
        if options is None:
            options = default_options(plugin_host)
        self.options = options
        built = build_configs(options, [s for s in plugin_host.registrations.configs if s.name not in (configs or {})])
        self.configs: dict[str, msgspec.Struct] = {**built, **(configs or {})}
        self.version = __version__
        self._lock = threading.Lock()
        self._ready = False
        self._started = False
        self._stopped = False
        self.eviction_policies: Registry = plugin_host.registrations.eviction_policies
        self.l2_adapter_types: Registry = plugin_host.registrations.l2_adapter_types
        self._validate()
        # Built by start(); None until then.
        self.threads: PeriodicThreadRegistry | None = None
        self.sessions: SessionManager | None = None
        self.storage: StorageManager | None = None
        self.datapath: DataPath | None = None
        self.zmq: ZmqServer | None = None
        self._plugin_state: dict[str, dict[str, Any]] = {}

    # -- configuration ---------------------------------------------------

    @property
    def mp_config(self) -> MPConfig:
        return self.configs["mp"]  # type: ignore[return-value]

    @property
    def storage_config(self) -> StorageManagerConfig:
        return self.configs["storage_manager"]  # type: ignore[return-value]

    @property
    def http_config(self) -> HTTPConfig:
        return self.configs["http"]  # type: ignore[return-value]

    def register_config(self, name: str, config: msgspec.Struct) -> None:
        """Add a config object to ``/conf`` under ``name`` (names are unique). Plugins declare theirs
        with ``lmcache_register_config`` instead, which also derives the flags and validates."""
        if name in self.configs:
            raise ValueError(f"config section {name!r} already registered")
        self.configs[name] = config

    def _validate(self) -> None:
        parse_l2_configs(self.storage_config.l2_adapter, self.l2_adapter_types)
        # A hash algorithm we cannot compute deterministically is a configuration error.
        self.hasher = TokenHasher(self.mp_config.chunk_size, self.mp_config.hash_algorithm)
        policy = self.storage_config.eviction_policy
        if policy not in self.eviction_policies:
            raise ValueError(
                f"--eviction-policy {policy!r} is not registered; known: {', '.join(self.eviction_policies.names())}"
            )

    # -- for plugins -----------------------------------------------------

    @property
    def view(self) -> EngineView:
        """The read-only view of the engine for route plugins (figures, adapters by type, layouts)."""
        return EngineView(self)

    def plugin_state(self, name: str) -> dict[str, Any]:
        """The mutable state of plugin ``name`` on this server: one dict per name, made on first use.

        Per server, not per process (tests run many servers), so a plugin keeps counters, caches
        or handles here, never in module globals. Set it up in ``lmcache_startup``, release it in
        ``lmcache_shutdown``; guard it with a lock of your own if handlers change it concurrently.
        """
        with self._lock:
            return self._plugin_state.setdefault(name, {})

    # -- lifecycle -------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once :meth:`start` finished and until :meth:`stop`."""
        return self._ready

    def start(self) -> None:
        """Wire the engine and run every plugin's ``lmcache_startup``."""
        with self._lock:
            if self._ready:
                return
            if self._stopped:
                raise RuntimeError("a stopped server cannot be started again")
            self._started = True
            try:
                self._start_engine()
                self.plugin_host.startup(self)
            except BaseException:
                self._stopped = True
                self._stop_engine()
                raise
            self._ready = True
            logger.info("lmcache-server %s ready", self.version)

    def stop(self) -> None:
        """Run every plugin's ``lmcache_shutdown`` and release the engine. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._ready = False
            if not self._started:
                return
            self.plugin_host.shutdown(self)
            self._stop_engine()
            logger.info("lmcache-server stopped")

    def _start_engine(self) -> None:
        obs = self.configs["observability"]
        self.threads = PeriodicThreadRegistry()
        self.sessions = SessionManager(self.hasher, self.mp_config.session_ttl_seconds)
        self.threads.create(SESSION_CLEANUP_THREAD, min(SESSION_CLEANUP_INTERVAL_S, self.mp_config.session_ttl_seconds),
                            self.sessions.cleanup, level=ThreadLevel.MEDIUM)
        self.storage = StorageManager(self.storage_config, self.eviction_policies, l2_types=self.l2_adapter_types,
                                      enable_metrics=not getattr(obs, "disable_metrics", False))
        self.storage.start(self.threads)
        self.datapath = DataPath(self)
        mp = self.mp_config
        if mp.worker_reap_timeout_seconds > 0:
            reap_timeout, grace = mp.worker_reap_timeout_seconds, mp.worker_registration_grace_seconds
            self.threads.create(WORKER_REAPER_THREAD, max(min(reap_timeout / 4, 30.0), 0.05),
                                lambda: {"reaped": self.datapath.reap(reap_timeout, grace)} if self.datapath else None,
                                level=ThreadLevel.MEDIUM)
        limits = self.datapath.limits
        url = limits.zmq_endpoint or f"tcp://{mp.host}:{mp.port}"
        lanes = mp.max_gpu_workers or mp.max_workers
        fit_intraop_threads(lanes)  # N lanes copying at once share the cores instead of oversubscribing them
        self.zmq = ZmqServer(url, self.datapath.handler_specs(), ipc_mode=limits.ipc_mode(),
                             gpu_workers=lanes,
                             cpu_workers=mp.max_cpu_workers or mp.max_workers,
                             max_message_bytes=limits.zmq_max_message_bytes)
        self.zmq.start()
        logger.info("ZMQ data path on %s", url)

    def _stop_engine(self) -> None:
        # Tolerates a partly built engine (a start that failed half way).
        zmq_server, self.zmq = self.zmq, None
        datapath, self.datapath = self.datapath, None
        if zmq_server is not None:
            zmq_server.stop()  # no new requests; the in-flight ones finish
        if self.storage is not None:  # write-behind queue to L2, bounded by --shutdown-drain-seconds
            self.storage.store_controller.flush(getattr(self.options, "shutdown_drain_seconds", 30.0))
        if self.threads is not None:
            self.threads.stop_all()
        if datapath is not None:
            datapath.close()
        if self.storage is not None:
            self.storage.close()

    # -- status ----------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The ``GET /status`` document: core fields, then every status contribution (engine
        components included, as the built-in ``core.engine`` plugin)."""
        doc: dict[str, Any] = {
            "is_healthy": self.ready,
            "engine_type": type(self).__name__,
            "chunk_size": self.mp_config.chunk_size,
            "hash_algorithm": self.mp_config.hash_algorithm,
            "active_sessions": 0,
        }
        doc.update(self.plugin_host.status(self))
        storage = doc.get("storage_manager")
        doc["is_healthy"] = self.ready and isinstance(storage, dict) and bool(storage.get("is_healthy"))
        return doc
