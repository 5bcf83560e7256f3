"""Meta-tests: every hookspec is documented (with its exact arguments) and exercised by a test."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import everything
from lmcache_core import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def hookspec_names() -> list[str]:
    return sorted(n for n, f in vars(hookspecs).items() if n.startswith("lmcache_") and callable(f))


def test_there_are_hookspecs():
    assert len(hookspec_names()) >= 7


@pytest.mark.parametrize("name", hookspec_names())
def test_hookspec_is_documented_with_its_arguments(name):
    params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    headings = re.findall(r"^### `([^`]+)`", DOCS.read_text(), flags=re.M)
    assert f"{name}({params})" in headings, f"docs/plugins.md lacks a '### `{name}({params})`' section"


@pytest.mark.parametrize("name", hookspec_names())
def test_hookspec_has_a_docstring(name):
    assert (getattr(hookspecs, name).__doc__ or "").strip()


@pytest.mark.parametrize("name", hookspec_names())
def test_hookspec_is_exercised_by_the_fixture_plugin(name):
    # tests/fixture_plugins/everything.py implements every hook, and
    # test_plugin_host.py / test_cli.py assert the effect of each implementation.
    assert hasattr(everything, name), f"fixture plugin 'everything' does not implement {name}"
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py") if p.name != Path(__file__).name)
    assert name in tests, f"no test names {name}"
