"""Shared fixtures: throwaway plugin distributions discovered through real entry points; the wheels."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import support  # noqa: F401  (puts the fixture plugins on sys.path)
import thirdparty_env
from lmcache_core.testing import write_dist


@pytest.fixture
def fake_dists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """``add(dist_name, {ep_name: "module"})``: a throwaway distribution on ``sys.path``."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def add(dist_name: str, entry_points: dict[str, str], version: str = "1.0") -> Path:
        return write_dist(root, dist_name, entry_points, version)

    add.root = root  # type: ignore[attr-defined]
    yield add


@pytest.fixture(scope="session")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``make dist`` into a temporary folder, once a session (test_wheels, test_third_party_plugin)."""
    return thirdparty_env.build_dist(tmp_path_factory.mktemp("dist"))
