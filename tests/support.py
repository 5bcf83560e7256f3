"""Helpers for the core test suite (importable: ``tests`` is on pytest's pythonpath)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

FIXTURE_PLUGINS = Path(__file__).parent / "fixture_plugins"
if str(FIXTURE_PLUGINS) not in sys.path:
    sys.path.insert(0, str(FIXTURE_PLUGINS))


def subprocess_env(extra_paths: list[Path], **env: str) -> dict[str, str]:
    """The environment for a child ``lmcache-server``: fixture dists and modules importable."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    paths = [str(p) for p in extra_paths] + [str(FIXTURE_PLUGINS)]
    if out.get("PYTHONPATH"):
        paths.append(out["PYTHONPATH"])
    out["PYTHONPATH"] = os.pathsep.join(paths)
    out.update(env)
    return out
