"""The ``make_live`` fixture (see ``l2_live.py``); this folder joins ``sys.path`` so tests import ``l2_live``."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from l2_live import L2Live, LMCacheClient, parse_options, plugin_specs  # noqa: E402

from lmcache_core.testing import free_port  # noqa: E402


@pytest.fixture
def make_live(lmcache_server_factory: Any, lmcache_http: Any, tmp_path: Path) -> Iterator[Callable[..., L2Live]]:
    """``make(*argv, adapters=None, start=True)``: a served server; ``adapters`` defaults to one fs
    adapter on ``tmp_path / "l2"`` (pass ``[]`` for none); ``argv`` adds command-line options."""
    made: list[L2Live] = []

    def make(*argv: str, adapters: list[dict[str, Any]] | None = None, start: bool = True) -> L2Live:
        base = tmp_path / "l2"
        if adapters is None:
            adapters = [{"type": "fs", "base_path": str(base)}]
        port = free_port()
        args = ["--host", "127.0.0.1", "--port", str(port), "--worker-reap-timeout-seconds", "0",
                "--l1-size-gb", "0.1", *argv]
        for adapter in adapters:
            args += ["--l2-adapter", json.dumps(adapter)]
        server = lmcache_server_factory(plugin_specs(), options=parse_options(args), start=start)
        url = lmcache_http(server)
        stack = contextlib.ExitStack()
        client = LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=20)
        stack.callback(client.close)
        has_fs = any(a.get("type") == "fs" for a in adapters)
        first_fs = next((Path(a["base_path"]) for a in adapters if a.get("type") == "fs"), None)
        live = L2Live(server, url, first_fs if has_fs else None, client, stack)
        made.append(live)
        return live

    yield make
    for live in made:
        live.stack.close()
