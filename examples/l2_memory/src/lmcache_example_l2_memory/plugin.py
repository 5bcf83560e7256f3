"""L2 adapter type ``example-memory``: the worked example of ``docs/l2-adapters.md``.

Everything an adapter needs, in one small file, using only :mod:`lmcache_core.api`:

* a config Struct deriving from :class:`L2AdapterConfig` (``--l2-adapter`` JSON decodes into
  it; unknown keys are refused because the base forbids them);
* the five blocking methods (``_put``, ``_get``, ``_size``, ``_remove``, ``_list``), each
  for one object, called concurrently from the adapter's ``io_workers`` threads, so the
  shared dict is guarded by a lock;
* the backend's own capacity passed to ``super().__init__`` and a full backend signalled
  with :class:`L2Full` (a skip, not a failure);
* a listing with a stable cursor: keys in object-name order, the cursor is the last name
  returned, so every key stored before a listing starts is listed exactly once;
* ``_recover`` so usage is right after a restart (here: when the process-wide store
  outlives the adapter instance, as the contract kit's persistence check needs).
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

import msgspec

from lmcache_core.api import (
    GIB,
    L2Adapter,
    L2AdapterConfig,
    L2AdapterContext,
    L2Full,
    ObjectKey,
    hookimpl,
    object_name,
    object_name_prefix,
    parse_object_name,
)

TYPE_NAME = "example-memory"


class MemoryConfig(L2AdapterConfig, kw_only=True, forbid_unknown_fields=True):
    """``{"type": "example-memory", "capacity_mb": 64, "store": "default"}``."""

    capacity_mb: int = msgspec.field(default=64)
    store: str = "default"  # instances naming the same store share it (a restart keeps what was stored)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.capacity_mb <= 0:
            raise ValueError("capacity_mb must be positive")


class _Store:
    """One named store: object name -> bytes, the names kept sorted for listing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, bytes] = {}
        self.names: list[str] = []
        self.used = 0


_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


def _store(name: str) -> _Store:
    with _STORES_LOCK:
        return _STORES.setdefault(name, _Store())


class MemoryL2Adapter(L2Adapter):
    """Objects in memory, named as LMCache names S3 objects (``model@rank@group@hash[@salt]``)."""

    def __init__(self, config: MemoryConfig, context: L2AdapterContext) -> None:
        # The backend's capacity is what usage and L2 eviction compare with.
        super().__init__(config, context, capacity_bytes=config.capacity_mb << 20)
        self._s = _store(config.store)

    def _put(self, key: ObjectKey, data: memoryview) -> None:
        name = object_name(key)
        with self._s.lock:
            old = self._s.objects.get(name)
            grow = data.nbytes - (len(old) if old is not None else 0)
            if self._s.used + grow > self.max_capacity_bytes:
                raise L2Full(f"{self._s.used} of {self.max_capacity_bytes} bytes used")
            self._s.objects[name] = bytes(data)  # one assignment: a reader never sees half an object
            if old is None:
                bisect.insort(self._s.names, name)
            self._s.used += grow

    def _get(self, key: ObjectKey, out: memoryview) -> bool:
        with self._s.lock:
            data = self._s.objects.get(object_name(key))
        if data is None or len(data) != out.nbytes:
            return False  # absent, or another size: a miss, never a partial copy
        out[:] = data
        return True

    def _size(self, key: ObjectKey) -> int | None:
        with self._s.lock:
            data = self._s.objects.get(object_name(key))
        return None if data is None else len(data)

    def _remove(self, key: ObjectKey) -> int | None:
        name = object_name(key)
        with self._s.lock:
            data = self._s.objects.pop(name, None)
            if data is None:
                return None
            del self._s.names[bisect.bisect_left(self._s.names, name)]
            self._s.used -= len(data)
        return len(data)

    def _list(self, model_name: str | None, cursor: str | None, limit: int) -> tuple[list[tuple[ObjectKey, int]],
                                                                                   str | None]:
        if cursor is not None:
            try:
                parse_object_name(cursor)  # our cursors are object names; anything else was not handed out
            except ValueError:
                raise ValueError("malformed page token") from None
        prefix = object_name_prefix(model_name) if model_name else ""
        out: list[tuple[ObjectKey, int]] = []
        with self._s.lock:
            names = self._s.names
            i = bisect.bisect_right(names, cursor) if cursor else bisect.bisect_left(names, prefix)
            while i < len(names) and len(out) < limit and names[i].startswith(prefix):
                out.append((parse_object_name(names[i]), len(self._s.objects[names[i]])))
                i += 1
            more = i < len(names) and names[i].startswith(prefix)
        return out, (object_name(out[-1][0]) if more and out else None)

    def _recover(self) -> list[tuple[ObjectKey, int]]:
        with self._s.lock:
            return [(parse_object_name(n), len(self._s.objects[n])) for n in self._s.names]

    def _status(self) -> dict[str, Any]:
        return {"store": self.config.store, "capacity_gb": self.max_capacity_bytes / GIB}


@hookimpl
def lmcache_register_l2_adapters(register: Any) -> None:
    register(TYPE_NAME, MemoryConfig, MemoryL2Adapter)
