"""Import hygiene (issue 12): layers import downward, plugins use only the public API, the CLI needs no pytest.

* No module of ``lmcache_core`` imports the launcher (``lmcache_core.cli``).
* No cycle among the runtime imports of ``lmcache_core`` (module-level imports, not those
  under ``if TYPE_CHECKING:`` nor inside functions, which run after every module loaded).
* The in-tree plugins (``plugins/*/src``, ``lmcache_plugin_*/src``) import nothing from
  ``lmcache_core`` but ``lmcache_core.api`` (and the package root, for ``hookimpl``).
* ``lmcache-server bench`` and ``lmcache-server plugins`` run where pytest cannot be imported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "lmcache_core"
PLUGIN_SOURCES = sorted([*ROOT.glob("plugins/*/src"), *ROOT.glob("lmcache_plugin_*/src")])
ALLOWED_FROM_PLUGINS = {"lmcache_core", "lmcache_core.api", "lmcache_core.testing"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, *, runtime_only: bool) -> list[tuple[str, int]]:
    """``(module, line)`` for every absolute import of ``path`` (runtime only: module level, outside TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int]] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((alias.name, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((node.module, node.lineno))
                found.extend((f"{node.module}.{alias.name}", node.lineno) for alias in node.names)
            elif isinstance(node, ast.If):
                guarded = "TYPE_CHECKING" in ast.unparse(node.test)
                if not (runtime_only and guarded):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif not runtime_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(node.body)
            elif runtime_only and isinstance(node, ast.ClassDef):
                visit(node.body)

    visit(tree.body)
    return found


def core_modules() -> dict[str, Path]:
    return {module_name(p, ROOT): p for p in CORE.rglob("*.py")}


def test_no_core_module_imports_the_launcher():
    offenders = [f"{name}:{line}" for name, path in core_modules().items() if name != "lmcache_core.cli"
                 for module, line in imports(path, runtime_only=False)
                 if module == "lmcache_core.cli" or module.startswith("lmcache_core.cli.")]
    assert not offenders, f"lmcache_core modules importing lmcache_core.cli: {offenders}"


def test_no_cycle_among_runtime_imports():
    modules = core_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for module, _ in imports(path, runtime_only=True):
            # "from a.b import c" names a.b.c, which is a module or an attribute of a.b
            while module and module not in modules:
                module = module.rpartition(".")[0]
            if module and module != name and module != "lmcache_core":
                targets.add(module)
        graph[name] = targets
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert not cycles, "runtime import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("src", PLUGIN_SOURCES, ids=[str(p.relative_to(ROOT).parent) for p in PLUGIN_SOURCES])
def test_in_tree_plugins_import_only_the_public_api(src):
    offenders = []
    for path in sorted(src.rglob("*.py")):
        for module, line in imports(path, runtime_only=False):
            top = module.split(".")
            if top[0] != "lmcache_core":
                continue
            # "from lmcache_core.api import X" yields lmcache_core.api and lmcache_core.api.X
            if module in ALLOWED_FROM_PLUGINS or ".".join(top[:2]) in ALLOWED_FROM_PLUGINS - {"lmcache_core"} or (
                    len(top) == 2 and module == "lmcache_core.hookimpl"):
                continue
            offenders.append(f"{path.relative_to(ROOT)}:{line} {module}")
    assert not offenders, "imports from lmcache_core other than lmcache_core.api:\n" + "\n".join(offenders)


def test_the_launcher_runs_without_pytest(tmp_path):
    # A module named pytest that refuses to import stands for a plain install without the test extra.
    (tmp_path / "pytest.py").write_text("raise ImportError('pytest is not installed here')\n")
    code = ("import importlib, lmcache_core.cli, lmcache_core.testing, lmcache_core.bench.cli as b;"
            "[importlib.import_module(f'lmcache_core.bench.{n}') for n in b.available()];"
            "print('imported', len(b.available()))")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "imported" in out.stdout, out.stderr
    listing = subprocess.run([sys.executable, "-m", "lmcache_core.cli", "plugins"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0 and "core.routes" in listing.stdout, listing.stderr
