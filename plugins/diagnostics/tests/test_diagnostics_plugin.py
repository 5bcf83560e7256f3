"""The diagnostics plugin installs, is found through its entry point, and adds its options (flags and
``LMCACHE_*`` variables) in its own group."""

from __future__ import annotations

from importlib.metadata import entry_points

import lmcache_plugin_diagnostics.plugin as diagnostics_plugin
import pytest

from lmcache_core.cli import build_parser
from lmcache_core.plugins import PluginHost


def parse(*argv: str, environ: dict[str, str] | None = None):
    host = PluginHost(load_entry_points=False, extra_plugins=[("diagnostics", diagnostics_plugin)])
    return build_parser(host, environ=environ or {}).parse_args(list(argv))


def test_diagnostics_plugin_is_discovered_and_loads():
    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "diagnostics"]
    assert ep.dist.metadata["Name"] == "lmcache-plugin-diagnostics"
    host = PluginHost(allow="diagnostics")
    assert host.plugins["diagnostics"].distribution == "lmcache-plugin-diagnostics"
    assert set(host.plugins["diagnostics"].hooks) == {"lmcache_register_config", "lmcache_register_routes",
                                                      "lmcache_startup"}
    assert not host.failed


def test_defaults_are_safe():
    opts = parse()
    assert opts.run_script_api_enabled is False
    assert opts.script_allowed_imports == []
    assert opts.env_show_secrets is False
    assert opts.run_script_timeout_seconds == 30.0


def test_flags():
    opts = parse("--run-script-api-enabled", "--script-allowed-imports", "json", "math,os.path",
                 "--env-show-secrets", "--run-script-timeout-seconds", "2.5")
    assert (opts.run_script_api_enabled, opts.env_show_secrets, opts.run_script_timeout_seconds) == (True, True, 2.5)
    assert opts.script_allowed_imports == ["json", "math", "os.path"]


def test_environment_variables_supply_the_defaults_and_flags_win():
    env = {"LMCACHE_RUN_SCRIPT_API_ENABLED": "yes", "LMCACHE_SCRIPT_ALLOWED_IMPORTS": "json, math os.path",
           "LMCACHE_ENV_SHOW_SECRETS": "1", "LMCACHE_RUN_SCRIPT_TIMEOUT_SECONDS": "4"}
    opts = parse(environ=env)
    assert (opts.run_script_api_enabled, opts.env_show_secrets, opts.run_script_timeout_seconds) == (True, True, 4.0)
    assert opts.script_allowed_imports == ["json", "math", "os.path"]
    assert parse("--script-allowed-imports", "re", environ=env).script_allowed_imports == ["re"]


def test_options_are_in_their_own_help_group():
    host = PluginHost(load_entry_points=False, extra_plugins=[("diagnostics", diagnostics_plugin)])
    text = build_parser(host, environ={}).format_help()
    group = text[text.index("diagnostics plugin:"):]
    for flag, env in (("--run-script-api-enabled", "LMCACHE_RUN_SCRIPT_API_ENABLED"),
                      ("--script-allowed-imports", "LMCACHE_SCRIPT_ALLOWED_IMPORTS"),
                      ("--run-script-timeout-seconds", "LMCACHE_RUN_SCRIPT_TIMEOUT_SECONDS"),
                      ("--env-show-secrets", "LMCACHE_ENV_SHOW_SECRETS")):
        assert flag in group and env in group


@pytest.mark.parametrize("argv", [["--script-allowed-imports", "os;rm"], ["--script-allowed-imports", "1abc"],
                                  ["--script-allowed-imports", "a..b"], ["--run-script-timeout-seconds", "0"],
                                  ["--run-script-timeout-seconds", "-1"], ["--run-script-timeout-seconds", "inf"],
                                  ["--run-script-timeout-seconds", "nan"], ["--run-script-timeout-seconds", "x"]])
def test_bad_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


@pytest.mark.parametrize("env", [{"LMCACHE_SCRIPT_ALLOWED_IMPORTS": "os;rm"},
                                 {"LMCACHE_RUN_SCRIPT_API_ENABLED": "maybe"},
                                 {"LMCACHE_RUN_SCRIPT_TIMEOUT_SECONDS": "0"}])
def test_bad_environment_values_are_usage_errors_naming_the_variable(env, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(environ=env)
    assert exc.value.code == 2
    assert next(iter(env)) in capsys.readouterr().err


def test_every_route_is_in_the_openapi_document(diag):
    paths = diag(start=False).get("/schema/openapi.json").json()["paths"]
    assert {"/loglevel", "/threads", "/periodic-threads", "/periodic-threads/{thread_name}",
            "/periodic-threads-health", "/env", "/run_script"} <= set(paths)
    assert set(paths["/run_script"]) == {"post"}
