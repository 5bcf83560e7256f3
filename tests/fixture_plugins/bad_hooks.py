"""A plugin whose route registration raises and whose status hook raises."""

from typing import Any

from lmcache_core import hookimpl


@hookimpl
def lmcache_register_routes(register: Any) -> None:
    raise ValueError("cannot build routes")
