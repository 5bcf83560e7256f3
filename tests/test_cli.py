"""The launcher: option groups, environment defaults, validation, plugin selection, lifecycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from support import subprocess_env
from lmcache_core.cli import build_configs, build_parser
from lmcache_core.plugins import PluginHost
from lmcache_core.testing import free_port, wait_http, write_dist

LAUNCHER = [sys.executable, "-m", "lmcache_core.cli"]


def parse(argv, environ=None, host=None):
    return build_parser(host or PluginHost(load_entry_points=False), environ or {}).parse_args(argv)


def test_defaults_follow_lmcache_and_our_documented_choices():
    args = parse([])
    configs = build_configs(args)
    assert (configs["mp"].host, configs["mp"].port, configs["mp"].chunk_size) == ("localhost", 5555, 256)
    assert (configs["http"].http_host, configs["http"].http_port) == ("127.0.0.1", 8080)
    sm = configs["storage_manager"]
    assert (sm.l1_size_gb, sm.eviction_policy, sm.eviction_trigger_watermark, sm.eviction_ratio) == (1.0, "LRU", 0.8, 0.2)
    assert (sm.l1_write_ttl_seconds, sm.l1_read_ttl_seconds, sm.l1_align_bytes) == (600.0, 300.0, 4096)


def test_every_flag_reads_its_environment_variable_and_the_flag_wins():
    env = {
        "LMCACHE_L1_SIZE_GB": "4",
        "LMCACHE_HTTP_PORT": "9001",
        "LMCACHE_HOST": "0.0.0.0",
        "LMCACHE_DISABLE_METRICS": "yes",
        "LMCACHE_LOG_LEVEL": "debug",
        "LMCACHE_SUPPORTED_TRANSFER_MODE": "engine_driven",
        "LMCACHE_L2_ADAPTER": '[{"type": "fs", "base_path": "/a"}, {"type": "s3"}]',
    }
    args = parse([], env)
    assert args.l1_size_gb == 4.0 and args.http_port == 9001 and args.host == "0.0.0.0"
    assert args.disable_metrics is True and args.log_level == "DEBUG"
    assert args.supported_transfer_mode == "engine_driven"
    assert [a["type"] for a in args.l2_adapter] == ["fs", "s3"]
    flagged = parse(["--l1-size-gb", "2", "--http-port", "9002"], env)
    assert flagged.l1_size_gb == 2.0 and flagged.http_port == 9002
    single = parse([], {"LMCACHE_L2_ADAPTER": '{"type": "fs", "base_path": "/b"}'})
    assert single.l2_adapter == [{"type": "fs", "base_path": "/b"}]


def test_plugin_selection_env_names():
    args = parse([], {"LMCACHE_PLUGINS": "health,inspect", "LMCACHE_DISABLED_PLUGINS": "l2",
                      "LMCACHE_STRICT_PLUGINS": "1"})
    assert (args.plugins, args.disable_plugins, args.strict_plugins) == ("health,inspect", "l2", True)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"LMCACHE_L1_SIZE_GB": "lots"}, "LMCACHE_L1_SIZE_GB: 'lots' is not a valid float"),
        ({"LMCACHE_HTTP_PORT": "70000"}, "LMCACHE_HTTP_PORT: 70000 must be <= 65535"),
        ({"LMCACHE_STRICT_PLUGINS": "maybe"}, "LMCACHE_STRICT_PLUGINS: 'maybe' is not a boolean"),
        ({"LMCACHE_SUPPORTED_TRANSFER_MODE": "warp"}, "LMCACHE_SUPPORTED_TRANSFER_MODE: 'warp' is not one of"),
        ({"LMCACHE_L2_ADAPTER": "{not json"}, "LMCACHE_L2_ADAPTER: not valid JSON"),
    ],
)
def test_a_bad_environment_value_is_a_usage_error_naming_the_variable(env, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        parse([], env)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--eviction-trigger-watermark", "1.5"], "1.5 must be <= 1.0"),
        (["--eviction-ratio", "0"], "0.0 must be > 0.0"),
        (["--port", "0"], "0 must be >= 1"),
        (["--l1-align-bytes", "3000"], "3000 is not a power of two"),
        (["--l1-size-gb", "nan"], "'nan' is not a finite number"),
        (["--l2-adapter", "[1]"], "must be a JSON object, got '[1]'"),
        (["--l2-adapter", '{"type": "fs"', "--l2-adapter", '{"type":"fs"}'], "in '{\"type\": \"fs\"'"),
        (["--l2-adapter", '{"base_path": "/x"}'], 'needs a "type"'),
        (["--chunk-size", "-3"], "-3 must be >= 1"),
    ],
)
def test_bad_flags_are_usage_errors(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_help_shows_core_groups_plugin_groups_and_env_names(fake_dists, capsys):
    fake_dists("lmcache-fixture-everything", {"everything": "everything"})
    parser = build_parser(PluginHost(allow="everything"), {})
    text = " ".join(parser.format_help().split())
    for heading in ("MP server:", "storage:", "HTTP:", "observability:", "plugins:", "fixture-everything:"):
        assert heading in text
    assert "--fixture-greeting" in text and "[env: LMCACHE_FIXTURE_GREETING]" in text
    assert "[env: LMCACHE_DISABLED_PLUGINS]" in text
    args = parser.parse_args([])
    assert args.fixture_greeting == "hi"
    parser = build_parser(PluginHost(allow="everything"), {"LMCACHE_FIXTURE_GREETING": "hello"})
    assert parser.parse_args([]).fixture_greeting == "hello"


def run_launcher(args, env, timeout=60):
    return subprocess.run(LAUNCHER + args, env=env, capture_output=True, text=True, timeout=timeout)


def test_strict_plugins_exits_non_zero_naming_the_plugin(tmp_path):
    write_dist(tmp_path, "lmcache-fixture-broken", {"broken": "broken"})
    env = subprocess_env([tmp_path])
    proc = run_launcher(["--strict-plugins", "--http-port", str(free_port())], env)
    assert proc.returncode == 3
    assert "plugin 'broken' failed to load: RuntimeError: boom" in proc.stderr
    via_env = run_launcher(["--http-port", str(free_port())], {**env, "LMCACHE_STRICT_PLUGINS": "true"})
    assert via_env.returncode == 3 and "'broken'" in via_env.stderr


def test_unknown_eviction_policy_and_l2_type_fail_startup_with_the_known_names():
    env = subprocess_env([])
    proc = run_launcher(["--eviction-policy", "MRU", "--http-port", str(free_port())], env)
    assert proc.returncode == 2
    assert "--eviction-policy 'MRU' is not registered; known: IsolatedLRU, LRU, noop" in proc.stderr
    proc = run_launcher(["--l2-adapter", '{"type":"nope"}', "--http-port", str(free_port())], env)
    assert proc.returncode == 2
    assert "--l2-adapter #0: unknown type 'nope'" in proc.stderr


def test_plugins_subcommand_prints_the_table(tmp_path):
    write_dist(tmp_path, "lmcache-fixture-broken", {"broken": "broken"})
    env = subprocess_env([tmp_path], LMCACHE_DISABLED_PLUGINS="metrics")
    proc = run_launcher(["plugins"], env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "HOOKS"]
    assert any(line.split()[:2] == ["health", "lmcache-plugin-health"] for line in lines)
    assert "broken (lmcache-fixture-broken): RuntimeError: boom: fixture plugin cannot import" in proc.stdout
    assert "NOT SELECTED: metrics" in proc.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_server_serves_then_shuts_down_cleanly_on_signal(tmp_path, sig):
    write_dist(tmp_path, "lmcache-fixture-everything", {"everything": "everything"})
    marker = tmp_path / "marker"
    port = free_port()
    env = subprocess_env([tmp_path], LMCACHE_FIXTURE_MARKER=str(marker), LMCACHE_HTTP_PORT=str(port))
    proc = subprocess.Popen(LAUNCHER + ["--port", str(free_port())], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthcheck", proc)
        assert httpx.get(f"http://127.0.0.1:{port}/fixture/hello").json() == {"hello": "fixture"}
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert marker.read_text().splitlines() == ["startup", "shutdown"]


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("lmcache-server")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")})
    assert proc.returncode == 0 and proc.stdout.startswith("lmcache-server ")


FREEZE_PROBE = """
import gc, os, signal, sys, threading
from lmcache_core import cli
from lmcache_core.testing import wait_http

def probe():
    wait_http(f"http://127.0.0.1:{sys.argv[1]}/healthcheck")
    print("frozen", gc.get_freeze_count(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
sys.exit(cli.main(["--http-port", sys.argv[1], "--port", sys.argv[2], "--l1-size-gb", "0.02"]))
"""


def test_the_served_process_freezes_its_start_up_heap_out_of_the_cyclic_gc():
    """Once started, what start-up built is out of the GC's generations (full passes skip it)."""
    out = subprocess.run([sys.executable, "-c", FREEZE_PROBE, str(free_port()), str(free_port())],
                         capture_output=True, text=True, timeout=120, env=subprocess_env([]))
    assert out.returncode == 0, out.stderr[-2000:]
    frozen = int(out.stdout.split("frozen", 1)[1].split()[0])
    assert frozen > 10_000  # torch, the plugins and the engine: tens of thousands of objects
