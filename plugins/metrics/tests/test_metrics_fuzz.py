"""Hypothesis over real HTTP: /metrics and /metrics/reset answer every request without a 5xx."""

from __future__ import annotations

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lmcache_plugin_metrics.plugin as metrics_plugin
from lmcache_core.strategies import http_requests

REQUESTS = http_requests(["/metrics", "/metrics/reset", "/metrics/", "/metrics/reset/"],
                         body=st.one_of(st.none(), st.binary(max_size=256)))


def test_no_request_to_the_metrics_routes_gets_a_5xx(lmcache_server_factory, lmcache_http):
    url = lmcache_http(lmcache_server_factory([("metrics", metrics_plugin)]))
    with httpx.Client(base_url=url, timeout=30) as client:

        @settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(REQUESTS)
        def check(req):
            resp = client.request(req["method"], req["path"], params=req["params"], headers=req["headers"],
                                  content=req["body"])
            assert resp.status_code < 500, (req, resp.status_code, resp.text[:200])
            if req["method"] == "GET" and req["path"] == "/metrics":
                assert resp.status_code == 200
                assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
            if req["method"] == "POST" and req["path"] == "/metrics/reset":
                assert (resp.status_code, resp.text) == (200, "ok")

        check()
