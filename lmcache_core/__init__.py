"""lmcache-server core: the engine, the plugin host and the plugin contract.

A plugin implements hooks from :mod:`lmcache_core.hookspecs` with the
:data:`hookimpl` marker and exposes its module through the ``lmcache``
entry-point group.
"""

from __future__ import annotations

import warnings

import pluggy

# torch warns at import when NumPy is absent; lmcache-server does not use NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

PROJECT_NAME = "lmcache"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations: ``@hookimpl def lmcache_register_routes(register): ...``."""

try:
    from importlib.metadata import version as _dist_version

    __version__ = _dist_version("lmcache-core")
except Exception:  # not installed (running from a source tree)
    __version__ = "0.0.0"

__all__ = ["PROJECT_NAME", "hookimpl", "__version__"]
