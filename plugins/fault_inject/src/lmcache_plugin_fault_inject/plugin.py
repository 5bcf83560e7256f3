"""The ``fault_inject`` L2 adapter plugin: registers the wrapper type.

``--l2-adapter '{"type": "fault_inject", "inner": {"type": "fs", "base_path": "/tmp/l2"},
"faults": {"store": {"fail_rate": 0.1}}}'`` builds a
:class:`~lmcache_plugin_fault_inject.adapter.FaultInjectL2Adapter` around an ``fs``
adapter; see that module (and the README) for the keys and the runtime switches.
"""

from __future__ import annotations

from lmcache_core.api import RegisterL2Adapter, hookimpl
from lmcache_plugin_fault_inject.adapter import TYPE_NAME, FaultInjectConfig, make_adapter


@hookimpl
def lmcache_register_l2_adapters(register: RegisterL2Adapter) -> None:
    """Declare type ``fault_inject``: config :class:`FaultInjectConfig`, factory ``make_adapter``."""
    register(TYPE_NAME, FaultInjectConfig, make_adapter)
