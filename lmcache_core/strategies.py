"""Hypothesis strategies for fuzzing route plugins over real HTTP (needs ``hypothesis``, a test dependency).

``http_requests(paths)`` draws a request dict ``{"method", "path", "params", "headers",
"body"}`` to send with httpx::

    @given(req=http_requests(["/", "/healthcheck"]))
    def test_no_5xx(url, req):
        resp = httpx.request(req["method"], url + req["path"], params=req["params"],
                             headers=req["headers"], content=req["body"])
        assert resp.status_code < 500
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

# h11 (httpx's HTTP/1.1) refuses leading/trailing whitespace in a header value before anything is
# sent, so values are stripped.
HEADER_VALUES = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ",
                        max_size=60).map(str.strip)
HEADER_NAMES = st.one_of(
    st.sampled_from(["Accept", "Content-Type", "Authorization", "Accept-Encoding", "Cookie", "User-Agent",
                     "X-Forwarded-For", "If-None-Match", "Range", "Origin"]),
    st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True),
)
METHODS = ("GET", "GET", "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def http_requests(paths: Sequence[str] | st.SearchStrategy[str], *, methods: Sequence[str] = METHODS,
                  body: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Requests to ``paths`` (a list, or a strategy of paths) with arbitrary query, headers and body."""
    return st.fixed_dictionaries({
        "method": st.sampled_from(list(methods)),
        "path": paths if isinstance(paths, st.SearchStrategy) else st.sampled_from(list(paths)),
        "params": st.dictionaries(st.text(max_size=12), st.text(max_size=24), max_size=4),
        "headers": st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4),
        "body": body if body is not None else st.binary(max_size=256),
    })
