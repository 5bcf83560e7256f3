"""Hypothesis: the ``--dashboard-peer`` pattern accepts exactly usable base URLs, and no request to
the dashboard's routes (over real HTTP, a live server) gets a 5xx."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
import msgspec
from dash_support import make_live
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lmcache_core.strategies import http_requests
from lmcache_plugin_dashboard.fleet import PEER_URL, normalized_peer_url

PeerUrl = Annotated[str, PEER_URL]
HOSTS = st.one_of(st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
                  st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda a: f"[{a}]"))
PATHS = st.from_regex(r"(/[A-Za-z0-9._~-]{0,8}){0,3}/?", fullmatch=True)
URLISH = st.text(alphabet="htps:/[]@?#.,0123456789abcxyz-_ %", max_size=40)


def _accepted(text: str) -> bool:
    try:
        msgspec.convert(text, PeerUrl)
    except msgspec.ValidationError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(scheme=st.sampled_from(["http", "https"]), host=HOSTS, port=st.one_of(st.none(), st.integers(1, 65535)),
       path=PATHS)
def test_every_base_url_is_accepted(scheme: str, host: str, port: int | None, path: str) -> None:
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"
    assert _accepted(url), url
    parts = urlsplit(normalized_peer_url(url))
    assert parts.port == port and parts.hostname


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(URLISH, st.builds(lambda s, r: s + r, st.sampled_from(["http://", "https://"]), URLISH)))
@example(text="http://[0]")  # urlsplit: brackets hold an IPv6 address (hypothesis found this one)
@example(text="http://[1.2.3.4]")
def test_what_is_accepted_is_a_usable_base_url(text: str) -> None:
    if not _accepted(text):
        return
    parts = urlsplit(text)  # never raises for an accepted URL, its port included
    assert parts.scheme in ("http", "https") and parts.hostname
    assert parts.port is None or 1 <= parts.port <= 65535
    assert not (parts.query or parts.fragment or parts.username or parts.password)


@settings(max_examples=200, deadline=None)
@given(port=st.integers(65536, 10**6))
def test_ports_out_of_range_are_refused(port: int) -> None:
    assert not _accepted(f"http://host:{port}")
    assert not _accepted("http://host:0")


REQUESTS = http_requests(["/dashboard", "/dashboard/", "/dashboard/data", "/dashboard/fleet",
                          "/dashboard/dashboard.js", "/dashboard/dashboard.css", "/dashboard/x"],
                         body=st.one_of(st.none(), st.binary(max_size=128)))


def test_no_request_to_the_dashboard_gets_a_5xx(lmcache_server_factory: Any, lmcache_http: Any) -> None:
    server, _ = make_live(lmcache_server_factory, argv=["--dashboard-peer", "http://127.0.0.1:9",
                                                        "--dashboard-peer-timeout-seconds", "0.2"])
    url = lmcache_http(server)
    with httpx.Client(base_url=url, timeout=30) as client:

        @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(REQUESTS)
        def check(req: dict[str, Any]) -> None:
            resp = client.request(req["method"], req["path"], params=req["params"], headers=req["headers"],
                                  content=req["body"])
            assert resp.status_code < 500, (req, resp.status_code, resp.text[:200])
            if req["method"] == "GET" and req["path"] in ("/dashboard/data", "/dashboard/fleet"):
                assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")

        check()
