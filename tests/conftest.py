"""Shared fixtures: throwaway plugin distributions discovered through real entry points."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import support  # noqa: F401  (puts the fixture plugins on sys.path)
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
