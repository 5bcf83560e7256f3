"""Inspection routes: ``GET /status``, ``GET /conf``, ``GET /version``, ``GET /lmc_version``, ``GET /commit_id``.

``GET /status``
    The engine snapshot, :meth:`CacheServer.status`: the core fields (``is_healthy``,
    ``engine_type``, ``chunk_size``, ``hash_algorithm``, ``active_sessions``) merged with every
    plugin's ``lmcache_status`` section (the engine's own come from the built-in ``core.engine``
    plugin, :mod:`lmcache_core.engine_status`: ``registered_gpu_ids``, ``cache_context_meta``
    with each registered ``kv_cache_layout``, ``active_prefetch_jobs``, ``storage_manager``).
    503 ``{"error": "engine not initialized"}`` before :meth:`CacheServer.start` and after
    :meth:`CacheServer.stop`.
``GET /conf``
    Every registered config object (``server.configs``: ``mp``, ``storage_manager``,
    ``observability``, ``http``, ``plugins`` and whatever plugins add with
    :meth:`CacheServer.register_config`) as one JSON object, indented by 2 with non-ASCII kept,
    ``application/json`` (LMCache's ``conf_api``). Secrets are masked with
    :func:`lmcache_core.config.masked` (any field whose name contains key, secret, token,
    password, passwd or credential, at any depth, L2 adapter entries included).
    503 ``{"error": "configs not initialized"}``; see below for what that means here.
``GET /version``, ``GET /lmc_version``, ``GET /commit_id``
    Bare JSON strings from :mod:`lmcache_core.buildinfo`: ``"<version>-<commit>"`` (``NA``
    for a missing part, so ``"NA-NA"``), the package version (``""`` if unknown) and the
    commit baked in at build/install time (``""`` if unknown). Always 200; they never
    touch the engine.

Decisions where the seed is silent, and departures from LMCache:

* "Configs not initialized" means: the app has no :class:`CacheServer` on its state (an app
  assembled by hand from this plugin's router, without :func:`lmcache_core.http.app.create_app`),
  or the server's ``configs`` mapping is empty. A server built the usual way has its configs
  from construction on, so ``/conf`` answers 200 even before the engine starts — what the
  process loaded is worth seeing precisely while it fails to start.
* ``/conf`` renders each section with ``msgspec.to_builtins`` (Structs, dataclasses and attrs
  alike; other values stringified) before masking, so a plugin's non-Struct config is masked
  too. A section that cannot be rendered at all shows ``{"error": "unrenderable config: <type>"}``
  rather than its ``str()`` (which could carry a secret). Non-finite floats are written as the
  strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` so the body stays valid JSON (LMCache's
  newest renderer answers 500 there).
* ``/status`` and ``/conf`` are reads: no admin guard, even with ``--http-admin-token``; but
  with a token set, ``/status`` shows worker instance ids (``registered_gpu_ids``,
  ``registered_non_cuda_instance_ids``, ``cache_context_meta``, ``non_cuda_context_meta``)
  only to a request carrying it: the others see empty lists/maps,
  ``registered_instance_count`` and ``instance_ids_hidden: true`` (an instance id is what a
  data-path client needs to reach a worker's KV cache; docs/security.md).
  Both run on a worker thread (``sync_to_thread=True``): the status takes the components'
  locks only long enough to copy counters, and nothing is serialized under a lock.
* The configs are snapshot (``dict(server.configs)``) before rendering, so a plugin
  registering a config while ``/conf`` renders cannot break the response.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
from litestar import MediaType, Request, Response, Router, get
from litestar.datastructures import State

from lmcache_core import api
from lmcache_core.api import Engine, HTTPError, RegisterRoutes, has_admin_token, hookimpl, masked, openapi

JSON = MediaType.JSON


def with_056_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the ``storage_manager`` fields LMCache 0.5.6 reports and its tools read, seed fields kept.

    0.5.6 keys its components by L1 name (``l1_managers``, ``store_controllers``,
    ``l1_eviction_controllers``, one entry ``_default`` here) and adds ``l1_usage``
    ``[used, total]`` and ``l1_capacity_bytes_by_backend``. Its ``lmcache describe
    kvcache`` reads the policy at ``storage_manager.eviction_controller.eviction_policy``,
    a path 0.5.6's own server does not fill (it prints ``null`` there); it is filled here. Each
    ``l2_adapters`` entry without a ``type`` (what describe titles it by) gets its ``type_name``.
    """
    storage = doc.get("storage_manager")
    l1 = storage.get("l1_manager") if isinstance(storage, dict) else None
    if not isinstance(l1, dict):  # no storage section, or one that reports its own failure
        return doc
    eviction = storage.get("l1_eviction_controller")
    used, total = l1.get("memory_used_bytes", 0), l1.get("memory_total_bytes", 0)
    extra = {"eviction_controller": eviction, "l1_eviction_controllers": {"_default": eviction},
             "store_controllers": {"_default": storage.get("store_controller")}, "l1_managers": {"_default": l1},
             "l1_usage": [used, total], "l1_capacity_bytes_by_backend": {"dram": total}}
    for name, value in extra.items():
        storage.setdefault(name, value)
    for adapter in storage.get("l2_adapters") or []:  # describe's "L2: <type>" (0.5.6 adapters name their class)
        if isinstance(adapter, dict):
            adapter.setdefault("type", adapter.get("type_name"))
    return doc


INSTANCE_ID_FIELDS = ("registered_gpu_ids", "registered_non_cuda_instance_ids")
INSTANCE_KEYED_FIELDS = ("cache_context_meta", "non_cuda_context_meta")


def without_instance_ids(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with the worker instance ids (and the per-instance sections keyed by them) hidden.

    An instance id is all a data-path client needs to STORE into or RETRIEVE from that
    worker's KV cache (docs/security.md), so with ``--http-admin-token`` set only the admin
    sees them; everyone else gets the counts (``registered_instance_count``) and
    ``instance_ids_hidden: true``.
    """
    ids = [i for field in INSTANCE_ID_FIELDS for i in (doc.get(field) or [])]
    for field in INSTANCE_ID_FIELDS:
        if field in doc:
            doc[field] = []
    for field in INSTANCE_KEYED_FIELDS:
        if field in doc:
            doc[field] = {}
    doc["registered_instance_count"] = len(ids)
    doc["instance_ids_hidden"] = True
    return doc


@get("/status", sync_to_thread=True, summary="Engine snapshot")
def status(engine: Engine, request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Every status contribution merged into one document (plus 0.5.6's names, :func:`with_056_fields`);
    with an admin token set, instance ids only for a request that carries it (:func:`without_instance_ids`)."""
    doc = with_056_fields(engine.status())
    if engine.http_config.http_admin_token and not has_admin_token(request):
        doc = without_instance_ids(doc)
    return doc


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats replaced by their JSON-ish names (strict JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def render_section(config: Any) -> Any:
    """One config object as masked JSON builtins (see the module docstring)."""
    unrenderable = {"error": f"unrenderable config: {type(config).__name__}"}
    try:
        # enc_hook=str stringifies values msgspec does not know (a Path inside a Struct) ...
        builtins = msgspec.to_builtins(config, enc_hook=str, str_keys=True)
    except Exception:
        return unrenderable
    if isinstance(builtins, str) and not isinstance(config, str):
        return unrenderable  # ... but a whole config reduced to its str() could carry a secret unmasked
    return _finite(masked(builtins))


def conf_document(configs: dict[str, Any]) -> bytes:
    """The ``/conf`` body: every section, masked, indented by 2, non-ASCII kept."""
    doc = {str(name): render_section(cfg) for name, cfg in configs.items()}
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False).encode()


@get("/conf", sync_to_thread=True, summary="Every registered config object, secrets masked", responses={
    200: openapi.json(dict[str, Any], "one object per config section (masked), indented by 2"),
    503: openapi.error("no configs: the app has no server, or the server has no config sections")})
def conf(state: State) -> Response[bytes]:
    """Every config section as one indented JSON document; 503 while there is none."""
    server = getattr(state, "server", None)
    configs = getattr(server, "configs", None)
    snapshot = dict(configs) if isinstance(configs, dict) else {}
    if not snapshot:
        raise HTTPError(503, "configs not initialized")
    return Response(conf_document(snapshot), media_type=JSON)


def _json_string(value: str) -> Response[bytes]:
    return Response(msgspec.json.encode(value), media_type=JSON)


@get("/version", sync_to_thread=False, summary="Combined version descriptor")
def version() -> Response[bytes]:
    """``"<version>-<commit>"``, ``NA`` for a missing part."""
    return _json_string(api.full_version())


@get("/lmc_version", sync_to_thread=False, summary="Package version")
def lmc_version() -> Response[bytes]:
    """The package version, ``""`` if unknown."""
    return _json_string(api.package_version())


@get("/commit_id", sync_to_thread=False, summary="Build commit id")
def commit_id() -> Response[bytes]:
    """The commit baked in at build/install time, ``""`` if unknown."""
    return _json_string(api.commit_id())


router = Router(path="/", route_handlers=[status, conf, version, lmc_version, commit_id], tags=["inspect"])
"""Errors in the default ``{"error": ...}`` envelope (the engine's 503 included)."""


@hookimpl
def lmcache_register_routes(register: RegisterRoutes) -> None:
    register(router)
