"""The ``dax`` L2 adapter plugin: type ``dax`` (:mod:`lmcache_plugin_dax.adapter`) and its launcher flag.

``--l2-adapter '{"type": "dax", "device_path": "/dev/dax0.0", "max_dax_size_gb": 64, "slot_bytes": 33554432}'``
builds a :class:`~lmcache_plugin_dax.adapter.DaxL2Adapter`. With ``"hotplug_enabled": true`` its devices are
added, removed and resized at run time through ``/reconfigure/dax/...`` (the ``reconfigure`` route plugin).

``--dax-allowed-path DIR`` (repeatable; env ``LMCACHE_DAX_ALLOWED_PATH``, comma-separated) lets ``add`` map
paths under ``DIR`` as well as ``/dev/dax*``, for every ``dax`` adapter (each adapter's config
``allowed_paths`` adds its own).
"""

from __future__ import annotations

import argparse
from typing import Any

from lmcache_core import hookimpl
from lmcache_core.hookspecs import RegisterL2Adapter
from lmcache_plugin_dax.adapter import TYPE_NAME, DaxL2Adapter, make_adapter
from lmcache_plugin_dax.config import DaxAdapterConfig


@hookimpl
def lmcache_register_l2_adapters(register: RegisterL2Adapter) -> None:
    """Declare type ``dax``: config :class:`DaxAdapterConfig`, factory ``(config, context) -> DaxL2Adapter``."""
    register(TYPE_NAME, DaxAdapterConfig, make_adapter)


@hookimpl
def lmcache_add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dax plugin", "Device-DAX L2 adapters.")
    group.add_argument("--dax-allowed-path", action="append", default=[], metavar="DIR",
                       help="a directory under which POST /reconfigure/dax/add may map files or devices, besides "
                            "/dev/dax* (repeatable)")


@hookimpl
def lmcache_startup(server: Any) -> None:
    """Hand the launcher's allowed paths to every dax adapter (before the server serves)."""
    roots = getattr(server.options, "dax_allowed_path", None) or []
    storage = server.storage
    for adapter in storage.l2_adapters if storage is not None else []:
        if isinstance(adapter, DaxL2Adapter):
            adapter.allow_paths(roots)
