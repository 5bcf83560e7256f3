"""``persist_enabled``: a restart rebuilds the index from the per-slot headers; torn slots are never served."""

from __future__ import annotations

import os
from pathlib import Path

from dax_support import MIB, OBJ, SLOT, TIMEOUT, device_file, gb, key, load_equal, make_adapter, payload, store

from lmcache_plugin_dax.adapter import DaxL2Adapter
from lmcache_plugin_dax.layout import HEADER_BYTES, MAGIC


def persistent(paths: list[str], **fields: object) -> DaxL2Adapter:
    return make_adapter(devices=[{"device_path": p, "max_dax_size_gb": gb(MIB)} for p in paths],
                        persist_enabled=True, **fields)


def patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read(path: str, offset: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def slot_of(adapter: DaxL2Adapter, n: int) -> int:
    with adapter._cond:
        return adapter._where[key(n)].index[key(n)]


def test_a_restart_recovers_every_object_with_its_bytes_and_salt(tmp_path: Path) -> None:
    path = device_file(tmp_path, "dax0.0")
    first = persistent([path])
    assert store(first, list(range(10))) == [True] * 10
    first.store([key(50, salt="alice")], [payload(50)]).result(TIMEOUT)
    assert first.delete([key(3)]).result(TIMEOUT) == [True]
    first.close()
    second = persistent([path])
    try:
        kept = [n for n in range(10) if n != 3]
        status = second.report_status()
        assert status["stored_object_count"] == 10 and status["supports_restart_recovery"] is True
        assert load_equal(second, kept) == [True] * 9
        assert load_equal(second, [3]) == [False]  # a deleted object does not come back
        assert second.usage().bytes_by_cache_salt == {"": 9 * SLOT, "alice": SLOT}
        # recovered slots are taken: new stores do not overwrite them
        assert store(second, [20, 21, 22]) == [True] * 3
        assert load_equal(second, [*kept, 20, 21, 22]) == [True] * 12
    finally:
        second.close()


def test_torn_slots_are_never_served(tmp_path: Path) -> None:
    path = device_file(tmp_path, "dax0.0")
    first = persistent([path])
    store(first, list(range(6)))
    slots = {n: slot_of(first, n) for n in range(6)}
    first.close()
    base = {n: slots[n] * SLOT for n in range(6)}
    patch(path, base[0] + HEADER_BYTES + OBJ // 2, b"\xff\x00\xff")  # payload half overwritten
    patch(path, base[1], b"\x00" * len(MAGIC))  # a store killed before its header was written
    patch(path, base[2] + 30, b"\x7f")  # a torn header (its generation)
    patch(path, base[3] + HEADER_BYTES + 5, bytes([read(path, base[3] + HEADER_BYTES + 5, 1)[0] ^ 1]))  # one bit
    second = persistent([path])
    try:
        assert second.report_status()["stored_object_count"] == 2
        assert second.lookup_and_lock([key(n) for n in range(6)]).result(TIMEOUT) == [False] * 4 + [True] * 2
        second.unlock([key(4), key(5)])
        assert load_equal(second, list(range(6))) == [False] * 4 + [True] * 2
        # the torn slots are free again and get reused
        assert store(second, list(range(100, 100 + MIB // SLOT - 2))) == [True] * (MIB // SLOT - 2)
    finally:
        second.close()


def test_the_newest_copy_of_a_key_wins_after_a_crash_mid_migration(tmp_path: Path) -> None:
    a, b = device_file(tmp_path, "dax0.0"), device_file(tmp_path, "dax1.0")
    adapter = persistent([a], hotplug_enabled=True, allowed_paths=[str(tmp_path)])
    store(adapter, [1, 2])
    before = read(a, 0, MIB)  # device A as a crash right after the copies would leave it
    adapter.apply_reconfigure("add", {"device_path": b, "size_bytes": MIB})
    result = adapter.apply_reconfigure("remove", {"device_path": a, "mode": "migrate", "force": False})
    assert result["moved_keys"] == 2
    adapter.close()
    assert read(a, 0, len(MAGIC)) != MAGIC  # the source's headers were cleared
    patch(a, 0, before)  # ... but the crash came before that
    second = persistent([a, b])
    try:
        assert second.report_status()["stored_object_count"] == 2
        devices = second.reconfigure_status()["devices"]
        assert [d["live_slot_count"] for d in devices] == [0, 2]  # from B: its copies are newer
        assert load_equal(second, [1, 2]) == [True, True]
        assert read(a, 0, len(MAGIC)) != MAGIC  # and A's stale copies are cleared
    finally:
        second.close()


def test_an_added_device_brings_its_objects_back(tmp_path: Path) -> None:
    a, b = device_file(tmp_path, "dax0.0"), device_file(tmp_path, "dax1.0")
    first = persistent([b])
    store(first, [7, 8])
    first.close()
    adapter = persistent([a], hotplug_enabled=True, allowed_paths=[str(tmp_path)])
    try:
        result = adapter.apply_reconfigure("add", {"device_path": b, "size_bytes": MIB})
        assert result["recovered_keys"] == 2
        assert adapter.report_status()["stored_object_count"] == 2
        assert load_equal(adapter, [7, 8]) == [True, True]
    finally:
        adapter.close()


def test_evicted_objects_do_not_come_back(tmp_path: Path) -> None:
    a = device_file(tmp_path, "dax0.0")
    adapter = persistent([a], hotplug_enabled=True, allowed_paths=[str(tmp_path)])
    store(adapter, [1, 2])
    adapter.apply_reconfigure("remove", {"device_path": a, "mode": "evict", "force": False})
    adapter.close()
    again = persistent([a])
    try:
        assert again.report_status()["stored_object_count"] == 0
    finally:
        again.close()


def test_without_persistence_a_restart_forgets_as_lmcache_does(tmp_path: Path) -> None:
    path = device_file(tmp_path, "dax0.0")
    first = make_adapter(device_path=path, max_dax_size_gb=gb(MIB))
    store(first, [1])
    first.close()
    assert read(path, 0, OBJ) == bytes(payload(1).tolist())  # payload at the slot's start, no header
    second = make_adapter(device_path=path, max_dax_size_gb=gb(MIB))
    try:
        assert second.report_status()["stored_object_count"] == 0
        assert os.path.getsize(path) == MIB
    finally:
        second.close()
