"""Registers an eviction policy named "LRU", which core already registers."""

from typing import Any

from lmcache_core import hookimpl


@hookimpl
def lmcache_register_eviction_policies(register: Any) -> None:
    register("LRU", lambda: None)
