"""Acceptance of the plugin author's kit (issue 16): an out-of-tree plugin, pip-installed into a fresh venv.

A test writes a third-party distribution, ``acme-lmcache``, in a temporary folder, from what the
docs give an author: the guide's worked L2 adapter (``examples/l2_memory``, renamed, as
``docs/l2-adapters.md`` says to start) plus a route group written against ``lmcache_core.api``
(a read of ``server.view``, an admin-guarded write keeping its count in
``server.plugin_state``, a strict body). It builds the wheel, creates a fresh virtual
environment and installs the wheel there (``--no-deps --no-index``). The environment sees the
core, its dependencies and the in-tree plugins through the project's site-packages (added
with ``site.addsitedir``, the installed editable core included): torch and the rest are not
downloaded again, which would take the better part of an hour on this machine
(``tests/test_wheels.py`` does that install from wheels only, for the core and two plugins).

In that environment:

* the plugin's own tests run: the L2 contract kit (``check_l2_adapter``) on its adapter, and
  the route kit (``lmcache_server_factory(argv=...)``, ``lmcache_http``,
  ``lmcache_openapi_check``) on its routes, with every installed plugin loaded;
* the core's test that used to fail on a third-party route, ``tests/test_http_security.py``, runs
  whole with the plugin installed (its guarded route is refused without the token), with the
  conformance module's check of its exclusions. The plugin's operations get the OpenAPI
  conformance check through the shipped ``lmcache_openapi_check`` in its own tests; the core's
  whole suite (and its full schemathesis run) inside this venv is too slow for one test.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "l2_memory"

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


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_an_out_of_tree_plugin_from_the_docs_installs_and_passes_both_kits_and_the_core_tests(tmp_path):
    pkg = write_plugin(tmp_path)
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LMCACHE_", "PYTHON", "VIRTUAL_ENV"))}
    env["HOME"] = str(tmp_path)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
         str(pkg)], env, tmp_path)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    purelib = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env, tmp_path).stdout.strip()
    # The project's site-packages after the venv's own (its .pth files too: the editable core).
    project_site = site.getsitepackages()[0]
    (Path(purelib) / "zz_lmcache_project.pth").write_text(f"import site; site.addsitedir({project_site!r})\n")
    run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--find-links", str(wheels), "acme-lmcache"],
        env, tmp_path)
    listed = run([py, "-m", "pip", "list", "--format", "freeze", "--path", purelib], env, tmp_path).stdout
    assert "acme-lmcache==1.0.0" in listed.splitlines()

    plugins = run([str(env_dir / "bin" / "python"), "-m", "lmcache_core.cli", "plugins", "--json"], env, tmp_path)
    assert '"acme"' in plugins.stdout and '"failed": []' in plugins.stdout

    # Its own tests (the installed package, not the source folder): both kits, in the fresh venv.
    shutil.rmtree(pkg / "src")
    run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg / "tests")], env, pkg)

    # The core's tests that a third-party route used to break, with the plugin installed.
    core = run([py, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "tests/test_http_security.py",
                "tests/test_openapi_conformance.py::test_every_excluded_operation_is_in_the_document"], env, ROOT)
    assert "failed" not in core.stdout and "error" not in core.stdout.lower(), core.stdout[-3000:]
    # the third-party route was there, classified by its guard and refused without the token
    assert "PASSED tests/test_http_security.py::test_every_other_guarded_route_refuses" in core.stdout
