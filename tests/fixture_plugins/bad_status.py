"""A plugin whose status hook raises."""

from typing import Any

from lmcache_core import hookimpl


@hookimpl
def lmcache_status(server: Any) -> dict:
    raise RuntimeError("status exploded")
