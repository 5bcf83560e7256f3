"""Core's built-in eviction policies, registered through the same hook a third party uses."""

from __future__ import annotations

from typing import Any

from lmcache_core import hookimpl


@hookimpl
def lmcache_register_eviction_policies(register: Any) -> None:
    from lmcache_core.storage.eviction import IsolatedLRUPolicy, LRUPolicy, NoopPolicy

    for policy in (LRUPolicy, IsolatedLRUPolicy, NoopPolicy):
        register(policy.name, policy)
