"""Fixtures for the fs adapter tests: adapters on real directories under ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lmcache_plugin_fs.adapter import FSAdapterConfig, FSL2Adapter

from lmcache_core.storage.l2.base import L2AdapterContext


@pytest.fixture
def make_fs(tmp_path: Path) -> Iterator[Callable[..., FSL2Adapter]]:
    """``make(base=tmp_path / "l2", start=True, workers=2, **config)``: an adapter, closed at teardown.

    ``workers`` is the server's default pool size (the context); ``config`` the fs keys.
    """
    made: list[FSL2Adapter] = []

    def make(base: Path | None = None, *, start: bool = True, workers: int = 2, **config: Any) -> FSL2Adapter:
        cfg = FSAdapterConfig(base_path=str(base or tmp_path / "l2"), **config)
        adapter = FSL2Adapter(cfg, L2AdapterContext(len(made), "fs", io_workers=workers))
        made.append(adapter)
        if start:
            adapter.start()
        return adapter

    yield make
    for adapter in made:
        adapter.close()
