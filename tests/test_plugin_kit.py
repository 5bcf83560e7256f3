"""The third-party plugin author's kit (issue 16): options without internals, a repeated list flag,
failures that name the plugin, the read-only engine view and per-plugin state."""

from __future__ import annotations

import msgspec

from lmcache_core import api
from lmcache_core.testing import parse_options


class TagsConfig(msgspec.Struct, kw_only=True):
    tags: list[str] = []


class TagsPlugin:
    @staticmethod
    @api.hookimpl
    def lmcache_register_config(register: api.RegisterConfig) -> None:
        register("tagger", TagsConfig, prefix="tagger-")


def test_a_repeated_list_flag_appends_and_the_first_replaces_the_default():
    plugins = [("tagger", TagsPlugin())]
    assert parse_options(plugins, []).tagger_tags == []
    assert parse_options(plugins, ["--tagger-tags", "a", "--tagger-tags", "b,c", "d"]).tagger_tags == ["a", "b", "c", "d"]
    from_env = {"LMCACHE_TAGGER_TAGS": "e"}
    assert parse_options(plugins, [], from_env).tagger_tags == ["e"]
    assert parse_options(plugins, ["--tagger-tags", "a", "--tagger-tags", "b"], from_env).tagger_tags == ["a", "b"]


# -- failures that name the plugin ---------------------------------------------------------------

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from lmcache_core.testing import check_openapi, free_port, write_dist  # noqa: E402
from support import subprocess_env  # noqa: E402

FAILING_ADAPTER = '''
import msgspec
from lmcache_core.api import L2Adapter, L2AdapterConfig, hookimpl


class FlakyConfig(L2AdapterConfig, kw_only=True, forbid_unknown_fields=True):
    fail: str = "none"


class FlakyAdapter(L2Adapter):
    def start(self):
        if self.config.fail == "start":
            raise OSError("backend unreachable")
        super().start()

    def _put(self, key, data): pass
    def _get(self, key, out): return False
    def _size(self, key): return None
    def _remove(self, key): return None


def make(config, context):
    if config.fail == "value":
        raise ValueError("bucket name\\nmust be lowercase")
    if config.fail == "construct":
        raise RuntimeError("driver missing")
    return FlakyAdapter(config, context)


@hookimpl
def lmcache_register_l2_adapters(register):
    register("flaky", FlakyConfig, make)
'''

UNMARKED = '''
def lmcache_register_routes(register):
    register()

def lmcache_status(server):
    return {"never": "called"}

def helper():
    return 1
'''


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Throwaway distributions, for child processes: ``flaky`` (an L2 type), the duplicate pair, ``unmarked``."""
    root = tmp_path / "site"
    root.mkdir()
    (root / "flaky_plugin.py").write_text(FAILING_ADAPTER)
    (root / "unmarked_plugin.py").write_text(UNMARKED)
    write_dist(root, "lmcache-fixture-flaky", {"flaky": "flaky_plugin"})
    write_dist(root, "lmcache-fixture-unmarked", {"unmarked": "unmarked_plugin"})
    write_dist(root, "lmcache-fixture-dup-a", {"dup_a": "dup_l2_a"})
    write_dist(root, "lmcache-fixture-dup-b", {"dup_b": "dup_l2_b"})
    return root


def lmcache_server(site: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmcache_core.cli", *argv], env=subprocess_env([site]),
                          capture_output=True, text=True, timeout=120)


def serve_argv(*argv: str) -> list[str]:
    return ["--port", str(free_port()), "--http-port", str(free_port()), "--l1-size-gb", "0.01", *argv]


FS_FIRST = '{"type":"fs","base_path":"%s"}'


@pytest.mark.parametrize(("fail", "stage", "code", "reason"), [
    ("construct", "construction", 3, "RuntimeError: driver missing"),
    ("value", "construction", 2, "ValueError: bucket name must be lowercase"),
    ("start", "start", 3, "OSError: backend unreachable"),
])
def test_an_adapter_that_fails_names_plugin_type_and_position_in_one_line(site, tmp_path, fail, stage, code, reason):
    out = lmcache_server(site, *serve_argv("--plugins", "flaky,fs", "--l2-adapter", FS_FIRST % (tmp_path / "fs"),
                                           "--l2-adapter", json.dumps({"type": "flaky", "fail": fail})))
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr
    ours = [line for line in out.stderr.splitlines() if line.startswith("lmcache-server:")]
    assert ours == [f"lmcache-server: --l2-adapter #1 (type 'flaky', plugin 'flaky'): {stage} failed: {reason}"]


def test_an_adapter_that_starts_serves(site, tmp_path):
    """The same plugin with nothing failing passes what ``plugins`` checks (the control of the cases above)."""
    out = lmcache_server(site, "plugins", "--plugins", "flaky", "--l2-adapter", '{"type":"flaky"}')
    assert out.returncode == 0, out.stderr
    assert "flaky" in out.stdout and "Traceback" not in out.stderr


def test_duplicate_adapter_types_exit_3_from_the_server_and_the_plugins_command_alike(site):
    server = lmcache_server(site, *serve_argv("--plugins", "dup_a,dup_b"))
    listing = lmcache_server(site, "plugins", "--plugins", "dup_a,dup_b")
    for out in (server, listing):
        assert out.returncode == 3, out.stderr
        assert "'dup-type' is registered by both plugin 'dup_b' and plugin 'dup_a'" in out.stderr
        assert "Traceback" not in out.stderr


@pytest.mark.parametrize(("argv", "message"), [
    (["--l2-adapter", '{"type":"nope"}'], "--l2-adapter #0: unknown type 'nope'"),
    (["--l2-adapter", '{"type":"flaky","bogus":1}'], "--l2-adapter #0 (flaky): invalid config"),
    (["--eviction-policy", "nope"], "--eviction-policy 'nope' is not registered"),
])
def test_the_plugins_command_refuses_what_the_server_refuses_with_its_exit_code(site, argv, message):
    server = lmcache_server(site, *serve_argv("--plugins", "flaky", *argv))
    listing = lmcache_server(site, "plugins", "--json", "--plugins", "flaky", *argv)
    assert server.returncode == listing.returncode == 2, (server.stderr, listing.stderr)
    assert message in server.stderr and message in listing.stderr
    assert [p["name"] for p in json.loads(listing.stdout)["plugins"] if not p["builtin"]] == ["flaky"]


def test_lmcache_functions_without_hookimpl_are_named_in_a_warning(site):
    out = lmcache_server(site, "plugins", "--plugins", "unmarked")
    assert out.returncode == 0, out.stderr
    warning = [line for line in out.stderr.splitlines() if "lack @hookimpl" in line]
    assert len(warning) == 1 and "plugin unmarked" in warning[0]
    assert "lmcache_register_routes, lmcache_status look like hook implementations" in warning[0]
    assert "helper" not in warning[0]


# -- the route-plugin kit: options, envelopes, the document, the engine view, plugin state ------

import httpx  # noqa: E402
from litestar import Router, get, post  # noqa: E402
from litestar.params import FromQuery, JSONBody  # noqa: E402

from support import MemoryAdapter  # noqa: E402


class KitBody(msgspec.Struct, forbid_unknown_fields=True):
    count: int


@post("/count", sync_to_thread=False, guards=[api.require_admin])
def count(data: JSONBody[KitBody], server: api.Server) -> dict[str, int]:
    state = server.plugin_state("kit")
    state["total"] = state.get("total", 0) + data.count
    return {"total": state["total"]}


@get("/echo", sync_to_thread=False)
def echo(n: FromQuery[int]) -> dict[str, int]:
    return {"n": n}


@get("/figures", sync_to_thread=False)
def figures(engine: api.Engine) -> dict[str, object]:
    view = engine.view
    l1, l2 = view.l1(), view.l2()
    return {"l1_capacity": l1.capacity_bytes, "l1_used": l1.used_bytes,
            "l2": [[f.index, f.type_name, f.plugin, f.healthy, f.used_bytes, f.object_count] for f in l2],
            "kitmem": [a.index for a in view.l2_adapters("kitmem")], "layouts": view.layouts()}


class KitPlugin:
    @staticmethod
    @api.hookimpl
    def lmcache_register_routes(register: api.RegisterRoutes) -> None:
        register(Router("/kit", route_handlers=[count, echo, figures], opt=api.error_envelope(api.DETAIL)))

    @staticmethod
    @api.hookimpl
    def lmcache_register_l2_adapters(register: api.RegisterL2Adapter) -> None:
        register("kitmem", api.L2AdapterConfig, MemoryAdapter)


KIT = [("kit", KitPlugin())]


def test_the_options_fixture_and_the_factory_take_argv_and_environ(lmcache_options, lmcache_server_factory):
    options = lmcache_options(argv=["--l1-size-gb", "0.02"], plugins=KIT, environ={"LMCACHE_HTTP_ADMIN_TOKEN": "t"})
    assert (options.l1_size_gb, options.http_admin_token) == (0.02, "t")
    server = lmcache_server_factory(KIT, argv=["--l1-size-gb", "0.02"], environ={"LMCACHE_EVICTION_RATIO": "0.5"},
                                    start=False)
    assert (server.storage_config.l1_size_gb, server.storage_config.eviction_ratio) == (0.02, 0.5)


@pytest.fixture
def kit_url(lmcache_server_factory, lmcache_http) -> str:
    server = lmcache_server_factory(KIT, argv=["--l1-size-gb", "0.02", "--l2-adapter", '{"type":"kitmem"}',
                                               "--l2-adapter", '{"type":"kitmem"}'])
    return lmcache_http(server)


def test_litestars_own_400_comes_in_the_groups_envelope(kit_url):
    for resp, where in [(httpx.post(f"{kit_url}/kit/count", json={"count": 1, "extra": 2}), "unknown field `extra`"),
                        (httpx.post(f"{kit_url}/kit/count", content=b"{not json"), "JSON is malformed"),
                        (httpx.get(f"{kit_url}/kit/echo?n=ten"), "query n: Expected `int`, got `str`"),
                        (httpx.get(f"{kit_url}/kit/echo"), "Missing required query parameter 'n'")]:
        assert resp.status_code == 400, resp.text
        assert list(resp.json()) == ["detail"] and where in resp.json()["detail"], resp.text
    assert httpx.get(f"{kit_url}/kit/nope").status_code == 404  # other client errors keep Litestar's answer


def test_the_document_declares_strict_bodies_and_the_groups_400(kit_url):
    doc = httpx.get(f"{kit_url}/schema/openapi.json").json()
    assert doc["components"]["schemas"]["KitBody"]["additionalProperties"] is False
    for path, method in [("/kit/count", "post"), ("/kit/echo", "get")]:
        assert doc["paths"][path][method]["responses"]["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/DetailBody"}
    assert "400" not in doc["paths"]["/kit/figures"]["get"]["responses"]  # nothing there for Litestar to refuse


def test_a_plugin_runs_the_conformance_check_on_its_own_routes(kit_url, lmcache_openapi_check):
    report = lmcache_openapi_check(kit_url, paths=lambda p: p.startswith("/kit"), max_examples=10)
    assert report == {"POST /kit/count": "passed", "GET /kit/echo": "passed", "GET /kit/figures": "passed"}


def test_the_conformance_check_names_an_operation_whose_answers_the_document_does_not_declare(lmcache_server_factory,
                                                                                                lmcache_http):
    @get("/liar", sync_to_thread=False, status_code=200)
    def liar() -> dict[str, int]:
        raise api.HTTPError(418, "undocumented")

    class Liar:
        @staticmethod
        @api.hookimpl
        def lmcache_register_routes(register: api.RegisterRoutes) -> None:
            register(liar)

    url = lmcache_http(lmcache_server_factory([("liar", Liar())]))
    with pytest.raises(AssertionError, match="GET /liar"):
        check_openapi(url, paths=["/liar"], max_examples=3)


def test_the_engine_view_and_plugin_state(lmcache_server_factory, lmcache_http):
    server = lmcache_server_factory(KIT, argv=["--l1-size-gb", "0.02", "--l2-adapter", '{"type":"kitmem"}',
                                               "--l2-adapter", '{"type":"kitmem"}'], start=False)
    url = lmcache_http(server)
    assert httpx.get(f"{url}/kit/figures").json() == {"detail": "engine not initialized"}  # 503, the group's envelope
    server.start()
    adapter = server.view.l2_adapter("kitmem")
    key = api.ObjectKey(b"\x01" * 32, "m", 0)
    assert adapter.store([key], [bytearray(1000)]).result(30) == [True]
    body = httpx.get(f"{url}/kit/figures").json()
    assert body["l1_capacity"] >= 0.02 * (1 << 30) * 0.9 and body["l1_used"] == 0
    assert body["l2"] == [[0, "kitmem", "kit", True, 1000, 1], [1, "kitmem", "kit", True, 0, 0]]
    assert body["kitmem"] == [0, 1] and body["layouts"] == []
    assert server.view.l2_adapter("other") is None
    assert [httpx.post(f"{url}/kit/count", json={"count": n}).json() for n in (2, 3)] == [{"total": 2}, {"total": 5}]
    other = lmcache_server_factory(KIT, start=False)
    assert other.plugin_state("kit") == {} and server.plugin_state("kit") == {"total": 5}
    server.stop()
    with pytest.raises(api.EngineUnavailable):
        server.view.l1()
