"""The ``fs`` L2 adapter plugin: registers the filesystem adapter type.

``--l2-adapter '{"type": "fs", "base_path": "/data/l2"}'`` then builds an
:class:`~lmcache_plugin_fs.adapter.FSL2Adapter`; see that module for the
config keys, the on-disk format (LMCache's) and the write guarantees.
"""

from __future__ import annotations

from lmcache_core.api import RegisterL2Adapter, hookimpl
from lmcache_plugin_fs.adapter import TYPE_NAME, FSAdapterConfig, make_adapter


@hookimpl
def lmcache_register_l2_adapters(register: RegisterL2Adapter) -> None:
    """Declare type ``fs``: config :class:`FSAdapterConfig`, factory ``(config, context) -> FSL2Adapter``."""
    register(TYPE_NAME, FSAdapterConfig, make_adapter)
