"""One error mechanism for every route: raise :class:`HTTPError`, get the route group's envelope.

A route group (a ``Router``, or one handler) declares its error envelope once, with
``opt=error_envelope(...)``: :data:`ERROR` ``{"error": message}`` (the seed's, and the
default), :data:`DETAIL` ``{"detail": message}`` (routes LMCache serves through FastAPI),
:data:`TEXT` (``text/plain``, the message itself) or :func:`status_reason` (``{"status":
"<word>", "reason": message}``, ``/healthcheck``). A handler, or anything it calls, raises
``HTTPError(status, message)``; :func:`http_error_handler` (installed on every app) renders
it in the envelope of the route that was called. No plugin builds an error response by hand.

``EngineUnavailable`` (the ``engine`` dependency's 503) is an ``HTTPError`` whose message is
:data:`ENGINE_NOT_INITIALIZED`; a group that answers 503 with a fixed body declares it with
:func:`lmcache_core.http.deps.unavailable_body`, which wins over the envelope for that 503.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import ClientException
from litestar.exceptions.responses import create_exception_response

ENGINE_NOT_INITIALIZED = "engine not initialized"
"""The message of every 503 answered while the engine is not ready."""

ENVELOPE_OPT = "lmcache_error_envelope"
UNAVAILABLE_OPT = "lmcache_unavailable_body"


def safe_text(message: str) -> str:
    """``message`` with what UTF-8 cannot carry (lone surrogates from caller input) escaped, so any answer encodes."""
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class Envelope:
    """How a route group's errors look: ``render(message)`` is the body, ``media_type`` its type.

    ``keys`` names the JSON object's keys (for the OpenAPI document); empty for text.
    """

    name: str
    render: Callable[[str], Any]
    media_type: str = MediaType.JSON.value
    keys: tuple[str, ...] = ()


ERROR = Envelope("error", lambda message: {"error": message}, keys=("error",))
"""``{"error": "<message>"}``: the seed's envelope, and the default of a group that declares none."""
DETAIL = Envelope("detail", lambda message: {"detail": message}, keys=("detail",))
"""``{"detail": "<message>"}``: FastAPI's, for routes LMCache serves through FastAPI."""
TEXT = Envelope("text", lambda message: message, MediaType.TEXT.value)
"""``text/plain``: the message itself."""


def status_reason(status_word: str) -> Envelope:
    """``{"status": status_word, "reason": "<message>"}`` (``/healthcheck``: ``status_word="unhealthy"``)."""
    return Envelope(f"status:{status_word}", lambda message: {"status": status_word, "reason": message},
                    keys=("status", "reason"))


class HTTPError(Exception):
    """An answer other than success: ``status`` and ``message``, rendered in the route group's envelope.

    ``headers`` are added to the answer. ``body``, for the rare answer that is not a message
    (a validation error list, an adapter's own refusal payload), is sent as JSON instead of the
    envelope. Raise it from a handler, a dependency or a guard, or from a function a handler
    calls (on the event loop or in a worker thread).
    """

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None,
                 body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.body = body

    def __repr__(self) -> str:
        return f"HTTPError({self.status}, {self.message!r})"


class EngineUnavailable(HTTPError):
    """503 :data:`ENGINE_NOT_INITIALIZED`: the engine is not ready (before start, after stop)."""

    def __init__(self, message: str = ENGINE_NOT_INITIALIZED) -> None:
        super().__init__(503, message)


def error_envelope(envelope: Envelope) -> dict[str, Any]:
    """``opt`` for a ``Router`` or handler: the envelope its errors are rendered in."""
    return {ENVELOPE_OPT: envelope}


def envelope_of_handler(opt: Mapping[str, Any]) -> Envelope:
    """The envelope a route's ``opt`` declares (:data:`ERROR` when none)."""
    envelope = opt.get(ENVELOPE_OPT, ERROR)
    return envelope if isinstance(envelope, Envelope) else ERROR


def render(exc: HTTPError, opt: Mapping[str, Any]) -> Response[Any]:
    """The answer ``exc`` gets on a route whose ``opt`` is ``opt``."""
    if isinstance(exc, EngineUnavailable) and UNAVAILABLE_OPT in opt and exc.message == ENGINE_NOT_INITIALIZED:
        return Response(opt[UNAVAILABLE_OPT], status_code=exc.status, headers=exc.headers or None)
    if exc.body is not None:
        return Response(exc.body, status_code=exc.status, headers=exc.headers or None)
    envelope = envelope_of_handler(opt)
    return Response(envelope.render(safe_text(exc.message)), status_code=exc.status,
                    media_type=envelope.media_type, headers=exc.headers or None)


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPError) -> Response[Any]:
    """Litestar exception handler: :class:`HTTPError` in the envelope of the route that was called."""
    handler = request.scope.get("route_handler")
    return render(exc, handler.opt if handler is not None else {})


def client_error_message(exc: ClientException) -> str:
    """One line for Litestar's own 400: its detail and, per invalid item, where it is and what is wrong."""
    items = exc.extra if isinstance(exc.extra, list) else [exc.extra] if exc.extra else []
    parts = []
    for item in items:
        if isinstance(item, Mapping):
            where = " ".join(str(getattr(item[k], "value", item[k])) for k in ("source", "key") if item.get(k))
            parts.append(f"{where}: {item.get('message', '')}" if where else str(item.get("message", item)))
        else:
            parts.append(str(item))
    return f"{exc.detail}: {'; '.join(parts)}" if parts else str(exc.detail)


def client_error_handler(request: Request[Any, Any, Any], exc: ClientException) -> Response[Any]:
    """Litestar's own 400 (a parameter or ``data`` body that does not validate, a malformed body) in the
    envelope of the route that was called; other client errors (404, 405, ...) keep Litestar's answer."""
    if exc.status_code != 400:
        return create_exception_response(request, exc)
    handler = request.scope.get("route_handler")
    return render(HTTPError(400, client_error_message(exc), headers=exc.headers), handler.opt if handler else {})


__all__ = [
    "DETAIL", "ENGINE_NOT_INITIALIZED", "ENVELOPE_OPT", "ERROR", "TEXT", "UNAVAILABLE_OPT", "EngineUnavailable",
    "Envelope", "HTTPError", "envelope_of_handler", "error_envelope", "http_error_handler", "render", "safe_text",
    "status_reason", "client_error_handler", "client_error_message",
]
