"""The public plugin API (``lmcache_core.api``): config registration, HTTPError envelopes, frozen registrations."""

from __future__ import annotations

import subprocess
import sys
from typing import Annotated, Any, Literal

import httpx
import msgspec
import pytest
from litestar import Router, get
from litestar.params import FromPath, FromQuery

from lmcache_core import api
from lmcache_core.cli import build_parser
from lmcache_core.config import ConfigError, build_configs
from lmcache_core.plugins import PluginError, PluginHost, PluginLoadError
from lmcache_core.testing import make_server, serving
from support import subprocess_env

# -- config registration ---------------------------------------------------------------------


class WidgetConfig(msgspec.Struct, kw_only=True):
    """A plugin's config: every kind of field the registration derives a flag for."""

    size: Annotated[int, msgspec.Meta(ge=1, le=100, description="widget size")] = 10
    ratio: Annotated[float, msgspec.Meta(gt=0, description="a positive ratio")] = 0.5
    name: str = "w"
    mode: Literal["fast", "slow"] = "fast"
    enabled: bool = False
    on_by_default: bool = True
    tags: list[str] = []
    limit: int | None = None


class WidgetPlugin:
    @staticmethod
    @api.hookimpl
    def lmcache_register_config(register: api.RegisterConfig) -> None:
        register("widget", WidgetConfig, prefix="widget-", title="widget plugin", description="Widgets.")


def host_with(*plugins: tuple[str, object], strict: bool = False) -> PluginHost:
    return PluginHost(load_entry_points=False, extra_plugins=list(plugins), strict=strict)


def parse(host: PluginHost, argv: list[str], environ: dict[str, str] | None = None) -> Any:
    args = build_parser(host, environ or {}).parse_args(argv)
    return build_configs(args, host.registrations.configs)


def test_a_registered_struct_becomes_flags_variables_defaults_and_a_typed_section():
    host = host_with(("widget", WidgetPlugin()))
    assert [spec.name for spec in host.registrations.configs if spec.plugin == "widget"] == ["widget"]
    defaults = parse(host, [])["widget"]
    assert defaults == WidgetConfig()
    configs = parse(host, ["--widget-size", "42", "--widget-mode", "slow", "--widget-enabled",
                           "--no-widget-on-by-default", "--widget-tags", "a,b", "c", "--widget-limit", "7"],
                    {"LMCACHE_WIDGET_RATIO": "0.25", "LMCACHE_WIDGET_NAME": "from-env", "LMCACHE_WIDGET_SIZE": "5"})
    widget = configs["widget"]
    assert isinstance(widget, WidgetConfig)
    assert (widget.size, widget.ratio, widget.name, widget.mode) == (42, 0.25, "from-env", "slow")
    assert (widget.enabled, widget.on_by_default, widget.tags, widget.limit) == (True, False, ["a", "b", "c"], 7)
    assert parse(host, [], {"LMCACHE_WIDGET_ENABLED": "yes", "LMCACHE_WIDGET_TAGS": "x y"})["widget"].tags == ["x", "y"]
    help_text = build_parser(host, {}).format_help()
    assert "widget plugin" in help_text and "widget size" in help_text and "LMCACHE_WIDGET_SIZE" in help_text


@pytest.mark.parametrize("argv", [["--widget-size", "0"], ["--widget-size", "101"], ["--widget-size", "ten"],
                                  ["--widget-ratio", "0"], ["--widget-ratio", "nan"], ["--widget-mode", "medium"]])
def test_a_value_outside_the_struct_constraints_is_a_usage_error(argv, capsys):
    host = host_with(("widget", WidgetPlugin()))
    with pytest.raises(SystemExit) as exc:
        parse(host, argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_an_environment_value_outside_the_constraints_names_the_variable(capsys):
    host = host_with(("widget", WidgetPlugin()))
    with pytest.raises(SystemExit):
        parse(host, [], {"LMCACHE_WIDGET_SIZE": "1000"})
    assert "LMCACHE_WIDGET_SIZE" in capsys.readouterr().err


def test_configs_given_in_code_are_validated_once_at_build():
    host = host_with(("widget", WidgetPlugin()))
    args = build_parser(host, {}).parse_args([])
    args.widget_size = 0  # as a caller building a Namespace by hand might
    with pytest.raises(ConfigError, match="widget"):
        build_configs(args, host.registrations.configs)


def test_the_server_hands_the_section_typed_and_conf_shows_it(lmcache_http):
    import lmcache_plugin_inspect.plugin as inspect_plugin

    server = make_server([("widget", WidgetPlugin()), ("inspect", inspect_plugin)])
    try:
        assert server.configs["widget"] == WidgetConfig()
        conf = httpx.get(f"{lmcache_http(server)}/conf").json()
        assert conf["widget"]["size"] == 10 and conf["widget"]["mode"] == "fast"
    finally:
        server.stop()


class CoreFlagClash(msgspec.Struct):
    port: int = 1  # --port is a core flag


class CoreClashPlugin:
    @staticmethod
    @api.hookimpl
    def lmcache_register_config(register: Any) -> None:
        register("clash", CoreFlagClash)


class NotAStruct:
    @staticmethod
    @api.hookimpl
    def lmcache_register_config(register: Any) -> None:
        register("bad", dict)


class NoDefault(msgspec.Struct):
    needed: int


class NoDefaultPlugin:
    @staticmethod
    @api.hookimpl
    def lmcache_register_config(register: Any) -> None:
        register("nodefault", NoDefault)


class CoreNamePlugin:
    @staticmethod
    @api.hookimpl
    def lmcache_register_config(register: Any) -> None:
        register("http", WidgetConfig, prefix="x-")


@pytest.mark.parametrize("plugin", [CoreClashPlugin(), NotAStruct(), NoDefaultPlugin(), CoreNamePlugin()])
def test_a_bad_config_registration_is_a_plugin_failure_and_fatal_when_strict(plugin):
    host = host_with(("bad", plugin))
    assert [f.name for f in host.failed] == ["bad"]
    assert "lmcache_register_config" in host.failed[0].error
    assert not [spec for spec in host.registrations.configs if spec.plugin == "bad"]
    with pytest.raises(PluginLoadError, match="bad"):
        host_with(("bad", plugin), strict=True)


def test_two_plugins_registering_one_section_name_fail_the_second():
    host = host_with(("widget", WidgetPlugin()), ("again", WidgetPlugin()))
    assert [s.plugin for s in host.registrations.configs if s.name == "widget"] == ["widget"]
    assert [f.name for f in host.failed] == ["again"]


# -- registrations are collected once and frozen ---------------------------------------------


class Misspelled:
    @staticmethod
    @api.hookimpl
    def lmcache_register_rotues(register: Any) -> None:  # the typo a real author makes
        raise AssertionError("never called")


class RoutesThenFails:
    @staticmethod
    @api.hookimpl
    def lmcache_register_config(register: Any) -> None:
        register("half", WidgetConfig, prefix="half-")

    @staticmethod
    @api.hookimpl
    def lmcache_register_routes(register: Any) -> None:
        raise RuntimeError("routes exploded")


def test_an_unknown_hook_is_a_plugin_failure_not_a_traceback():
    host = host_with(("typo", Misspelled()))
    assert [f.name for f in host.failed] == ["typo"]
    assert "lmcache_register_rotues" in host.failed[0].error
    assert "typo" not in host.plugins
    with pytest.raises(PluginLoadError, match="lmcache_register_rotues"):
        host_with(("typo", Misspelled()), strict=True)


def test_a_plugin_failing_any_registration_keeps_nothing_and_the_listing_says_so_at_once():
    host = host_with(("half", RoutesThenFails()))
    assert not [s for s in host.registrations.configs if s.plugin == "half"]  # dropped with the plugin
    assert [f.name for f in host.failed] == ["half"]
    assert "routes exploded" in host.failed[0].error
    assert host.describe()["failed"][0]["name"] == "half"  # the same before any server or app exists


def test_registries_are_frozen():
    host = host_with()
    with pytest.raises(PluginError, match="closed"):
        host.registrations.eviction_policies.add("late", "someone", object)


def test_the_plugins_command_and_get_plugins_agree(tmp_path, fake_dists):
    fake_dists("lmcache-fixture-typo", {"typo": "typo_plugin"})
    (fake_dists.root / "typo_plugin.py").write_text(
        "from lmcache_core.api import hookimpl\n\n@hookimpl\ndef lmcache_statsu(server):\n    return None\n")
    env = subprocess_env([fake_dists.root])
    out = subprocess.run([sys.executable, "-m", "lmcache_core.cli", "plugins", "--json", "--plugins", "typo,health"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    listed = json.loads(out.stdout)
    strict = subprocess.run([sys.executable, "-m", "lmcache_core.cli", "--plugins", "typo", "--strict-plugins"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert strict.returncode == 3 and "lmcache_statsu" in strict.stderr
    server = make_server(entry_points=True, allow="typo,health", start=False)
    with serving(server) as url:
        served = httpx.get(f"{url}/plugins").json()
    assert served["failed"] == listed["failed"] and [f["name"] for f in served["failed"]] == ["typo"]
    assert [p["name"] for p in served["plugins"]] == [p["name"] for p in listed["plugins"]]


# -- HTTPError rendered in each group's envelope -----------------------------------------------


@get("/boom/{status:int}", sync_to_thread=False)
def boom(status: FromPath[int], surrogate: FromQuery[bool] = False) -> dict[str, str]:
    # a message built from caller input may carry a lone surrogate (a mis-decoded name, say)
    raise api.HTTPError(status, "bad \ud800 thing" if surrogate else "bad thing", headers={"X-Why": "test"})


@get("/payload", sync_to_thread=False)
def payload() -> dict[str, str]:
    raise api.HTTPError(422, "invalid body", body={"detail": [{"type": "missing", "loc": ["body", "x"], "msg": "m"}]})


@get("/offthread", sync_to_thread=True)
def offthread() -> dict[str, str]:
    raise api.HTTPError(409, "raised in a worker thread")


@get("/needs-engine", sync_to_thread=False)
def needs_engine(engine: api.Engine) -> dict[str, str]:
    return {"ok": "yes"}


class EnvelopePlugin:
    @staticmethod
    @api.hookimpl
    def lmcache_register_routes(register: Any) -> None:
        for name, envelope in (("error", api.ERROR), ("detail", api.DETAIL), ("text", api.TEXT),
                               ("health", api.status_reason("unhealthy"))):
            register(Router(path=f"/{name}", route_handlers=[boom, offthread, payload, needs_engine],
                            opt=api.error_envelope(envelope)))
        register(Router(path="/default", route_handlers=[boom, needs_engine]))
        register(Router(path="/fixed", route_handlers=[needs_engine], opt={
            **api.error_envelope(api.DETAIL), **api.unavailable_body({"status": "down"})}))


@pytest.fixture
def envelope_urls(lmcache_http, lmcache_server_factory):
    ready = lmcache_server_factory([("envelopes", EnvelopePlugin())])
    stopped = lmcache_server_factory([("envelopes", EnvelopePlugin())], start=False)
    return lmcache_http(ready), lmcache_http(stopped)


def test_http_error_is_rendered_in_each_groups_envelope(envelope_urls):
    url, _ = envelope_urls
    cases = {
        "error": ("application/json", b'{"error":"bad thing"}'),
        "detail": ("application/json", b'{"detail":"bad thing"}'),
        "text": ("text/plain; charset=utf-8", b"bad thing"),
        "health": ("application/json", b'{"status":"unhealthy","reason":"bad thing"}'),
        "default": ("application/json", b'{"error":"bad thing"}'),
    }
    for group, (ctype, body) in cases.items():
        resp = httpx.get(f"{url}/{group}/boom/418")
        assert (resp.status_code, resp.headers["content-type"], resp.content) == (418, ctype, body), group
        assert resp.headers["x-why"] == "test"
    for group in ("error", "text"):  # an explicit body is sent as it is, whatever the envelope
        resp = httpx.get(f"{url}/{group}/payload")
        assert (resp.status_code, resp.json()["detail"][0]["loc"]) == (422, ["body", "x"])
    thread = httpx.get(f"{url}/detail/offthread")
    assert (thread.status_code, thread.json()) == (409, {"detail": "raised in a worker thread"})


def test_caller_text_that_utf8_cannot_carry_is_escaped_not_a_500(envelope_urls):
    url, _ = envelope_urls
    resp = httpx.get(f"{url}/detail/boom/400", params={"surrogate": "true"})
    assert resp.status_code == 400
    assert resp.json() == {"detail": "bad \\ud800 thing"}


def test_the_engines_503_takes_the_group_envelope_or_its_fixed_body(envelope_urls):
    ready, stopped = envelope_urls
    assert httpx.get(f"{ready}/detail/needs-engine").json() == {"ok": "yes"}
    expected = {
        "error": b'{"error":"engine not initialized"}',
        "detail": b'{"detail":"engine not initialized"}',
        "text": b"engine not initialized",
        "health": b'{"status":"unhealthy","reason":"engine not initialized"}',
        "default": b'{"error":"engine not initialized"}',
        "fixed": b'{"status":"down"}',
    }
    for group, body in expected.items():
        resp = httpx.get(f"{stopped}/{group}/needs-engine")
        assert (resp.status_code, resp.content) == (503, body), group


def test_the_document_declares_each_groups_503(envelope_urls):
    _, stopped = envelope_urls
    doc = httpx.get(f"{stopped}/schema/openapi.json").json()
    text_503 = doc["paths"]["/text/needs-engine"]["get"]["responses"]["503"]["content"]
    assert list(text_503) == ["text/plain"]
    detail_503 = doc["paths"]["/detail/needs-engine"]["get"]["responses"]["503"]["content"]["application/json"]
    assert detail_503["schema"]["$ref"].endswith("/DetailBody")


def test_the_api_exports_what_it_lists():
    assert all(hasattr(api, name) for name in api.__all__)
