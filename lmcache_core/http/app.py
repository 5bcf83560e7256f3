"""The Litestar application factory.

Routes join the app in exactly one place: :class:`RoutesInitPlugin`, a core
``InitPlugin`` that gathers every plugin's handlers from the
``lmcache_register_routes`` hook in ``on_app_init``. Nothing registers routes
later. The :class:`~lmcache_core.server.CacheServer` lives on app state and
reaches handlers through the ``server`` / ``engine`` dependencies. Errors are
:class:`~lmcache_core.http.errors.HTTPError` s, rendered by one exception handler in
the envelope each route group declares. As each route is registered, the plugin adds
the responses every route group shares (the admin guard's 401, the ``engine`` dependency's 503) to the OpenAPI document
(:func:`lmcache_core.http.openapi.document_handler`).
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar, Request, Response
from litestar.config.app import AppConfig
from litestar.exceptions import ClientException
from litestar.openapi import OpenAPIConfig
from litestar.plugins import InitPlugin, ReceiveRoutePlugin
from litestar.routes import BaseRoute, HTTPRoute
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from lmcache_core.http.deps import DEPENDENCIES
from lmcache_core.http.errors import HTTPError, client_error_handler, http_error_handler
from lmcache_core.http.guard import AdminTokenRequired, admin_token_required_handler
from lmcache_core.http.metrics import http_metrics_middleware
from lmcache_core.http.openapi import StrictStructSchemaPlugin, document_handler
from lmcache_core.server import CacheServer

logger = logging.getLogger(__name__)


class RoutesInitPlugin(InitPlugin, ReceiveRoutePlugin):
    """Adds every route plugin's handlers, the shared dependencies and the server to the app."""

    def __init__(self, server: CacheServer) -> None:
        self.server = server

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.extend(self.server.plugin_host.registrations.routes)
        app_config.dependencies.update(DEPENDENCIES)
        app_config.exception_handlers[HTTPError] = http_error_handler
        app_config.exception_handlers[ClientException] = client_error_handler  # Litestar's 400: the group's envelope
        app_config.exception_handlers[AdminTokenRequired] = admin_token_required_handler
        if not self.server.configs["observability"].disable_metrics:  # type: ignore[attr-defined]
            app_config.middleware.append(http_metrics_middleware)
        app_config.state["server"] = self.server
        return app_config

    def receive_route(self, route: BaseRoute) -> None:
        # Called once a route's handlers are registered (guards and opt resolved); documents only.
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                document_handler(handler, route.path)


def _internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    # Only unexpected exceptions get here (keyed on 500); 4xx keep Litestar's own answer.
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    return Response({"error": f"internal error: {type(exc).__name__}"}, status_code=HTTP_500_INTERNAL_SERVER_ERROR)


def create_app(server: CacheServer, *, debug: bool = False) -> Litestar:
    """Build the HTTP app for ``server``; OpenAPI is served at ``/schema``."""
    return Litestar(
        plugins=[RoutesInitPlugin(server), StrictStructSchemaPlugin()],
        exception_handlers={HTTP_500_INTERNAL_SERVER_ERROR: _internal_error_handler},
        openapi_config=OpenAPIConfig(title="lmcache-server", version=server.version, path="/schema"),
        debug=debug,
        logging_config=None,  # logging belongs to the launcher, not the app
    )
