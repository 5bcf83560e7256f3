"""``lmcache-server --config FILE``: precedence (flag > environment > file > default) and every error case.

Most cases go through the launcher's own entry point (``lmcache_core.cli.main``) in this process
and read the effective defaults off ``--help`` (argparse prints each option's default after the
file and the environment were applied); one case runs the real server and reads ``GET /conf``,
where a flag, a variable, the file and a default each decide one value.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from lmcache_core import config_file
from lmcache_core.cli import main
from lmcache_core.testing import free_port, server_process


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("LMCACHE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "200")


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


def _option_help(help_text: str, flag: str) -> str:
    """The help entry of ``flag`` (its lines joined), as argparse printed it."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(flag)}\b", line))
    entry = [lines[start]]
    for line in lines[start + 1:]:
        if re.match(r"\s+-", line) or not line.startswith(" "):
            break
        entry.append(line)
    return " ".join(part.strip() for part in entry)


def _default(help_text: str, flag: str) -> str:
    match = re.search(r"\(default: (.*)\)$", _option_help(help_text, flag))
    assert match, _option_help(help_text, flag)
    return match.group(1)


def _write(tmp_path: Path, text: str, name: str = "server.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- precedence ----------------------------------------------------------------------------


def test_without_a_file_the_built_in_defaults_apply(capsys):
    out = _help([], capsys)
    assert _default(out, "--l1-size-gb") == "1.0"
    assert _default(out, "--l2-adapter") == "[]"
    assert "configuration file:" in out and config_file.PRECEDENCE.split(",")[0] in out.replace("\n", " ")


def test_the_file_replaces_the_defaults(tmp_path, capsys):
    path = _write(tmp_path, 'l1_size_gb = 3\neviction_policy = "LRU"\ndisable_metrics = true\nport = "6000"\n')
    out = _help(["--config", str(path)], capsys)
    assert _default(out, "--l1-size-gb") == "3.0"
    assert _default(out, "--disable-metrics") == "True"
    assert _default(out, "--port") == "6000"


def test_lmcache_config_names_the_file_and_the_flag_wins_over_it(tmp_path, capsys, monkeypatch):
    by_env = _write(tmp_path, "l1_size_gb = 4\n", "env.toml")
    by_flag = _write(tmp_path, "l1_size_gb = 6\n", "flag.toml")
    monkeypatch.setenv("LMCACHE_CONFIG", str(by_env))
    assert _default(_help([], capsys), "--l1-size-gb") == "4.0"
    assert _default(_help(["--config", str(by_flag)], capsys), "--l1-size-gb") == "6.0"


def test_the_environment_wins_over_the_file(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, "l1_size_gb = 3\nchunk_size = 512\n")
    monkeypatch.setenv("LMCACHE_L1_SIZE_GB", "5")
    out = _help(["--config", str(path)], capsys)
    assert _default(out, "--l1-size-gb") == "5.0"
    assert _default(out, "--chunk-size") == "512"


def test_l2_adapters_as_a_list_of_tables_or_of_json_strings(tmp_path, capsys):
    path = _write(tmp_path, """\
l2_adapter = [
    { type = "fs", base_path = "/data/a" },
    '{"type": "fs", "base_path": "/data/b"}',
]
""")
    expected = "[{'type': 'fs', 'base_path': '/data/a'}, {'type': 'fs', 'base_path': '/data/b'}]"
    assert _default(_help(["--config", str(path)], capsys), "--l2-adapter") == expected
    path = _write(tmp_path, '[[l2_adapter]]\ntype = "fs"\nbase_path = "/data/a"\n', "tables.toml")
    assert _default(_help(["--config", str(path)], capsys), "--l2-adapter") == "[{'type': 'fs', 'base_path': '/data/a'}]"


def test_the_file_selects_plugins_and_the_environment_overrides_it(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, 'plugins = "health"\n')
    assert "l2 plugin:" not in _help(["--config", str(path)], capsys)
    monkeypatch.setenv("LMCACHE_PLUGINS", "health,l2")
    assert "l2 plugin:" in _help(["--config", str(path)], capsys)


def test_make_run_arguments_work_without_a_file(capsys):
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "--config" not in makefile.split("RUN_ARGS", 1)[1].split("\n\n", 1)[0]
    out = _help(["--http-host", "127.0.0.1", "--http-port", "8080", "--l1-size-gb", "1",
                 "--l2-adapter", '{"type":"fs","base_path":".lmcache"}'], capsys)
    assert "usage: lmcache-server" in out


def test_a_served_config_shows_flag_over_environment_over_file_over_default(tmp_path):
    zmq_port, http_port = free_port(), free_port()
    path = _write(tmp_path, f"""\
# every level decides one value
port = {zmq_port}
http_port = {http_port}
http_host = "127.0.0.1"
log_level = "warning"
l1_size_gb = 3          # the flag below wins
chunk_size = 512        # LMCACHE_CHUNK_SIZE wins
eviction_ratio = 0.5    # only here: the file wins
l2_adapter = [{{ type = "fs", base_path = "{tmp_path / 'l2'}" }}]
""")
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")} | {"LMCACHE_CHUNK_SIZE": "128"}
    cmd = [sys.executable, "-m", "lmcache_core.cli", "--config", str(path), "--l1-size-gb", "2"]
    with server_process(cmd, f"http://127.0.0.1:{http_port}/healthcheck", env=env, log=tmp_path / "server.log"):
        conf = httpx.get(f"http://127.0.0.1:{http_port}/conf", timeout=10).json()
    flat = _flatten(conf)
    assert flat["l1_size_gb"] == 2.0
    assert flat["chunk_size"] == 128
    assert flat["eviction_ratio"] == 0.5
    assert flat["eviction_trigger_watermark"] == 0.8  # nobody set it: the default
    assert (tmp_path / "l2").is_dir()  # the file's FS adapter was built


def _flatten(doc, out=None) -> dict:
    out = {} if out is None else out
    if isinstance(doc, dict):
        for key, value in doc.items():
            if isinstance(value, (dict, list)):
                _flatten(value, out)
            else:
                out.setdefault(key, value)
    elif isinstance(doc, list):
        for item in doc:
            _flatten(item, out)
    return out


# -- errors: the file, the key and the line; exit 2 ------------------------------------------


def _fails(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize(("text", "key", "line", "reason"), [
    ("port = 5555\n\nl1_sise_gb = 2\n", "l1_sise_gb", 3, "did you mean 'l1_size_gb'"),
    ("l1-size-gb = 2\n", "l1-size-gb", 1, "'l1_size_gb'"),
    ("# sizes\nl1_size_gb = -1\n", "l1_size_gb", 2, "must be > 0"),
    ("l1_size_gb = true\n", "l1_size_gb", 1, "expected a number or a string"),
    ('port = "http"\n', "port", 1, "not a valid int"),
    ("port = 70000\n", "port", 1, "must be <= 65535"),
    ("host = 5\n", "host", 1, "expected a string"),
    ('disable_metrics = "yes"\n', "disable_metrics", 1, "expected true or false"),
    ('l2_store_policy = "never"\n', "l2_store_policy", 1, "is not one of default, skip_l1"),
    ("chunk_size = [1, 2]\n", "chunk_size", 1, "expected one value"),
    ('l1_size_gb = 1\nl2_adapter = [\n  { type = "fs" },\n  { base_path = "/x" },\n]\n',
     "l2_adapter", 2, 'needs a "type"'),
    ('l1_size_gb = 1\n[[l2_adapter]]\nbase_path = "/x"\n', "l2_adapter", 2, 'needs a "type"'),
    ('[storage]\nl1_size_gb = 2\n', "storage", 1, "no such option"),
    ('config = "other.toml"\n', "config", 1, "no such option"),
])
def test_a_bad_key_or_value_names_the_file_the_key_and_the_line(tmp_path, capsys, text, key, line, reason):
    path = _write(tmp_path, text)
    err = _fails(["--config", str(path)], capsys)
    assert f"config file {path}, line {line}: key {key!r}: " in err
    assert reason in err


def test_a_plugin_option_is_a_key_only_while_its_plugin_is_loaded(tmp_path, capsys):
    out = _help(["--plugins", "l2"], capsys)
    flag = next(m for m in re.findall(r"^\s+(--l2-[a-z-]+)", out, re.M)
                if m not in _help(["--plugins", "health"], capsys))
    key = flag[2:].replace("-", "_")
    path = _write(tmp_path, f'plugins = "health"\n{key} = 1\n')
    err = _fails(["--config", str(path)], capsys)
    assert f"line 2: key {key!r}: no such option (" in err
    assert "a plugin's options are keys only while the plugin is loaded)" in err


def test_invalid_toml_names_the_file_and_the_line(tmp_path, capsys):
    path = _write(tmp_path, "l1_size_gb = 2\nport = = 5\n")
    err = _fails(["--config", str(path)], capsys)
    assert f"config file {path}: not valid TOML:" in err and "line 2" in err


def test_a_missing_or_unreadable_file_is_named(tmp_path, capsys):
    missing = tmp_path / "nope.toml"
    assert f"config file {missing}: cannot read it" in _fails(["--config", str(missing)], capsys)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"port = 1\n\xff\xfe\n")
    assert f"config file {binary}: not UTF-8 text" in _fails(["--config", str(binary)], capsys)


def test_the_console_script_exits_2_on_a_bad_file(tmp_path):
    path = _write(tmp_path, "l1_size_gb = 0\n")
    proc = subprocess.run([str(Path(sys.executable).with_name("lmcache-server")), "--config", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"config file {path}, line 1: key 'l1_size_gb'" in proc.stderr


# -- finding a key's line ---------------------------------------------------------------------


def test_key_line_finds_top_level_keys_and_tables_not_nested_ones():
    text = """\
# port = 1 in a comment is not a key
"quoted key" = 1
port = 5555
l2_adapter = [
  { type = "fs", port = 3 },  # a nested key of the same name is not the top-level one
  "] tricky [",
]
notes = \"\"\"
chunk_size = 9
\"\"\"
chunk_size = 256
[plugin.section]
inner = 1
[[l2_extra]]
type = "x"
"""
    assert config_file.key_line(text, "quoted key") == 2
    assert config_file.key_line(text, "port") == 3
    assert config_file.key_line(text, "l2_adapter") == 4
    assert config_file.key_line(text, "chunk_size") == 11
    assert config_file.key_line(text, "plugin") == 12
    assert config_file.key_line(text, "inner") is None
    assert config_file.key_line(text, "l2_extra") == 14
    assert config_file.key_line(text, "type") is None
