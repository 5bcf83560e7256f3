"""``make_live(*argv, adapters=None, start=True)``: a served server (see ``api056_live.py``); this folder joins
``sys.path`` so tests import ``api056_live``."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api056_live import Live, plugin_specs  # noqa: E402

from lmcache_core.cli import build_parser  # noqa: E402
from lmcache_core.client import LMCacheClient  # noqa: E402
from lmcache_core.plugins import PluginHost  # noqa: E402
from lmcache_core.testing import free_port  # noqa: E402


@pytest.fixture
def make_live(lmcache_server_factory: Any, lmcache_http: Any, tmp_path: Path) -> Iterator[Callable[..., Live]]:
    made: list[Live] = []

    def make(*argv: str, adapters: list[dict[str, Any]] | None = None, start: bool = True) -> Live:
        base = tmp_path / f"l2-{len(made)}"
        if adapters is None:
            adapters = [{"type": "fs", "base_path": str(base)}, {"type": "memory"}, {"type": "knob"}]
        port = free_port()
        args = ["--host", "127.0.0.1", "--port", str(port), "--worker-reap-timeout-seconds", "0",
                "--l1-size-gb", "0.1", *argv]
        for adapter in adapters:
            args += ["--l2-adapter", json.dumps(adapter)]
        host = PluginHost(load_entry_points=False, extra_plugins=plugin_specs())
        options = build_parser(host, environ={}).parse_args(args)
        server = lmcache_server_factory(plugin_specs(), options=options, start=start)
        stack = contextlib.ExitStack()
        live = Live(server, lmcache_http(server), base, stack)
        if start:
            live.client = LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=20)
            stack.callback(live.client.close)
        made.append(live)
        return live

    yield make
    for live in made:
        live.stack.close()
