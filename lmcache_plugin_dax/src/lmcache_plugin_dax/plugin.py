"""The ``dax`` L2 adapter plugin: type ``dax`` (:mod:`lmcache_plugin_dax.adapter`) and its launcher option.

``--l2-adapter '{"type": "dax", "device_path": "/dev/dax0.0", "max_dax_size_gb": 64, "slot_bytes": 33554432}'``
builds a :class:`~lmcache_plugin_dax.adapter.DaxL2Adapter`. With ``"hotplug_enabled": true`` its devices are
added, removed and resized at run time through ``/reconfigure/dax/...`` (the ``reconfigure`` route plugin).

Config section ``dax`` (``GET /conf``): ``--dax-allowed-paths DIR [DIR ...]`` (env
``LMCACHE_DAX_ALLOWED_PATHS``, items separated by commas or blanks) lets ``add`` map paths under
each ``DIR`` as well as ``/dev/dax*``, for every ``dax`` adapter (each adapter's config
``allowed_paths`` adds its own). Relative paths or ``..`` segments are a startup error.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import msgspec

from lmcache_core.api import CacheServer, RegisterConfig, RegisterL2Adapter, hookimpl
from lmcache_plugin_dax.adapter import TYPE_NAME, DaxL2Adapter, make_adapter
from lmcache_plugin_dax.config import DaxAdapterConfig

CONFIG_NAME = "dax"


class DaxPluginConfig(msgspec.Struct, kw_only=True):
    """The launcher's settings for every ``dax`` adapter."""

    allowed_paths: Annotated[list[str], msgspec.Meta(
        description="directories under which POST /reconfigure/dax/add may map files or devices, besides /dev/dax*",
        extra={"metavar": "DIR"})] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        for root in self.allowed_paths:
            if not os.path.isabs(root) or ".." in root.split("/"):
                raise ValueError(f"dax allowed paths must be absolute without '..', got {root!r}")


@hookimpl
def lmcache_register_l2_adapters(register: RegisterL2Adapter) -> None:
    """Declare type ``dax``: config :class:`DaxAdapterConfig`, factory ``(config, context) -> DaxL2Adapter``."""
    register(TYPE_NAME, DaxAdapterConfig, make_adapter)


@hookimpl
def lmcache_register_config(register: RegisterConfig) -> None:
    register(CONFIG_NAME, DaxPluginConfig, prefix="dax-", title="dax plugin")


@hookimpl
def lmcache_startup(server: CacheServer) -> None:
    """Hand the launcher's allowed paths to every dax adapter (before the server serves)."""
    config: Any = server.configs.get(CONFIG_NAME)
    roots = list(getattr(config, "allowed_paths", None) or [])
    storage = server.storage
    for adapter in storage.l2_adapters if storage is not None else []:
        if isinstance(adapter, DaxL2Adapter):
            adapter.allow_paths(roots)
