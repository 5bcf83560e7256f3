"""Core HTTP facilities over real HTTP: the admin-token guard, request metrics, build info."""

from __future__ import annotations

import types
from typing import Any

import httpx
import pytest
from litestar import Router, get, post
from litestar.params import FromPath
from prometheus_client import REGISTRY

from lmcache_core import buildinfo, hookimpl
from lmcache_core.cli import build_parser
from lmcache_core.http.guard import require_admin
from lmcache_core.plugins import PluginHost


@get("/guarded-read", sync_to_thread=False)
def open_read() -> dict[str, str]:
    return {"read": "ok"}


@post("/guarded-write", sync_to_thread=False, guards=[require_admin])
def guarded_write() -> dict[str, str]:
    return {"written": "ok"}


@get("/guarded-items/{item:str}", sync_to_thread=False)
def item(item: FromPath[str]) -> dict[str, str]:
    return {"item": item}


def _routes_plugin() -> Any:
    mod = types.ModuleType("guard_fixture")

    @hookimpl
    def lmcache_register_routes(register: Any) -> None:
        register(Router(path="/", route_handlers=[open_read, guarded_write, item]))

    mod.lmcache_register_routes = lmcache_register_routes  # type: ignore[attr-defined]
    return mod


def _options(*argv: str) -> Any:
    return build_parser(PluginHost(load_entry_points=False), environ={}).parse_args(list(argv))


def _serve(lmcache_server_factory: Any, lmcache_http: Any, *argv: str) -> str:
    server = lmcache_server_factory([("guard_fixture", _routes_plugin())], options=_options(*argv), start=False)
    return lmcache_http(server)


def test_without_a_token_every_route_is_open(lmcache_server_factory, lmcache_http):
    url = _serve(lmcache_server_factory, lmcache_http)
    assert httpx.post(f"{url}/guarded-write").json() == {"written": "ok"}
    assert httpx.post(f"{url}/guarded-write", headers={"Authorization": "Bearer anything"}).status_code == 201


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Bearer s3cret-but-longer", "Basic s3cret", "s3cret",
                                    "Bearer", "Bearer s3cret extra", "Bearer s3cre"])
def test_with_a_token_a_guarded_route_refuses_a_missing_or_wrong_one(lmcache_server_factory, lmcache_http, header):
    url = _serve(lmcache_server_factory, lmcache_http, "--http-admin-token", "s3cret")
    headers = {} if header is None else {"Authorization": header}
    resp = httpx.post(f"{url}/guarded-write", headers=headers)
    assert resp.status_code == 401
    assert resp.json() == {"error": "admin token required"}
    assert resp.headers["www-authenticate"].startswith("Bearer")


def test_with_a_token_a_guarded_route_serves_the_right_one_and_reads_stay_open(lmcache_server_factory, lmcache_http):
    url = _serve(lmcache_server_factory, lmcache_http, "--http-admin-token", "s3cret")
    assert httpx.post(f"{url}/guarded-write", headers={"Authorization": "Bearer s3cret"}).json() == {"written": "ok"}
    assert httpx.post(f"{url}/guarded-write", headers={"Authorization": "bearer s3cret"}).status_code == 201
    assert httpx.get(f"{url}/guarded-read").json() == {"read": "ok"}
    assert httpx.get(f"{url}/plugins").status_code == 200


def test_the_token_comes_from_the_environment_and_is_masked_in_configs():
    from lmcache_core.config import masked

    options = build_parser(PluginHost(load_entry_points=False),
                           environ={"LMCACHE_HTTP_ADMIN_TOKEN": "from-env"}).parse_args([])
    assert options.http_admin_token == "from-env"
    from lmcache_core.cli import build_configs

    assert masked(build_configs(options)["http"])["http_admin_token"] == "***"


def _count(method: str, route: str, status: str) -> float:
    value = REGISTRY.get_sample_value("lmcache_mp_http_requests_total",
                                      {"method": method, "route": route, "status": status})
    return value or 0.0


def test_requests_are_counted_by_route_template_not_raw_path(lmcache_server_factory, lmcache_http):
    url = _serve(lmcache_server_factory, lmcache_http, "--http-admin-token", "s3cret")
    template = "/guarded-items/{item}"
    before_ok, before_401 = _count("GET", template, "200"), _count("POST", "/guarded-write", "401")
    for name in ("a", "b", "c"):
        assert httpx.get(f"{url}/guarded-items/{name}").status_code == 200
    assert httpx.post(f"{url}/guarded-write").status_code == 401
    assert _count("GET", template, "200") == before_ok + 3
    assert _count("POST", "/guarded-write", "401") == before_401 + 1
    assert REGISTRY.get_sample_value("lmcache_mp_http_requests_total",
                                     {"method": "GET", "route": "/guarded-items/a", "status": "200"}) is None
    assert REGISTRY.get_sample_value("lmcache_mp_http_request_duration_seconds_count",
                                     {"method": "GET", "route": template}) >= 3


def test_disable_metrics_turns_request_metrics_off(lmcache_server_factory, lmcache_http):
    url = _serve(lmcache_server_factory, lmcache_http, "--disable-metrics")
    before = _count("GET", "/guarded-read", "200")
    assert httpx.get(f"{url}/guarded-read").status_code == 200
    assert _count("GET", "/guarded-read", "200") == before


def test_build_info_reports_the_baked_commit_and_seed_fallbacks(monkeypatch):
    commit = buildinfo.commit_id()
    assert commit == "" or (len(commit) == 40 and int(commit, 16) >= 0)
    assert buildinfo.full_version() == f"{buildinfo.package_version() or 'NA'}-{commit or 'NA'}"
    monkeypatch.setitem(__import__("sys").modules, "lmcache_core._build_info", None)  # as if never generated
    monkeypatch.setattr(buildinfo, "__version__", "0.0.0")
    assert (buildinfo.commit_id(), buildinfo.package_version(), buildinfo.full_version()) == ("", "", "NA-NA")


def test_an_editable_install_reports_its_source_trees_head(monkeypatch, tmp_path):
    import subprocess
    import sys
    import types

    repo = tmp_path / "tree"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    fake = types.ModuleType("lmcache_core._build_info")
    fake.COMMIT_ID = "b" * 40
    fake.EDITABLE_SOURCE_TREE = str(repo)
    monkeypatch.setitem(sys.modules, "lmcache_core._build_info", fake)
    buildinfo._head_of.cache_clear()
    assert buildinfo.commit_id() == head != "b" * 40
    fake.EDITABLE_SOURCE_TREE = str(tmp_path / "not-a-repo")
    assert buildinfo.commit_id() == "b" * 40  # the tree is gone: the commit baked at install
    fake.EDITABLE_SOURCE_TREE = None
    assert buildinfo.commit_id() == "b" * 40  # a wheel: what was baked
    buildinfo._head_of.cache_clear()
