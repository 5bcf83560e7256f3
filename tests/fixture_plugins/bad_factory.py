"""A plugin that registers an L2 type with a factory that is not callable."""

from typing import Any

from lmcache_core import hookimpl


@hookimpl
def lmcache_register_l2_adapters(register: Any) -> None:
    register("not-callable", dict, "nope")
