"""Request bodies of ``POST /reconfigure/{backend}/{operation}``: JSON → ``(adapter_index, params)``.

Pure functions, no engine: what the seed says a body may hold, checked before any
adapter is touched, so a refused request changes nothing.

* Every body is a JSON object (else 422).
* ``dax``: the seed's bodies, unknown fields refused (422), ``size`` through
  :func:`lmcache_core.units.parse_size` (400), an operation other than
  ``add``/``remove``/``resize`` refused (400) before the body is looked at.
* Any other backend: ``adapter_index`` (an integer, default 0) plus any other
  fields, forwarded verbatim.

422 bodies copy the envelope FastAPI gives LMCache's clients:
``{"detail": [{"type", "loc", "msg"}]}`` with ``loc`` starting at ``"body"``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from lmcache_core.api import SIZE_ERROR, HTTPError, parse_size


class Refusal(HTTPError):
    """A request answered with ``status`` and JSON ``body`` instead of reaching an adapter (an
    :class:`~lmcache_core.api.HTTPError`: raised anywhere in a handler, it is the answer)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, str(body.get("error", "")) if isinstance(body, dict) else "", body=body)


def error(status: int, message: str) -> Refusal:
    """The seed's ``{"error": message}`` envelope."""
    return Refusal(status, {"error": message})


def invalid(kind: str, loc: list[Any], msg: str) -> Refusal:
    """A 422 in FastAPI's validation envelope (one error)."""
    return Refusal(422, {"detail": [{"type": kind, "loc": ["body", *loc], "msg": msg}]})


def normalise(segment: str, what: str) -> str:
    """A path segment stripped and lower-cased (the seed); 400 when nothing is left."""
    value = segment.strip().lower()
    if not value:
        raise error(400, f"{what} must be non-empty")
    return value


class DaxAdd(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /reconfigure/dax/add``: map a new device."""

    adapter_index: int = 0
    device_path: str
    size: int | str


class DaxRemove(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /reconfigure/dax/remove``: unmap a device (``migrate`` its objects, ``evict`` them, or ``drain``)."""

    adapter_index: int = 0
    device_path: str
    mode: Literal["migrate", "evict", "drain"] = "migrate"
    force: bool = False


class DaxResize(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /reconfigure/dax/resize``: grow or shrink a mapped device."""

    adapter_index: int = 0
    device_path: str
    size: int | str
    mode: Literal["migrate", "evict"] = "migrate"
    force: bool = False


DAX_BODIES: dict[str, type[msgspec.Struct]] = {"add": DaxAdd, "remove": DaxRemove, "resize": DaxResize}


class GenericBody(msgspec.Struct, kw_only=True):
    """Any backend but ``dax``: ``adapter_index`` is the only field the route reads."""

    adapter_index: int = 0


_MISSING = re.compile(r"Object missing required field `([^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")
_AT = re.compile(r"^(.*) - at `\$(.*)`$", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _loc(path: str) -> list[Any]:
    """msgspec's ``$.a[0].b`` → ``["a", 0, "b"]``."""
    return [int(index) if index else name for name, index in _PATH_PART.findall(path)]


def _validation_refusal(exc: msgspec.ValidationError) -> Refusal:
    """msgspec's one-line error in FastAPI's envelope."""
    text = str(exc)
    where: list[Any] = []
    at = _AT.match(text)
    if at:
        text, where = at.group(1), _loc(at.group(2))
    if m := _MISSING.fullmatch(text):
        return invalid("missing", [*where, m.group(1)], "Field required")
    if m := _UNKNOWN.fullmatch(text):
        return invalid("extra_forbidden", [*where, m.group(1)], "Extra inputs are not permitted")
    return invalid("value_error", where, text)


def decode_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 422 for no body, malformed JSON or another JSON type."""
    if not raw.strip():
        raise invalid("missing", [], "Field required")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise invalid("json_invalid", [], f"JSON decode error: {exc}") from None
    except RecursionError:
        raise invalid("json_invalid", [], "JSON decode error: nested too deeply") from None
    if not isinstance(body, dict):
        raise invalid("dict_type", [], "Input should be a valid dictionary")
    return body


def operation_params(backend: str, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """``(backend-local adapter_index, params for the adapter)``; :class:`Refusal` for a bad request."""
    if backend == "dax":
        return _dax_params(operation, body)
    try:
        generic = msgspec.convert(body, GenericBody)
    except msgspec.ValidationError as exc:
        raise _validation_refusal(exc) from None
    return generic.adapter_index, {k: v for k, v in body.items() if k != "adapter_index"}


def _dax_params(operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    schema = DAX_BODIES.get(operation)
    if schema is None:
        raise error(400, f"unsupported dax reconfigure operation: {operation}")
    try:
        parsed: Any = msgspec.convert(body, schema)
    except msgspec.ValidationError as exc:
        raise _validation_refusal(exc) from None
    params: dict[str, Any] = {"device_path": parsed.device_path}
    if hasattr(parsed, "size"):
        try:
            params["size_bytes"] = parse_size(parsed.size)
        except ValueError as exc:
            raise error(400, str(exc)) from None
    if hasattr(parsed, "mode"):
        params["mode"] = parsed.mode
        params["force"] = parsed.force
    return parsed.adapter_index, params


__all__ = ["DAX_BODIES", "Refusal", "SIZE_ERROR", "decode_object", "error", "invalid", "normalise",
           "operation_params"]
