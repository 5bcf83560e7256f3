"""Wheels of every distribution, and a fresh venv with them plus a third-party plugin (issue 16).

Used by ``tests/test_wheels.py`` and ``tests/test_third_party_plugin.py`` (through the
session's ``dist_dir`` fixture in ``tests/conftest.py``) and, run as a script, by
``make test-thirdparty``.

The environment (:func:`make_env`): ``make dist`` wheels of the core and of every plugin, the
wheel of ``acme-lmcache`` (a third-party distribution written from the docs alone, see
:func:`write_plugin`), all installed with ``pip install --no-deps --no-index`` into a fresh
virtual environment, nothing editable. Only the third-party dependencies (torch, Litestar, ...)
come from the project's venv, which would take the better part of an hour to download again:
a folder of links to everything in the project's site-packages except the project's own
distributions and ``.pth`` files, named by a bare path line in a ``.pth`` of the fresh venv
(a bare path is put on ``sys.path`` without processing the ``.pth`` files in it, so the project's
editable finders never run and its ``lmcache*`` metadata is not seen).

``python tests/thirdparty_env.py [PYTEST_ARGS...]`` (``make test-thirdparty``) builds that
environment in a temporary folder and runs the core's whole suite with its python (``-P``, from
the repository root: the wheel-installed packages are imported, never the source folders; a
pytest plugin in the venv fails the run if any ``lmcache*`` package comes from elsewhere).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import venv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSION = (ROOT / "VERSION").read_text().strip()
EXAMPLE = ROOT / "examples" / "l2_memory"
PROBE = "lmcache_thirdparty_probe"

# Tests of the core's suite that cannot run in that environment, for reasons other than the
# third-party plugin (node id → reason); printed by `make test-thirdparty`. None today: the whole
# suite passes there, tests/test_wheels.py and tests/test_third_party_plugin.py included.
DESELECTED: dict[str, str] = {}


# -- wheels --------------------------------------------------------------------------------


def project(directory: Path) -> dict:
    """The ``[project]`` table of a distribution's pyproject.toml."""
    return tomllib.loads((directory / "pyproject.toml").read_text())["project"]


def distributions() -> dict[str, Path]:
    """Every distribution in the repository (name → directory), the core first; not the template."""
    dirs = [ROOT] + sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml") if p.parent.name != "_template")
    dirs += sorted(p.parent for p in ROOT.glob("lmcache_plugin_*/pyproject.toml"))
    return {project(d)["name"]: d for d in dirs}


def wheel_path(dist: Path, name: str) -> Path:
    return dist / f"{name.replace('-', '_')}-{VERSION}-py3-none-any.whl"


def build_dist(out: Path) -> Path:
    """``make dist`` into ``out``, with the Python running this (its setuptools and build)."""
    proc = subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "dist", f"DIST={out}", f"BIN={Path(sys.executable).parent}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


# -- the third-party plugin, from the docs -----------------------------------------------------

PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "acme-lmcache"
version = "1.0.0"
requires-python = ">=3.10"
dependencies = ["lmcache-core"]

[project.entry-points.lmcache]
acme = "acme_lmcache.plugin"

[tool.setuptools.packages.find]
where = ["src"]
"""

ROUTES = '''

# -- the route group (docs/plugins.md: a route group, the engine view, per-server state) ---------

from litestar import Router, get, post  # noqa: E402
from litestar.params import JSONBody  # noqa: E402

from lmcache_core.api import DETAIL, Engine, Server, error_envelope, require_admin  # noqa: E402


class Mark(msgspec.Struct, forbid_unknown_fields=True):
    by: int = msgspec.field(default=1)


@get("/figures", sync_to_thread=False)
def figures(engine: Engine) -> dict[str, Any]:
    view = engine.view
    return {"l1_capacity_bytes": view.l1().capacity_bytes,
            "acme_adapters": [f.index for f in view.l2() if f.type_name == TYPE_NAME]}


@post("/marks", sync_to_thread=False, guards=[require_admin], status_code=200)
def mark(data: JSONBody[Mark], server: Server) -> dict[str, int]:
    state = server.plugin_state("acme")
    state["marks"] = state.get("marks", 0) + data.by
    return {"marks": state["marks"]}


@hookimpl
def lmcache_register_routes(register: Any) -> None:
    register(Router("/acme", route_handlers=[figures, mark], opt=error_envelope(DETAIL)))
'''

PLUGIN_TESTS = '''
"""acme-lmcache's own tests: the contract kit on the adapter, the route kit on the routes."""

import itertools

import httpx

from acme_lmcache import plugin
from lmcache_core.api import L2AdapterContext
from lmcache_core.l2_contract import check_l2_adapter

_stores = itertools.count()


def test_the_adapter_keeps_the_l2_contract():
    store = f"acme-{next(_stores)}"

    def make():
        adapter = plugin.MemoryL2Adapter(plugin.MemoryConfig(store=store), L2AdapterContext(0, plugin.TYPE_NAME))
        adapter.start()
        return adapter

    report = check_l2_adapter(make, persistent=True)
    assert set(report.values()) == {"passed"}, report


def test_the_routes_answer_and_match_the_document(lmcache_server_factory, lmcache_http, lmcache_openapi_check):
    server = lmcache_server_factory(entry_points=True, argv=[
        "--l1-size-gb", "0.02", "--http-admin-token", "tok", "--l2-adapter", '{"type":"acme-memory"}'])
    url = lmcache_http(server)
    figures = httpx.get(f"{url}/acme/figures").json()
    assert figures["acme_adapters"] == [0] and figures["l1_capacity_bytes"] > 0
    assert httpx.post(f"{url}/acme/marks", json={"by": 2}).status_code == 401
    auth = {"Authorization": "Bearer tok"}
    assert httpx.post(f"{url}/acme/marks", json={"by": 2}, headers=auth).json() == {"marks": 2}
    assert httpx.post(f"{url}/acme/marks", json={"by": 3}, headers=auth).json() == {"marks": 5}
    refused = httpx.post(f"{url}/acme/marks", json={"by": 1, "typo": 1}, headers=auth)
    assert refused.status_code == 400 and "typo" in refused.json()["detail"]
    report = lmcache_openapi_check(url, paths=lambda p: p.startswith("/acme"), headers=auth, max_examples=10)
    assert report == {"GET /acme/figures": "passed", "POST /acme/marks": "passed"}
'''


def write_plugin(root: Path) -> Path:
    """The distribution an author makes from the docs: the example adapter renamed, plus a route group."""
    pkg = root / "acme-lmcache"
    src = pkg / "src" / "acme_lmcache"
    shutil.copytree(EXAMPLE / "src" / "lmcache_example_l2_memory", src,
                    ignore=shutil.ignore_patterns("__pycache__"))
    plugin = src / "plugin.py"
    text = plugin.read_text().replace('TYPE_NAME = "example-memory"', 'TYPE_NAME = "acme-memory"')
    plugin.write_text(text + ROUTES)
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "tests").mkdir()
    (pkg / "tests" / "test_acme.py").write_text(PLUGIN_TESTS)
    return pkg


# -- the fresh environment ---------------------------------------------------------------------

# Loaded with `-p` by every pytest run in the environment: the project's packages installed there
# must be imported from there (not from the source folders next to the tests, nor the project's
# editable install). plugins/_template is no distribution: its tests import it from its folder.
PROBE_SOURCE = '''\
"""The packages installed in this venv that a test run imported must come from it (tests/thirdparty_env.py)."""
import os
import sys
import sysconfig

import pytest

PREFIX = sys.prefix
PURELIB = sysconfig.get_paths()["purelib"]


def _outside():
    names = [n for n in sys.modules if "." not in n and n.startswith(("lmcache", "acme"))
             and os.path.isdir(os.path.join(PURELIB, n))]
    files = {n: getattr(sys.modules[n], "__file__", None) or str(getattr(sys.modules[n], "__path__", "")) for n in names}
    return {n: f for n, f in files.items() if not f.startswith(PREFIX + "/")}


def pytest_report_header(config):
    import lmcache_core
    return f"lmcache_core: {lmcache_core.__file__}"


def pytest_collection_finish(session):
    outside = _outside()
    if outside:
        raise pytest.UsageError(f"not imported from {PREFIX}: {outside}")


def pytest_sessionfinish(session):
    outside = _outside()
    if outside:
        print(f"\\nnot imported from {PREFIX}: {outside}", file=sys.stderr)
        session.exitstatus = 1
'''


@dataclass
class Env:
    root: Path  # the venv
    python: str
    purelib: Path
    environ: dict[str, str]  # for subprocesses: PYTHONSAFEPATH=1, the venv's bin first on PATH
    plugin: Path  # acme-lmcache's source folder (its tests/ included)


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}"
    return proc


def third_party_site(dest: Path) -> Path:
    """Links to every entry of the site-packages holding the core's dependencies, except the project's own."""
    import litestar

    source = Path(litestar.__file__).resolve().parents[1]  # the project's venv, also seen from a fresh one
    dest.mkdir()
    for entry in source.iterdir():
        name = entry.name.lower()
        if name.startswith(("lmcache", "__editable__", "__pycache__")) or name.endswith(".pth"):
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


def make_env(tmp: Path, dist: Path, home: Path | None = None) -> Env:
    """A fresh venv in ``tmp`` with every wheel of ``dist`` and acme-lmcache installed (module docstring)."""
    pkg = write_plugin(tmp)
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("LMCACHE_", "PYTHON", "VIRTUAL_ENV"))}
    if home is not None:
        environ["HOME"] = str(home)
    wheels = tmp / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
         str(pkg)], environ, tmp)

    env_dir = tmp / "venv"
    # No pip and no setuptools of its own: those of the project's venv (the linked site) run, and
    # pip installs into the venv of the python running it.
    venv.create(env_dir, with_pip=False)
    py = str(env_dir / "bin" / "python")
    environ |= {"PYTHONSAFEPATH": "1", "PATH": f"{env_dir / 'bin'}{os.pathsep}{environ.get('PATH', '/usr/bin:/bin')}"}
    purelib = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], environ,
                       tmp).stdout.strip())
    (purelib / "zz_lmcache_third_party.pth").write_text(f"{third_party_site(tmp / 'third-party-site')}\n")
    run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--find-links", str(dist), "--find-links",
         str(wheels), *distributions(), "acme-lmcache"], environ, tmp)
    (purelib / f"{PROBE}.py").write_text(PROBE_SOURCE)
    return Env(env_dir, py, purelib, environ, pkg)


def packages() -> list[str]:
    """The import packages of every distribution (``src/*`` of each plugin) and of acme-lmcache."""
    dirs = list(distributions().values())[1:]
    return ["lmcache_core", "acme_lmcache",
            *sorted(p.name for d in dirs for p in (d / "src").iterdir() if (p / "__init__.py").is_file())]


def origins(env: Env) -> dict[str, str]:
    """Where the venv's python, started in the repository root, imports each of :func:`packages` from."""
    code = ("import importlib, json, sys; "
            "print(json.dumps({n: importlib.import_module(n).__file__ for n in sys.argv[1:]}))")
    return json.loads(run([env.python, "-c", code, *packages()], env.environ, ROOT).stdout)


# -- make test-thirdparty ----------------------------------------------------------------------


def main(args: list[str]) -> int:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lmcache-thirdparty-") as tmp_name:
        tmp = Path(tmp_name)
        print(f"test-thirdparty: wheels of {len(distributions())} distributions (make dist) ...", flush=True)
        dist = build_dist(tmp / "dist")
        env = make_env(tmp, dist)
        where = origins(env)
        outside = {n: f for n, f in where.items() if not f.startswith(f"{env.root}/")}
        assert not outside, f"imported from outside the venv: {outside}"
        print(f"test-thirdparty: venv {env.root}; lmcache_core from {where['lmcache_core']}", flush=True)
        plugins = run([env.python, "-m", "lmcache_core.cli", "plugins", "--json"], env.environ, tmp).stdout
        assert '"acme"' in plugins and '"failed": []' in plugins, plugins
        print("test-thirdparty: acme-lmcache installed and loaded; the core's whole suite runs with it", flush=True)
        for node, reason in DESELECTED.items():
            print(f"test-thirdparty: deselected {node}: {reason}")
        deselect = [f"--deselect={node}" for node in DESELECTED]
        cmd = [env.python, "-P", "-m", "pytest", "-p", PROBE, "-p", "no:cacheprovider", *deselect, *args]
        rc = subprocess.run(cmd, cwd=ROOT, env=env.environ).returncode
    minutes = (time.monotonic() - start) / 60
    if rc == 5:
        print("test-thirdparty: pytest collected no tests", file=sys.stderr)
        return 1
    print(f"test-thirdparty: {'passed' if rc == 0 else f'FAILED (pytest exit {rc})'} in {minutes:.1f} min")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
