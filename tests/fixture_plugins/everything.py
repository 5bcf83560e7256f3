"""A fixture plugin implementing every hookspec; tests assert the effect of each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import get

from lmcache_core import hookimpl

CALLS: list[str] = []


class MemConfig(msgspec.Struct, kw_only=True):
    capacity_bytes: int = 0


def make_mem_adapter(config: MemConfig, context: Any = None) -> dict[str, Any]:
    return {"config": config}


def make_fifo_policy() -> Any:
    from lmcache_core.storage.eviction import LRUPolicy

    return LRUPolicy()


@get("/fixture/hello", sync_to_thread=False)
def hello() -> dict[str, str]:
    return {"hello": "fixture"}


@hookimpl
def lmcache_add_options(parser: Any) -> None:
    group = parser.add_argument_group("fixture-everything", "Options of the fixture plugin.")
    group.add_argument("--fixture-greeting", default="hi", help="a greeting")


class EverythingConfig(msgspec.Struct, kw_only=True):
    """The fixture's config section (``--everything-level``, ``LMCACHE_EVERYTHING_LEVEL``)."""

    level: Annotated[int, msgspec.Meta(ge=1, le=9, description="a level from 1 to 9")] = 3
    loud: bool = False


@hookimpl
def lmcache_register_config(register: Any) -> None:
    register("everything", EverythingConfig, prefix="everything-", title="fixture everything")


@hookimpl
def lmcache_register_l2_adapters(register: Any) -> None:
    register("fixture-mem", MemConfig, make_mem_adapter)


@hookimpl
def lmcache_register_eviction_policies(register: Any) -> None:
    register("fixture-fifo", make_fifo_policy)


@hookimpl
def lmcache_register_routes(register: Any) -> None:
    register(hello)


@hookimpl
def lmcache_status(server: Any) -> dict[str, Any]:
    return {"fixture": {"greeting": "hi", "chunk_size": server.mp_config.chunk_size}}


def _mark(event: str) -> None:
    CALLS.append(event)
    path = os.environ.get("LMCACHE_FIXTURE_MARKER")
    if path:
        with Path(path).open("a") as f:
            f.write(event + "\n")


@hookimpl
def lmcache_startup(server: Any) -> None:
    _mark("startup")


@hookimpl
def lmcache_shutdown(server: Any) -> None:
    _mark("shutdown")
