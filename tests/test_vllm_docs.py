"""docs/vllm.md: every command on the page is checked here, as far as it can run without vLLM.

``lmcache-server`` lines are parsed by the launcher's real parser (flags exist, values and
``--l2-adapter`` JSON are valid); ``vllm serve`` lines have their ``--kv-transfer-config`` JSON
parsed and its ``lmcache.mp.*`` keys checked against the ones LMCache 0.5.6's connector reads;
``curl`` lines are sent to a real server; ``pip install`` extras must exist; the TOML block is
read as a ``--config`` file; the YAML blocks parse and name routes the server has. A bash line of
any other kind fails the test, so nothing on the page goes unchecked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from packaging.requirements import Requirement

from lmcache_core import config_file
from lmcache_core.cli import build_parser, make_host
from lmcache_core.testing import free_port, server_process

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "vllm.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)
# The kv_connector_extra_config keys LMCache 0.5.6's LMCacheMPConnector and its adapters read
# (lmcache/integration/vllm/lmcache_mp_connector.py, vllm_multi_process_adapter.py,
# mp_server_launcher.py); interop/test_vllm_connector_keys.py checks them against that source.
KNOWN_MP_KEYS = {
    "lmcache.mp.host", "lmcache.mp.port", "lmcache.mp.server_urls", "lmcache.mp.mq_timeout",
    "lmcache.mp.heartbeat_interval", "lmcache.mp.mp_transfer_mode", "lmcache.mp.hash_algorithm",
    "lmcache.mp.save_decode_cache", "lmcache.mp.eager_prefetch", "lmcache.mp.autostart",
}


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(PAGE.read_text()) if lang == language]


def bash_commands() -> list[list[str]]:
    commands = []
    for body in blocks("bash"):
        for line in body.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(shlex.split(line.split(" | ")[0]))
    return commands


def _of(program: str) -> list[list[str]]:
    return [c for c in bash_commands() if c[0] == program]


def test_the_readme_links_the_page():
    assert "(docs/vllm.md)" in (ROOT / "README.md").read_text()


def test_every_bash_line_is_a_kind_this_module_checks():
    kinds = {c[0] if c[0] != "pip" else "pip" for c in bash_commands()}
    assert kinds <= {"lmcache-server", "vllm", "curl", "pip"}, kinds
    assert {"lmcache-server", "vllm", "curl"} <= kinds


@pytest.fixture(scope="module")
def parser():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    return build_parser(make_host([], environ=clean), environ=clean)


@pytest.mark.parametrize("argv", _of("lmcache-server"), ids=lambda a: " ".join(a[1:4]))
def test_lmcache_server_commands_parse(parser, argv):
    args = parser.parse_args(argv[1:])  # exits 2 (failing the test) on an unknown flag or a bad value
    for adapter in args.l2_adapter:
        assert adapter["type"] in {"fs", "s3"}


@pytest.mark.parametrize("argv", _of("vllm"), ids=lambda a: str(len(a)))
def test_vllm_commands_carry_a_valid_connector_config(argv):
    assert argv[1] == "serve"
    config = json.loads(argv[argv.index("--kv-transfer-config") + 1])
    assert config["kv_connector"] == "LMCacheMPConnector"
    assert config["kv_role"] == "kv_both"
    extra = config["kv_connector_extra_config"]
    assert set(extra) <= KNOWN_MP_KEYS
    if "lmcache.mp.server_urls" in extra:
        urls = extra["lmcache.mp.server_urls"].split(",")
        assert len(urls) > 1 and all(urlsplit(u).scheme == "tcp" and urlsplit(u).port for u in urls)
        tp = int(argv[argv.index("--tensor-parallel-size") + 1])
        assert tp % len(urls) == 0  # the connector requires world size divisible by the server count
    else:
        assert urlsplit(extra["lmcache.mp.host"]).scheme == "tcp" and isinstance(extra["lmcache.mp.port"], int)


def test_every_mp_key_named_on_the_page_is_one_the_connector_reads():
    named = set(re.findall(r"lmcache\.mp\.[a-z_]+", PAGE.read_text()))
    assert named and named <= KNOWN_MP_KEYS, named - KNOWN_MP_KEYS


def test_pip_extras_on_the_page_exist():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = [Requirement(m) for m in re.findall(r'pip install "([^"]+)"', PAGE.read_text())]
    assert named
    for req in named:
        assert req.name == "lmcache-core" and req.extras <= extras


def test_the_toml_block_is_a_valid_config_file(parser, tmp_path):
    (body,) = blocks("toml")
    path = tmp_path / "lmcache-server.toml"
    path.write_text(body)
    config = config_file.load(path)
    config.apply(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.l1_size_gb) == ("0.0.0.0", 5555, 64.0)
    assert args.l2_adapter == [{"type": "fs", "base_path": "/mnt/nfs/lmcache"}]


def test_the_yaml_blocks_parse_and_name_served_routes():
    docs = [yaml.safe_load(body) for body in blocks("yaml")]
    probes = docs[0]
    assert probes["livenessProbe"]["httpGet"]["path"] == probes["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert docs[1]["scrape_configs"][0]["metrics_path"] == "/metrics"


def test_curl_commands_answer_on_a_real_server(tmp_path):
    urls = [next(a for a in argv if a.startswith("http")) for argv in _of("curl")]
    assert urls
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    cmd = [sys.executable, "-m", "lmcache_core.cli", "--port", str(free_port()), "--http-port", str(http_port),
           "--log-level", "WARNING"]
    with server_process(cmd, f"http://127.0.0.1:{http_port}/healthcheck", env=env, log=tmp_path / "server.log"):
        for url in urls:
            parts = urlsplit(url)
            assert parts.port == 8080  # the page's port; the test server listens on a free one
            response = httpx.get(f"http://127.0.0.1:{http_port}{parts.path}", timeout=10)
            assert response.status_code == 200, url
