"""Wheels: ``make dist`` builds every distribution, and core plus chosen plugins install from them alone.

The promise of the design is "pip install the core plus the plugins you choose". Here it is
kept on real wheels: ``make dist`` builds a wheel and an sdist of the core and of every plugin
at the one version in ``VERSION``; a fresh virtual environment (``venv``, no system site
packages, nothing editable) gets the core's third-party dependencies from the package index
first (torch and the rest: the only step that needs an index; on this machine torch comes from
a local wheel), then only project wheels from ``dist/`` with ``--no-index``: the core alone,
which serves nothing but its built-ins, then ``lmcache-core[health,l2]``, whose extras resolve
to the two plugin wheels. That server lists exactly those plugins, answers their routes and 404s
the others, and its ``--help`` shows exactly their option groups.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import subprocess
import sys
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from lmcache_core.testing import free_port, wait_http
from thirdparty_env import ROOT, VERSION, distributions, project, wheel_path

# Plugins that are tools for testing, not features: an extra of their own, not part of [all].
TESTING_ONLY = {"lmcache-plugin-fault-inject"}
CHOSEN = ("health", "l2")  # entry-point names; their distributions are lmcache-plugin-<name>
# A GET route of each plugin not chosen: each must be 404 on the server with only CHOSEN.
OTHER_ROUTES = ["/metrics", "/status", "/conf", "/version", "/quota", "/reconfigure/backends", "/threads"]
CHOSEN_ROUTES = {"/healthcheck": 200, "/l2/adapters": 200}


def test_every_distribution_takes_its_version_from_the_version_file():
    for name, directory in distributions().items():
        doc = tomllib.loads((directory / "pyproject.toml").read_text())
        assert "version" not in doc["project"] and "version" in doc["project"]["dynamic"], name
        assert doc["tool"]["setuptools"]["dynamic"]["version"] == {"file": "VERSION"}, name
        assert (directory / "VERSION").resolve() == (ROOT / "VERSION").resolve(), name


def test_core_extras_name_every_plugin_distribution():
    extras = {canonicalize_name(k): v for k, v in project(ROOT)["optional-dependencies"].items()}
    plugins = set(distributions()) - {"lmcache-core"}
    for name in plugins:
        short = name.removeprefix("lmcache-plugin-")
        assert extras[canonicalize_name(short)] == [name]
    assert set(extras["all"]) == plugins - TESTING_ONLY


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(zf.read(meta).decode())


@pytest.mark.slow
def test_make_dist_builds_a_wheel_and_an_sdist_of_every_distribution(dist_dir):
    for name in distributions():
        assert wheel_path(dist_dir, name).is_file(), name
        assert (dist_dir / f"{name.replace('-', '_')}-{VERSION}.tar.gz").is_file(), name
        assert _metadata(wheel_path(dist_dir, name))["Version"] == VERSION
    core = _metadata(wheel_path(dist_dir, "lmcache-core"))
    assert {"fs", "s3", "all"} <= set(core.get_all("Provides-Extra"))
    by_extra = {}
    for line in core.get_all("Requires-Dist"):
        req = Requirement(line)
        for extra in ("fs", "s3"):
            if req.marker is not None and "extra" in str(req.marker) and req.marker.evaluate({"extra": extra}):
                by_extra.setdefault(extra, set()).add(req.name)
    assert by_extra == {"fs": {"lmcache-plugin-fs"}, "s3": {"lmcache-plugin-s3"}}


# -- a fresh virtual environment ----------------------------------------------------------


def _run(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


def _core_dependencies(wheel: Path) -> list[str]:
    """The core's own requirements (not its extras), as written in the wheel's metadata."""
    reqs = [Requirement(line) for line in _metadata(wheel).get_all("Requires-Dist")]
    return [str(r) for r in reqs if r.marker is None or "extra" not in str(r.marker)]


@contextmanager
def _serving(env_dir: Path, env: dict[str, str], cwd: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([str(env_dir / "bin" / "lmcache-server"), "--http-port", str(port), "--port",
                             str(free_port()), "--log-level", "WARNING"], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/plugins", proc)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def _group_headings(help_text: str) -> set[str]:
    return {line[:-1] for line in help_text.splitlines() if re.fullmatch(r"[A-Za-z][^:]*:", line)}


@pytest.mark.slow
def test_core_then_two_plugins_from_wheels_only_in_a_fresh_venv(dist_dir, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)  # no system site packages: nothing of the project's venv leaks in
    py = str(env_dir / "bin" / "python")
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("LMCACHE_", "PYTHON", "VIRTUAL_ENV")) and k != "COLUMNS"}
    base_env["PATH"] = f"{env_dir / 'bin'}:/usr/bin:/bin"
    base_env["HOME"] = str(tmp_path)
    base_env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    core_wheel = wheel_path(dist_dir, "lmcache-core")

    # 1. Third-party dependencies from the package index; 2. the core from dist/ only.
    # --no-compile: no .pyc for torch's thousands of modules up front (the slowest part of the install).
    _run([py, "-m", "pip", "install", "-q", "--no-compile", *_core_dependencies(core_wheel)], base_env)
    no_index = [py, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(dist_dir)]
    _run([*no_index, "lmcache-core"], base_env, timeout=300)
    assert "lmcache-plugin" not in _run([py, "-m", "pip", "freeze"], base_env).stdout
    with _serving(env_dir, base_env, tmp_path) as url:
        listing = httpx.get(f"{url}/plugins").json()
        assert all(p["builtin"] and p["distribution"] == "lmcache-core" for p in listing["plugins"])
        assert listing["failed"] == []
        assert httpx.get(f"{url}/healthcheck").status_code == 404

    # 3. Two plugins, chosen through the core's extras, from dist/ only.
    _run([*no_index, f"lmcache-core[{','.join(CHOSEN)}]"], base_env, timeout=300)
    installed = json.loads(_run([py, "-m", "pip", "list", "--format", "json"], base_env).stdout)
    ours = {p["name"]: p for p in installed if p["name"].startswith("lmcache")}
    assert set(ours) == {"lmcache-core", *(f"lmcache-plugin-{c}" for c in CHOSEN)}
    assert all(p["version"] == VERSION and "editable_project_location" not in p for p in ours.values())

    listed = json.loads(_run([str(env_dir / "bin" / "lmcache-server"), "plugins", "--json"], base_env).stdout)
    assert {p["name"] for p in listed["plugins"] if not p["builtin"]} == set(CHOSEN)

    version = _run([str(env_dir / "bin" / "lmcache-server"), "--version"], base_env).stdout.splitlines()
    assert version == [f"lmcache-server {VERSION} (lmcache-core)",
                       *sorted(f"lmcache-plugin-{c} {VERSION}" for c in CHOSEN)]

    # --help: exactly the groups the project's own install shows with only these plugins loaded.
    wide = {**base_env, "COLUMNS": "200"}
    fresh_help = _run([str(env_dir / "bin" / "lmcache-server"), "--help"], wide).stdout
    dev_env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")} | {"COLUMNS": "200"}
    dev = [sys.executable, "-m", "lmcache_core.cli"]
    chosen_help = _run([*dev, "--plugins", ",".join(CHOSEN), "--help"], dev_env).stdout
    all_help = _run([*dev, "--help"], dev_env).stdout
    assert _group_headings(fresh_help) == _group_headings(chosen_help)
    assert _group_headings(all_help) - _group_headings(fresh_help)  # other plugins' groups are absent

    with _serving(env_dir, base_env, tmp_path) as url:
        for route, status in CHOSEN_ROUTES.items():
            assert httpx.get(url + route).status_code == status, route
        for route in OTHER_ROUTES:
            assert httpx.get(url + route).status_code == 404, route
