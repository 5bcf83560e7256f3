"""Hypothesis over real HTTP, one server per test function: no diagnostic route answers a 5xx, except the
seed's documented 500 of a failing ``/run_script`` script. Content types and envelopes hold for every answer."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
SETTINGS = settings(max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Anything a URL can carry once percent-encoded (lone surrogates cannot be encoded at all).
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_level = st.one_of(st.sampled_from(["DEBUG", "info", "Warning", "ERROR", "critical", "NOTSET", "fatal", "WARN"]),
                   _text)
_bool = st.one_of(st.sampled_from(["true", "false", "1", "0", "yes", "no", "on", "off", "TRUE", ""]), _text)
_raw_query = st.text(max_size=60)


def _optional(**strategies: Any) -> Any:
    return st.fixed_dictionaries({}, optional=strategies)


def raw_get(http: httpx.Client, path: str, raw: str) -> httpx.Response:
    """A GET whose query string is ``raw`` percent-encoded except for ``=&%+`` (so odd escapes reach the server)."""
    return http.get(f"{path}?{urllib.parse.quote(raw, safe='=&%+')}")


@pytest.fixture(autouse=True)
def _restore(restore_logging: None) -> None:
    """The set mode creates loggers and changes levels; put everything back."""


def test_loglevel_never_5xx(diag):
    d = diag()
    seen: set[int] = set()

    @SETTINGS
    @given(params=_optional(logger_name=st.one_of(st.just("diagfuzz.target"), _text), level=_level),
           raw=_raw_query, use_raw=st.booleans())
    @example(params={"logger_name": "diagfuzz.target", "level": "DEBUG"}, raw="", use_raw=False)
    @example(params={"logger_name": "diagfuzz.target", "level": "nope"}, raw="", use_raw=False)
    def run(params: dict[str, str], raw: str, use_raw: bool) -> None:
        resp = raw_get(d.http, "/loglevel", raw) if use_raw else d.get("/loglevel", params=params)
        seen.add(resp.status_code)
        assert resp.status_code in (200, 400), resp.text
        if resp.content == b"null":
            assert resp.headers["content-type"] == JSON
        else:
            assert resp.headers["content-type"] == TEXT
        if resp.status_code == 400:
            assert resp.text.startswith("Invalid log level: ")

    run()
    assert seen == {200, 400}


def test_threads_never_5xx(diag):
    d = diag()

    @SETTINGS
    @given(params=_optional(name=_text, thread_id=st.one_of(st.integers(-5, 2**70).map(str), _text)),
           raw=_raw_query, use_raw=st.booleans())
    def run(params: dict[str, str], raw: str, use_raw: bool) -> None:
        resp = raw_get(d.http, "/threads", raw) if use_raw else d.get("/threads", params=params)
        assert resp.status_code in (200, 400), resp.text
        assert resp.headers["content-type"] == TEXT
        if resp.status_code == 200:
            assert "=== Thread Summary ===\nTotal threads: " in resp.text
        else:
            assert resp.text.startswith("Invalid thread_id: ")

    run()


def test_periodic_threads_never_5xx(diag):
    d = diag()
    d.server.threads.create("diag fuzz ü/%", 5.0, lambda: {"x": object()}, start=False)
    seen: set[int] = set()

    def check(resp: httpx.Response, allowed: tuple[int, ...]) -> None:
        seen.add(resp.status_code)
        assert resp.status_code in allowed, resp.text
        assert resp.headers["content-type"] == JSON
        body = resp.json()
        if resp.status_code != 200:
            assert list(body) == ["error"] and isinstance(body["error"], str)

    @SETTINGS
    @given(params=_optional(level=st.one_of(st.sampled_from(["critical", "HIGH", "medium", "low"]), _text),
                            running_only=_bool, active_only=_bool),
           name=st.one_of(st.sampled_from(["SessionManager-cleanup-thread", "diag fuzz ü/%"]), _text),
           raw=_raw_query, use_raw=st.booleans())
    @example(params={"level": "high"}, name="SessionManager-cleanup-thread", raw="", use_raw=False)
    @example(params={"level": "bogus"}, name="nope", raw="", use_raw=False)
    def run(params: dict[str, str], name: str, raw: str, use_raw: bool) -> None:
        resp = raw_get(d.http, "/periodic-threads", raw) if use_raw else d.get("/periodic-threads", params=params)
        check(resp, (200, 400))
        if resp.status_code == 200:
            assert list(resp.json()) == ["summary", "threads"]
        # Every name, "/" included, reaches the handler: the body is this route's envelope, not Litestar's.
        check(d.get(f"/periodic-threads/{urllib.parse.quote(name, safe='')}"), (200, 404))
        health = d.get("/periodic-threads-health", params=params)
        check(health, (200,))
        assert list(health.json()) == ["healthy", "unhealthy_count", "unhealthy_threads"]

    run()
    assert {200, 400, 404} <= seen


def test_env_never_5xx(diag):
    d = diag()

    @SETTINGS
    @given(raw=_raw_query)
    def run(raw: str) -> None:
        resp = raw_get(d.http, "/env", raw)
        assert resp.status_code == 200
        assert resp.headers["content-type"] == TEXT
        assert isinstance(json.loads(resp.text), dict)

    run()


_source = st.one_of(st.binary(max_size=200), _text.map(str.encode),
                    st.sampled_from([b"result = 1", b"import json\nresult = json.dumps([1])", b"import os", b"x = (",
                                     b"raise ValueError('x')", b"print('hi')", b"result = server.ready"]))


def test_run_script_never_5xx_except_the_documented_500(diag):
    d = diag("--run-script-api-enabled", "--script-allowed-imports", "json", "--run-script-timeout-seconds", "2")
    seen: set[int] = set()

    @SETTINGS
    @given(source=_source, field=st.one_of(st.just("script"), _text.filter(bool)),
           filename=st.one_of(st.just("s.py"), _text.filter(bool)),
           as_file=st.booleans(), content_type=st.one_of(st.none(), st.sampled_from(
               ["application/json", "text/plain", "multipart/form-data", "multipart/form-data; boundary=x",
                "application/x-www-form-urlencoded"])))
    @example(source=b"result = 1", field="script", filename="s.py", as_file=True, content_type=None)
    @example(source=b"x = (", field="script", filename="s.py", as_file=True, content_type=None)
    @example(source=b"result = 1", field="other", filename="s.py", as_file=True, content_type=None)
    def run(source: bytes, field: str, filename: str, as_file: bool, content_type: str | None) -> None:
        if content_type is not None:
            resp = d.post("/run_script", content=source, headers={"Content-Type": content_type})
        elif as_file:
            resp = d.post("/run_script", files={field: (filename, source)})
        else:
            resp = d.post("/run_script", data={field: source.decode("utf-8", "replace")})
        seen.add(resp.status_code)
        assert resp.status_code in (200, 400, 500), resp.text
        assert resp.headers["content-type"] == TEXT
        if resp.status_code == 400:
            assert resp.text == "No script file provided"
        if resp.status_code == 500:
            assert resp.text.startswith("Error executing script: ")

    run()
    assert seen == {200, 400, 500}


def test_run_script_disabled_never_runs_and_never_5xx(diag):
    d = diag()

    @SETTINGS
    @given(source=_source, field=st.one_of(st.just("script"), _text.filter(bool)))
    def run(source: bytes, field: str) -> None:
        resp = d.post("/run_script", files={field: ("s.py", source)})
        assert resp.status_code == 404 and resp.headers["content-type"] == TEXT

    run()


def test_unknown_methods_are_405_not_5xx(diag):
    d = diag()
    for method, path in (("POST", "/loglevel"), ("DELETE", "/threads"), ("PUT", "/periodic-threads"),
                         ("POST", "/periodic-threads/x"), ("POST", "/periodic-threads-health"), ("POST", "/env"),
                         ("GET", "/run_script")):
        assert d.http.request(method, path).status_code == 405, (method, path)
