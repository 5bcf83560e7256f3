"""Bounds on an HTTP request's head (request line and headers), for uvicorn.

uvicorn's default parser (httptools) accumulates the URL and the headers of a
request without any limit: two connections streaming one endless header kept
the event loop busy and grew the server by hundreds of MB (issue 13, #9), long
enough to fail a liveness probe. :func:`uvicorn_http_options` gives uvicorn a
protocol that closes such a connection (400, as for any malformed request)
once its head passes :data:`MAX_HEAD_BYTES`; without httptools, h11 gets the
same bound through ``h11_max_incomplete_event_size``. 64 KiB is four times
what h11 allows by default and far above what a browser or ``curl`` sends.
"""

from __future__ import annotations

from typing import Any

MAX_HEAD_BYTES = 64 * 1024
"""Most bytes of request line plus headers one request may carry."""


def _bounded_httptools() -> Any:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol with a bound on the request head.

        httptools buffers a header until it is complete before any callback sees
        it, so the head is measured where the bytes arrive: every chunk received
        while the current request's head is not complete counts against the bound
        (a chunk in which the head completes does not, so a body arriving with its
        head is never counted).
        """

        max_head_bytes = MAX_HEAD_BYTES
        _head_bytes = 0
        _head_done = False

        def data_received(self, data: bytes) -> None:
            in_head = not self._head_done
            super().data_received(data)
            if not in_head or self._head_done or self.transport.is_closing():
                return
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self.send_400_response("Request head too large.")

        def on_headers_complete(self) -> None:
            self._head_done = True
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._head_done = False  # the next request on this connection starts with its head
            self._head_bytes = 0
            super().on_message_complete()

    return BoundedHttpToolsProtocol


def uvicorn_http_options(max_head_bytes: int = MAX_HEAD_BYTES) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments that bound the request head to ``max_head_bytes``."""
    try:
        protocol = _bounded_httptools()
    except ImportError:  # no httptools: h11 has its own bound
        return {"http": "h11", "h11_max_incomplete_event_size": max_head_bytes}
    protocol.max_head_bytes = max_head_bytes
    return {"http": protocol, "h11_max_incomplete_event_size": max_head_bytes}
