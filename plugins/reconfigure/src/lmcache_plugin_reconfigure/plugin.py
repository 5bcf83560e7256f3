"""Runtime L2 reconfiguration: ``/reconfigure/...`` routed to adapters that implement ``Reconfigurable``.

Routes (LMCache's HTTP API, "Runtime L2 Reconfiguration"):

``GET /reconfigure/backends``
    ``{"enabled", "num_backends", "backends"}``: the sorted backend names that have
    at least one reconfigurable adapter. 200; 503 ``{"error": "engine not initialized"}``.
``GET /reconfigure/{backend}/status``
    ``{"enabled", "backend", "num_adapters", "adapters"}``; each entry is
    ``{"adapter_index", "l2_adapter_index", "backend", "supported_operations", "status"}``
    with ``adapter_index`` backend-local (the value to send back) and ``status`` the
    adapter's own fields. An unknown backend is 200 with ``enabled: false``; a blank
    one 400 ``{"error": "backend must be non-empty"}``; 503.
``POST /reconfigure/{backend}/{operation}`` (admin guard)
    The body is a JSON object (:mod:`.bodies`). 200 with the adapter's result, to which
    ``adapter_index`` (backend-local) and ``l2_adapter_index`` are added; 400 blank
    backend/operation, unsupported operation, bad ``size`` or an adapter's
    ``ValueError``; 404 ``{"error": "<backend> adapter not found"}`` when
    ``adapter_index`` is out of range for the backend (an unknown backend has none);
    422 ``{"detail": [...]}`` for a body that is not a JSON object or fails the DAX
    schema; 409/501/other statuses from the adapter (``Reconfigurable``'s docstring);
    503 before the engine is ready; 401 without the admin token when one is set.

Decisions where the seed is silent:

* The path is checked (blank → 400) before the body is read; LMCache's FastAPI read
  the body first. Either way a request with both faults is refused.
* An operation the adapter does not list in ``reconfigure_operations()`` is 400
  ``unsupported <backend> reconfigure operation: <op>``, for every backend, like the
  seed's DAX rule (LMCache left non-DAX backends to answer for themselves).
* Backends are matched case-insensitively against adapter type names and listed in
  lower case: the seed lower-cases the path, so a type registered as ``"Knob"`` would
  otherwise be unreachable.
* ``POST /reconfigure/{backend}/status`` is the operation named ``status`` (refused
  as unsupported unless an adapter lists it), not a 405 from the GET route's path.
* An adapter whose ``reconfigure_status()`` raises is listed with
  ``"status": {"error": ...}`` rather than taking the whole listing down.
* Operations run on a worker thread, one at a time per adapter
  (``Reconfigurable.apply_reconfigure``); operations on different adapters run in
  parallel, and status reads never wait for an operation.

Departures from LMCache: no serde unwrapping (lmcache-server refuses serde
configs); the result's ``adapter_index`` is backend-local (the value the caller
sent), with the engine-wide index beside it as ``l2_adapter_index``.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

import msgspec
from litestar import Router, get, post
from litestar.params import FromPath, PathParameter, RawBody

from lmcache_core.api import (
    CacheServer,
    Engine,
    L2Adapter,
    Reconfigurable,
    ReconfigureError,
    RegisterRoutes,
    hookimpl,
    openapi,
    require_admin,
)

from .bodies import GenericBody, Refusal, decode_object, error, normalise, operation_params

logger = logging.getLogger(__name__)

_NOT_BLANK = {"pattern": openapi.NOT_BLANK}
BackendPath = Annotated[str, PathParameter(description="L2 adapter type (stripped, case-insensitive), e.g. dax",
                                           schema_extra=_NOT_BLANK)]
OperationPath = Annotated[str, PathParameter(description="Operation (stripped, case-insensitive), e.g. add",
                                             schema_extra=_NOT_BLANK)]


# -- answers: what the handlers return, and what the OpenAPI document shows ----------------------


class Backends(msgspec.Struct):
    """``GET /reconfigure/backends`` 200."""

    enabled: bool
    num_backends: int
    backends: list[str]


class AdapterStatus(msgspec.Struct):
    """One reconfigurable adapter: ``adapter_index`` is backend-local, ``status`` the adapter's own fields."""

    adapter_index: int
    l2_adapter_index: int
    backend: str
    supported_operations: list[str]
    status: dict[str, Any]


class BackendStatus(msgspec.Struct):
    """``GET /reconfigure/{backend}/status`` 200 (``enabled`` false for a backend with no such adapter)."""

    enabled: bool
    backend: str
    num_adapters: int
    adapters: list[AdapterStatus]


BLANK = openapi.error("`backend` (or `operation`) is blank")
OPERATION_BODY = openapi.json_body(GenericBody, "A JSON object. `dax`: the seed's bodies (`add`: `device_path`, "
                                                "`size`; `remove`: `device_path`, `mode`, `force`; `resize`: "
                                                "`device_path`, `size`, `mode`, `force`), unknown fields refused; "
                                                "any other backend: `adapter_index` plus the adapter's fields.")


def backend_name(adapter: L2Adapter) -> str:
    """The backend string an adapter answers to: its type name, normalised as paths are."""
    return adapter.type_name.strip().lower()


def reconfigurable_adapters(server: CacheServer) -> list[L2Adapter]:
    """The engine's adapters that implement :class:`Reconfigurable`, in engine order."""
    storage = server.storage
    if storage is None:
        return []
    return [a for a in storage.l2_adapters if isinstance(a, Reconfigurable)]


def backend_adapters(server: CacheServer, backend: str) -> list[L2Adapter]:
    """The reconfigurable adapters of ``backend``; position = backend-local ``adapter_index``."""
    return [a for a in reconfigurable_adapters(server) if backend_name(a) == backend]


def _operations(adapter: Reconfigurable) -> list[str]:
    return [str(op).strip().lower() for op in adapter.reconfigure_operations()]


def _status_entry(backend: str, local_index: int, adapter: L2Adapter) -> AdapterStatus:
    assert isinstance(adapter, Reconfigurable)
    try:
        operations = _operations(adapter)
        state = adapter.reconfigure_status()
    except Exception as exc:  # one broken adapter must not hide the others
        logger.exception("reconfigure status of L2 %s #%d failed", adapter.type_name, adapter.index)
        operations, state = [], {"error": f"{type(exc).__name__}: {exc}"}
    return AdapterStatus(adapter_index=local_index, l2_adapter_index=adapter.index, backend=backend,
                         supported_operations=operations, status=state)


def _backend_status(server: CacheServer, backend: str) -> BackendStatus:
    adapters = [_status_entry(backend, i, a) for i, a in enumerate(backend_adapters(server, backend))]
    return BackendStatus(enabled=bool(adapters), backend=backend, num_adapters=len(adapters), adapters=adapters)


def _refusal_of(exc: Exception, adapter: L2Adapter, operation: str) -> Refusal:
    """An adapter's exception as the HTTP answer ``Reconfigurable`` documents."""
    if isinstance(exc, ReconfigureError):
        if 400 <= exc.status_code <= 599 and isinstance(exc.payload, dict):
            return Refusal(exc.status_code, exc.payload)
        logger.error("L2 %s #%d raised ReconfigureError with status %r", adapter.type_name, adapter.index,
                     exc.status_code)
        return error(500, f"reconfigure {operation} failed: invalid error status from the adapter")
    if isinstance(exc, NotImplementedError):
        return error(501, str(exc) or f"{operation} is not implemented by this adapter")
    if isinstance(exc, ValueError):
        return error(400, str(exc) or f"invalid parameters for {operation}")
    if isinstance(exc, RuntimeError):
        return error(409, str(exc) or f"{operation} cannot be done now")
    logger.error("reconfigure %s on L2 %s #%d failed", operation, adapter.type_name, adapter.index, exc_info=exc)
    return error(500, f"reconfigure {operation} failed: {type(exc).__name__}")


def _apply(server: CacheServer, backend: str, operation: str, local_index: int,
           params: dict[str, Any]) -> dict[str, Any]:
    """Run one operation (on a worker thread); :class:`Refusal` for every answer but 200."""
    adapters = backend_adapters(server, backend)
    if not 0 <= local_index < len(adapters):
        raise error(404, f"{backend} adapter not found")
    adapter = adapters[local_index]
    assert isinstance(adapter, Reconfigurable)
    if operation not in _operations(adapter):
        raise error(400, f"unsupported {backend} reconfigure operation: {operation}")
    try:
        result = adapter.apply_reconfigure(operation, params)
    except Exception as exc:
        raise _refusal_of(exc, adapter, operation) from None
    if not isinstance(result, dict):
        logger.error("reconfigure %s on L2 %s #%d returned %s, not a dict", operation, adapter.type_name,
                     adapter.index, type(result).__name__)
        raise error(500, f"reconfigure {operation} failed: the adapter returned no result object")
    logger.info("reconfigured L2 %s #%d: %s %s", adapter.type_name, adapter.index, operation, params)
    return {**result, "adapter_index": local_index, "l2_adapter_index": adapter.index}


def _operation(engine: CacheServer, backend: str, operation: str, body: bytes) -> dict[str, Any]:
    """Check the path and the body, then run the operation; a :class:`Refusal` (an HTTPError) is the answer."""
    name = normalise(backend, "backend")
    op = normalise(operation, "operation")
    index, params = operation_params(name, op, decode_object(body))
    return _apply(engine, name, op, index, params)


@get("/reconfigure/backends", sync_to_thread=False, summary="Backends with a runtime-reconfigurable L2 adapter",
     responses={200: openapi.json(Backends, "sorted backend names")})
def reconfigure_backends(engine: Engine) -> Backends:
    """The sorted, de-duplicated backend names; ``enabled`` false (and no backends) when there are none."""
    names = sorted({backend_name(a) for a in reconfigurable_adapters(engine)})
    return Backends(enabled=bool(names), num_backends=len(names), backends=names)


@get("/reconfigure/{backend:str}/status", sync_to_thread=True,
     summary="Reconfigurable adapters of one backend, with backend-local indexes",
     responses={200: openapi.json(BackendStatus, "the backend's reconfigurable adapters"), 400: BLANK})
def reconfigure_status(engine: Engine, backend: FromPath[BackendPath]) -> BackendStatus:
    """Runs on a worker thread: an adapter's status may probe devices."""
    return _backend_status(engine, normalise(backend, "backend"))


# Positive data: which body an operation takes depends on the path (dax's bodies are strict, other backends'
# free), which one JSON schema cannot say; the conformance test does not expect every body to be accepted.
@post("/reconfigure/{backend:str}/{operation:str}", status_code=200, sync_to_thread=True, guards=[require_admin],
      summary="Apply one reconfiguration operation (Device-DAX: add, remove, resize)",
      operation_class=openapi.operation(body=OPERATION_BODY), responses={
          200: openapi.json(dict[str, Any], "the adapter's result, with `adapter_index` and `l2_adapter_index`"),
          400: openapi.error("blank backend or operation, an operation the adapter does not support, a bad "
                             "`size`, or parameters the adapter refused"),
          404: openapi.error("`adapter_index` is out of range for the backend (an unknown backend has none)"),
          409: openapi.error("the adapter cannot do the operation now"),
          422: openapi.error("the body is not a JSON object, or fails the dax schema", openapi.ValidationErrorBody),
          500: openapi.error("the adapter failed"),
          501: openapi.error("the adapter does not implement the operation")})
def reconfigure_operation(engine: Engine, backend: FromPath[BackendPath], operation: FromPath[OperationPath],
                          body: RawBody) -> dict[str, Any]:
    """Validates the request, then runs the adapter's operation (on a worker thread: it may touch devices)."""
    return _operation(engine, backend, operation, body)


@post("/reconfigure/{backend:str}/status", status_code=200, sync_to_thread=True, guards=[require_admin],
      include_in_schema=False)
def reconfigure_status_operation(engine: Engine, backend: FromPath[BackendPath], body: RawBody) -> dict[str, Any]:
    """The operation named ``status``: the GET route's static segment would otherwise answer 405."""
    return _operation(engine, backend, "status", body)


router = Router(path="/", route_handlers=[reconfigure_backends, reconfigure_status, reconfigure_operation,
                                          reconfigure_status_operation],
                tags=["reconfigure"])
"""Errors in the default ``{"error": ...}`` envelope (the engine's 503 included); a :class:`Refusal` carries its
own body (FastAPI's 422 list, an adapter's payload)."""


@hookimpl
def lmcache_register_routes(register: RegisterRoutes) -> None:
    register(router)
