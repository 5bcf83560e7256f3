"""Acceptance of the plugin author's kit (issue 16): an out-of-tree plugin, pip-installed into a fresh venv.

``tests/thirdparty_env.py`` writes a third-party distribution, ``acme-lmcache``, in a temporary
folder, from what the docs give an author: the guide's worked L2 adapter
(``examples/l2_memory``, renamed, as ``docs/l2-adapters.md`` says to start) plus a route group
written against ``lmcache_core.api`` (a read of ``server.view``, an admin-guarded write keeping
its count in ``server.plugin_state``, a strict body). It builds that wheel and, with the
session's ``make dist`` (``dist_dir``), installs the core, every plugin and acme-lmcache from
wheels alone (``--no-deps --no-index``) into a fresh venv: nothing editable, the core imported
from the venv. Only the third-party dependencies (torch, Litestar, ...) come from the project's
site-packages (its ``lmcache*`` distributions and ``.pth`` files left out), which would take the
better part of an hour to download again (``tests/test_wheels.py`` does that install from the
index, for the core and two plugins).

In that environment:

* the plugin's own tests run: the L2 contract kit (``check_l2_adapter``) on its adapter, and
  the route kit (``lmcache_server_factory(argv=...)``, ``lmcache_http``,
  ``lmcache_openapi_check``) on its routes, with every installed plugin loaded;
* the core's test that used to fail on a third-party route, ``tests/test_http_security.py``, runs
  whole with the plugin installed (its guarded route is refused without the token), with the
  conformance module's check of its exclusions.

The core's *whole* suite with the plugin installed (~15 min) is ``make test-thirdparty``, the
same environment (CI runs it after ``make test``).
"""

from __future__ import annotations

import shutil

import thirdparty_env
from thirdparty_env import ROOT, run


def test_an_out_of_tree_plugin_from_the_docs_installs_and_passes_both_kits_and_the_core_tests(dist_dir, tmp_path):
    env = thirdparty_env.make_env(tmp_path, dist_dir, home=tmp_path)
    # The core, every plugin and acme's from the venv (the python started in the repository root).
    where = thirdparty_env.origins(env)
    assert where["lmcache_core"] == f"{env.purelib}/lmcache_core/__init__.py"
    assert all(f.startswith(f"{env.purelib}/") for f in where.values()), where
    listed = run([env.python, "-m", "pip", "list", "--format", "freeze", "--path", str(env.purelib)], env.environ,
                 tmp_path).stdout.splitlines()
    assert "acme-lmcache==1.0.0" in listed
    assert {f"{name}=={thirdparty_env.VERSION}" for name in thirdparty_env.distributions()} <= set(listed)

    plugins = run([env.python, "-m", "lmcache_core.cli", "plugins", "--json"], env.environ, tmp_path)
    assert '"acme"' in plugins.stdout and '"failed": []' in plugins.stdout

    # Its own tests (the installed package, not the source folder): both kits, in the fresh venv.
    shutil.rmtree(env.plugin / "src")
    run([env.python, "-m", "pytest", "-q", "-p", thirdparty_env.PROBE, "-p", "no:cacheprovider",
         str(env.plugin / "tests")], env.environ, env.plugin)

    # The core's tests that a third-party route used to break, with the plugin installed.
    core = run([env.python, "-m", "pytest", "-q", "-rA", "-p", thirdparty_env.PROBE, "-p", "no:cacheprovider",
                "tests/test_http_security.py",
                "tests/test_openapi_conformance.py::test_every_excluded_operation_is_in_the_document"],
               env.environ, ROOT)
    assert "failed" not in core.stdout and "error" not in core.stdout.lower(), core.stdout[-3000:]
    # the third-party route was there, classified by its guard and refused without the token
    assert "PASSED tests/test_http_security.py::test_every_other_guarded_route_refuses" in core.stdout
