"""``/reconfigure/{backend}/l2/...`` of LMCache 0.5.6 over the engine's :class:`Reconfigurable` adapters.

What differs from the seed's ``/reconfigure/{backend}/...`` is the path and the 422
bodies: 0.5.6 answers a body that fails the dax schema with pydantic's own error list,
``{"detail": [...]}`` whose ``loc`` has no ``"body"`` prefix (``["device_path"]``),
while a body that is not a JSON object gets FastAPI's (``["body"]``). Everything
else (``{"error": ...}`` for 400/404, the adapter's own statuses) is the seed's, and
the operation runs through the same engine call, ``Reconfigurable.apply_reconfigure``.

Functions here are blocking where they touch adapters and run on a worker thread.
"""

from __future__ import annotations

import logging
from typing import Any

from lmcache_core.api import SIZE_ERROR, CacheServer, L2Adapter, Reconfigurable, ReconfigureError, parse_size

from .validation import REQUIRED, Fields, Invalid, Issue, Loc, as_bool, as_int, as_str, choice, fields_of, issue

logger = logging.getLogger(__name__)

Answer = tuple[int, Any]


class Refusal(Exception):
    """A request answered with ``status`` and ``body`` before or instead of the adapter's result."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body)
        self.answer: Answer = (status, body)


def error(status: int, message: str) -> Refusal:
    return Refusal(status, {"error": message})


def normalise(segment: str, what: str) -> str:
    """A path segment stripped and lower-cased; 400 when nothing is left."""
    value = segment.strip().lower()
    if not value:
        raise error(400, f"{what} must be non-empty")
    return value


def _size(value: Any, loc: Loc, issues: list[Issue]) -> Any:
    """0.5.6's ``StrictInt | str``: a bool or a float fails both members of the union."""
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    issues.append(issue("int_type", (*loc, "int"), "Input should be a valid integer", value))
    issues.append(issue("string_type", (*loc, "str"), "Input should be a valid string", value))
    return None


_DAX_FIELDS: dict[str, Fields] = {
    "add": [("adapter_index", as_int, 0), ("device_path", as_str, REQUIRED), ("size", _size, REQUIRED)],
    "remove": [("adapter_index", as_int, 0), ("device_path", as_str, REQUIRED),
               ("mode", choice(("migrate", "evict", "drain"), "literal_error"), "migrate"),
               ("force", as_bool, False)],
    "resize": [("adapter_index", as_int, 0), ("device_path", as_str, REQUIRED), ("size", _size, REQUIRED),
               ("mode", choice(("migrate", "evict"), "literal_error"), "migrate"), ("force", as_bool, False)],
}


def operation_params(backend: str, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``(adapter_index, params)`` of a request body (a JSON object); :class:`Refusal` or :class:`Invalid`.

    ``dax``: 0.5.6's three bodies, unknown fields refused, ``size`` resolved to
    ``size_bytes``. Any other backend: ``adapter_index`` plus every other field, verbatim.
    """
    issues: list[Issue] = []
    if backend != "dax":
        index = as_int(body.get("adapter_index", 0), ("adapter_index",), issues)
        if issues:
            raise Invalid(issues)
        return index, {k: v for k, v in body.items() if k != "adapter_index"}
    fields = _DAX_FIELDS.get(operation)
    if fields is None:
        raise error(400, f"unsupported dax reconfigure operation: {operation}")
    known = {name for name, _, _ in fields}
    values = fields_of(body, fields, (), issues)
    issues += [issue("extra_forbidden", (k,), "Extra inputs are not permitted", v) for k, v in body.items()
               if k not in known]
    if issues:
        raise Invalid(issues)
    params = {k: v for k, v in values.items() if k not in ("adapter_index", "size")}
    if "size" in values:
        try:
            params["size_bytes"] = parse_size(values["size"])
        except ValueError:
            raise error(400, SIZE_ERROR) from None
    return values["adapter_index"], params


def backend_adapters(server: CacheServer, backend: str) -> list[L2Adapter]:
    """The reconfigurable adapters whose type is ``backend``; position = backend-local ``adapter_index``."""
    found = server.storage.l2_adapters if server.storage is not None else []
    return [a for a in found if isinstance(a, Reconfigurable) and a.type_name.strip().lower() == backend]


def status(server: CacheServer, backend: str) -> dict[str, Any]:
    """``GET /reconfigure/{backend}/l2/status``: an unknown backend is ``enabled: false``, not 404."""
    entries = []
    for local, adapter in enumerate(backend_adapters(server, backend)):
        assert isinstance(adapter, Reconfigurable)
        try:
            operations, state = [op.strip().lower() for op in adapter.reconfigure_operations()], \
                adapter.reconfigure_status()
        except Exception as exc:  # one broken adapter must not hide the others
            logger.exception("reconfigure status of L2 %s #%d failed", adapter.type_name, adapter.index)
            operations, state = [], {"error": f"{type(exc).__name__}: {exc}"}
        entries.append({"backend": backend, "supported_operations": operations, "status": state,
                        "adapter_index": local, "l2_adapter_index": adapter.index})
    return {"enabled": bool(entries), "backend": backend, "num_adapters": len(entries), "adapters": entries}


def _refusal(exc: Exception, operation: str) -> Refusal:
    """An adapter's exception as the answer :class:`Reconfigurable` documents."""
    if isinstance(exc, ReconfigureError) and 400 <= exc.status_code <= 599 and isinstance(exc.payload, dict):
        return Refusal(exc.status_code, exc.payload)
    for kind, status in ((NotImplementedError, 501), (ValueError, 400), (RuntimeError, 409)):
        if isinstance(exc, kind) and not isinstance(exc, ReconfigureError):
            return error(status, str(exc) or f"{operation} refused")
    logger.error("reconfigure %s failed", operation, exc_info=exc)
    return error(500, f"reconfigure {operation} failed: {type(exc).__name__}")


def apply(server: CacheServer, backend: str, operation: str, local_index: int, params: dict[str, Any]) -> Answer:
    """``POST /reconfigure/{backend}/l2/{operation}`` after validation (on a worker thread)."""
    found = backend_adapters(server, backend)
    if not 0 <= local_index < len(found):
        return error(404, f"{backend} adapter not found").answer
    adapter = found[local_index]
    assert isinstance(adapter, Reconfigurable)
    if operation not in [op.strip().lower() for op in adapter.reconfigure_operations()]:
        return error(400, f"unsupported {backend} reconfigure operation: {operation}").answer
    try:
        result = adapter.apply_reconfigure(operation, params)
    except Exception as exc:
        return _refusal(exc, operation).answer
    if not isinstance(result, dict):
        return error(500, f"reconfigure {operation} failed: the adapter returned no result object").answer
    logger.info("reconfigured L2 %s #%d: %s %s", adapter.type_name, adapter.index, operation, params)
    return 200, {**result, "adapter_index": local_index, "l2_adapter_index": adapter.index}
