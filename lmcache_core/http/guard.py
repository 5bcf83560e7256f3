"""The admin-token guard: a core facility that route plugins opt into.

With ``--http-admin-token`` (env ``LMCACHE_HTTP_ADMIN_TOKEN``) set, a guarded
route answers 401 ``{"error": "admin token required"}`` (with
``WWW-Authenticate: Bearer``) unless the request carries
``Authorization: Bearer <token>``. Without a token configured every route is
open, as in LMCache. The comparison is constant-time.

A plugin opts a handler or a whole ``Router`` in with ``guards=[require_admin]``.
Guard every route that changes state (clear, delete, reconfigure, quota
writes, metric resets, log levels) and every diagnostic that reveals process
internals (threads, environment, scripts); leave liveness, readiness,
``/metrics`` and plain reads open, so probes and scrapers need no secret.
"""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

UNAUTHORIZED_BODY = {"error": "admin token required"}


class AdminTokenRequired(Exception):
    """Raised by :func:`require_admin`; answered 401 by :func:`admin_token_required_handler`."""


def configured_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The admin token of the server behind this app, or None when no token is configured."""
    server = getattr(connection.app.state, "server", None)
    http = server.configs.get("http") if server is not None else None
    token = getattr(http, "http_admin_token", None)
    return token or None


def has_admin_token(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """True when no token is configured, or the request carries ``Authorization: Bearer <token>``."""
    token = configured_token(connection)
    if token is None:
        return True
    scheme, _, presented = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), token.encode())


def require_admin(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Litestar guard: refuse the request (401) unless :func:`has_admin_token` holds."""
    if not has_admin_token(connection):
        raise AdminTokenRequired()


def admin_token_required_handler(request: Request[Any, Any, Any], exc: AdminTokenRequired) -> Response[Any]:
    """401 with the ``error`` envelope and a ``WWW-Authenticate: Bearer`` challenge."""
    return Response(UNAUTHORIZED_BODY, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="lmcache-server"'})
