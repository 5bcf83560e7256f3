"""Benchmark: the ``dax`` L2 adapter beside raw ``memcpy`` into and out of the same mapping.

Devices are files in ``/dev/shm`` (memory, as DAX is; the system temp directory when there
is none), pre-faulted before anything is timed. Rows (one JSON object each):

* ``store`` / ``load`` of ``LMCACHE_BENCH_DAX_OBJECTS`` (8) objects of 32 MiB, per
  ``persist_enabled`` setting: the adapter through its public futures (``store`` of fresh
  keys, ``load`` into caller buffers) beside a raw ``ctypes.memmove`` of the same bytes into
  and out of the same slots of the adapter's own mapping; median of
  ``LMCACHE_BENCH_DAX_REPEATS`` (5) rounds, sides alternating. ``ratio`` = adapter GB/s / raw
  GB/s (target >= 0.9 without persistence; with it a store also computes the payload CRC32,
  so its row adds ``raw_crc_gbps``: memmove plus ``zlib.crc32``, the floor for that mode).
* ``migrate_remove``: ``POST``-equivalent ``remove {mode: migrate}`` of a device holding
  ``LMCACHE_BENCH_DAX_MIGRATE_MIB`` (1024) MiB in 32 MiB objects to a second device, beside a
  raw memmove of the same bytes between the two mappings; ``ratio`` = raw seconds / adapter
  seconds. Peak memory is about twice that size (two devices in ``/dev/shm``).

Run: ``lmcache-server bench dax`` or ``python -m lmcache_core.bench.dax``.
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from typing import Any

import torch

MIB = 1 << 20
OBJ_BYTES = 32 * MIB


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _device_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _device(directory: str, name: str, size: int) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _adapter(path: str, size: int, persist: bool, index: int, **fields: Any) -> Any:
    import msgspec

    from lmcache_core.storage.l2.base import L2AdapterContext
    from lmcache_plugin_dax.adapter import DaxL2Adapter
    from lmcache_plugin_dax.config import DaxAdapterConfig
    from lmcache_plugin_dax.layout import HEADER_BYTES

    slot = OBJ_BYTES + (HEADER_BYTES if persist else 0)
    config = msgspec.convert({"slot_bytes": slot, "persist_enabled": persist, "device_path": path,
                              "max_dax_size_gb": size / (1 << 30), "num_store_workers": 1, "num_lookup_workers": 1,
                              "num_load_workers": 1, **fields}, DaxAdapterConfig)
    adapter = DaxL2Adapter(config, L2AdapterContext(index, "dax"))
    adapter.start()
    return adapter


def _keys(n: int, start: int = 0) -> list[Any]:
    from lmcache_core.keys import ObjectKey

    return [ObjectKey(i.to_bytes(4, "big") * 8, "bench/dax", 0x01000100) for i in range(start, start + n)]


def _addr(t: torch.Tensor) -> int:
    return int(t.data_ptr())


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    if result is not None and not all(result):
        raise RuntimeError("adapter operation failed during the benchmark")
    return elapsed


def _store_load(directory: str, persist: bool, count: int, repeats: int) -> list[dict[str, Any]]:
    from lmcache_plugin_dax.layout import HEADER_BYTES

    poff = HEADER_BYTES if persist else 0
    slot = OBJ_BYTES + poff
    path = _device(directory, f"lmcache-bench-dax-{os.getpid()}-{int(persist)}", slot * count)
    adapter = _adapter(path, slot * count, persist, 0)
    src = torch.randint(0, 256, (OBJ_BYTES,), dtype=torch.uint8)
    outs = [torch.empty(OBJ_BYTES, dtype=torch.uint8) for _ in range(count)]
    keys = _keys(count)
    try:
        slots = [adapter.slot_address(path, i) + poff for i in range(count)]
        for a in slots:  # pre-fault every page of the device, and the output buffers
            ctypes.memmove(a, _addr(src), OBJ_BYTES)
        for out in outs:
            out.fill_(1)

        def raw_store() -> None:
            for a in slots:
                ctypes.memmove(a, _addr(src), OBJ_BYTES)

        def raw_crc_store() -> None:
            for a in slots:
                ctypes.memmove(a, _addr(src), OBJ_BYTES)
                zlib.crc32((ctypes.c_char * OBJ_BYTES).from_address(a))

        def raw_load() -> None:
            for a, out in zip(slots, outs):
                ctypes.memmove(_addr(out), a, OBJ_BYTES)

        times: dict[str, list[float]] = {k: [] for k in ("raw_store", "raw_crc_store", "dax_store", "raw_load",
                                                         "dax_load")}
        for r in range(repeats):
            adapter.delete(keys).result()
            sides = ["raw", "dax"] if r % 2 == 0 else ["dax", "raw"]
            for side in sides:
                if side == "raw":
                    times["raw_store"].append(_timed(raw_store))
                    if persist:
                        times["raw_crc_store"].append(_timed(raw_crc_store))
                else:
                    times["dax_store"].append(_timed(lambda: adapter.store(keys, [src] * count).result()))
            for side in sides:
                if side == "raw":
                    times["raw_load"].append(_timed(raw_load))
                else:
                    times["dax_load"].append(_timed(lambda: adapter.load(keys, outs).result()))
            if not all(torch.equal(out, src) for out in outs):
                raise RuntimeError("loaded bytes differ from stored bytes")
    finally:
        adapter.close()
        os.unlink(path)
    total = OBJ_BYTES * count
    rows = []
    for op in ("store", "load"):
        dax_s, raw_s = statistics.median(times[f"dax_{op}"]), statistics.median(times[f"raw_{op}"])
        row = {"bench": "dax", "op": op, "persist_enabled": persist, "object_bytes": OBJ_BYTES, "objects": count,
               "repeats": repeats, "dax_gbps": round(total / dax_s / 1e9, 3), "raw_gbps": round(total / raw_s / 1e9, 3),
               "ratio": round(raw_s / dax_s, 3)}
        if op == "store" and persist:
            crc_s = statistics.median(times["raw_crc_store"])
            row.update(raw_crc_gbps=round(total / crc_s / 1e9, 3), ratio_vs_raw_crc=round(crc_s / dax_s, 3))
        rows.append(row)
    return rows


def _migrate(directory: str, total_mib: int, persist: bool) -> dict[str, Any]:
    from lmcache_plugin_dax.layout import HEADER_BYTES

    poff = HEADER_BYTES if persist else 0
    slot = OBJ_BYTES + poff
    count = max(1, total_mib * MIB // OBJ_BYTES)
    size = slot * count
    a = _device(directory, f"lmcache-bench-dax-{os.getpid()}-a", size)
    b = _device(directory, f"lmcache-bench-dax-{os.getpid()}-b", size)
    adapter = _adapter(a, size, persist, 0, hotplug_enabled=True, allowed_paths=[directory])
    src = torch.randint(0, 256, (OBJ_BYTES,), dtype=torch.uint8)
    try:
        if not all(adapter.store(_keys(count), [src] * count).result()):  # fills device A
            raise RuntimeError("could not fill the source device")
        adapter.apply_reconfigure("add", {"device_path": b, "size_bytes": size})
        src_slots = [adapter.slot_address(a, i) + poff for i in range(count)]
        dst_slots = [adapter.slot_address(b, i) + poff for i in range(count)]  # free slots of B: raw copies
        raw_times = []
        for _ in range(2):  # the first pass also faults B's pages in; the second is timed like the migration
            t0 = time.perf_counter()
            for s, d in zip(src_slots, dst_slots):
                ctypes.memmove(d, s, OBJ_BYTES)
            raw_times.append(time.perf_counter() - t0)
        raw_s = raw_times[-1]
        t0 = time.perf_counter()
        result = adapter.apply_reconfigure("remove", {"device_path": a, "mode": "migrate", "force": False})
        dax_s = time.perf_counter() - t0
        if result["moved_keys"] != count:
            raise RuntimeError(f"migrated {result['moved_keys']} of {count} objects")
        out = torch.empty(OBJ_BYTES, dtype=torch.uint8)
        if adapter.load(_keys(1, count - 1), [out]).result() != [True] or not torch.equal(out, src):
            raise RuntimeError("a migrated object differs")
    finally:
        adapter.close()
        os.unlink(a)
        os.unlink(b)
    return {"bench": "dax", "op": "migrate_remove", "persist_enabled": persist, "bytes": count * OBJ_BYTES,
            "objects": count, "dax_seconds": round(dax_s, 4), "raw_copy_seconds": round(raw_s, 4),
            "dax_gbps": round(count * OBJ_BYTES / dax_s / 1e9, 3), "raw_gbps": round(count * OBJ_BYTES / raw_s / 1e9, 3),
            "ratio": round(raw_s / dax_s, 3)}


def run() -> list[dict[str, Any]]:
    """The rows described in the module docstring (empty when the dax plugin is not installed)."""
    try:
        import lmcache_plugin_dax  # noqa: F401
    except ImportError:
        return []
    directory = _device_dir()
    count = _env_int("LMCACHE_BENCH_DAX_OBJECTS", 8)
    repeats = _env_int("LMCACHE_BENCH_DAX_REPEATS", 5)
    migrate_mib = _env_int("LMCACHE_BENCH_DAX_MIGRATE_MIB", 1024)
    rows = _store_load(directory, False, count, repeats) + _store_load(directory, True, count, repeats)
    rows.append(_migrate(directory, migrate_mib, False))
    rows.append(_migrate(directory, migrate_mib, True))
    return rows


if __name__ == "__main__":
    for row in run():
        print(json.dumps(row))
