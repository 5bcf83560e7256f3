"""The dax adapter's data path on real files standing in for devices: config, slots, store/lookup/load/delete."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
import torch
from dax_support import MIB, OBJ, SLOT, TIMEOUT, device_file, gb, key, load_equal, make_adapter, make_config, \
    payload, store

from lmcache_core.api import L2AdapterContext
from lmcache_plugin_dax.adapter import DaxL2Adapter
from lmcache_plugin_dax.layout import HEADER_BYTES


def one_device(tmp_path: Path, size: int = MIB, **fields: object) -> DaxL2Adapter:
    return make_adapter(device_path=device_file(tmp_path, "dax0.0", size), max_dax_size_gb=gb(size), **fields)


@pytest.mark.parametrize("fields, message", [
    ({}, "devices may be empty only when hotplug_enabled is true"),
    ({"devices": []}, "devices may be empty only when hotplug_enabled is true"),
    ({"device_path": "/x"}, "needs both device_path and max_dax_size_gb"),
    ({"device_path": "/x", "max_dax_size_gb": 1, "devices": []}, "not both"),
    ({"devices": [{"device_path": "/x", "max_dax_size_gb": 1e-9}]}, "does not fit one slot"),
    ({"devices": [{"device_path": "", "max_dax_size_gb": 1}]}, "non-empty path"),
    ({"hotplug_enabled": True, "slot_bytes": 0}, "slot_bytes must be a positive number"),
    ({"hotplug_enabled": True, "slot_bytes": 4096, "persist_enabled": True}, "must exceed the 4096-byte"),
    ({"hotplug_enabled": True, "num_load_workers": 0}, "num_load_workers"),
    ({"hotplug_enabled": True, "watch_interval_seconds": 0}, "watch_interval_seconds"),
    ({"hotplug_enabled": True, "allowed_paths": ["relative/dir"]}, "absolute"),
    ({"hotplug_enabled": True, "allowed_paths": ["/a/../etc"]}, "absolute"),
    ({"hotplug_enabled": True, "max_capacity_gb": 1}, "max_capacity_gb does not apply"),
])
def test_config_errors_name_the_problem(fields: dict[str, object], message: str) -> None:
    with pytest.raises((ValueError, msgspec.ValidationError), match=message):
        make_config(**fields)


def test_unknown_config_key_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `bogus`"):
        make_config(hotplug_enabled=True, bogus=1)


def test_both_config_forms_map_their_devices(tmp_path: Path) -> None:
    legacy = one_device(tmp_path / "a")
    multi = make_adapter(1, devices=[{"device_path": device_file(tmp_path / "b", f"dax{i}.0"),
                                      "max_dax_size_gb": gb(MIB)} for i in range(2)])
    try:
        assert [d["state"] for d in legacy.reconfigure_status()["devices"]] == ["active"]
        assert [d["max_slots"] for d in multi.reconfigure_status()["devices"]] == [MIB // SLOT] * 2
        assert multi.usage().total_capacity_bytes == 2 * (MIB // SLOT) * SLOT == multi.max_capacity_bytes
        assert multi.report_status()["type"] == "dax"
    finally:
        legacy.close()
        multi.close()


def test_a_size_beyond_the_file_is_a_startup_error(tmp_path: Path) -> None:
    path = device_file(tmp_path, "dax0.0", MIB)
    with pytest.raises(ValueError, match=r"exceeds the device's 1048576 bytes"):
        make_adapter(device_path=path, max_dax_size_gb=gb(2 * MIB))
    with pytest.raises(FileNotFoundError):
        make_adapter(device_path=str(tmp_path / "missing"), max_dax_size_gb=gb(MIB))
    # the failed adapters released the device: a new one maps it
    make_adapter(device_path=path, max_dax_size_gb=gb(MIB)).close()


def test_two_adapters_cannot_map_one_device(tmp_path: Path) -> None:
    path = device_file(tmp_path, "dax0.0")
    first = make_adapter(0, device_path=path, max_dax_size_gb=gb(MIB))
    try:
        with pytest.raises(Exception, match="already mapped by L2 adapter dax:0"):
            make_adapter(1, device_path=path, max_dax_size_gb=gb(MIB))
    finally:
        first.close()
    make_adapter(1, device_path=path, max_dax_size_gb=gb(MIB)).close()  # released at close


def test_store_lookup_load_delete_round_trip(tmp_path: Path) -> None:
    adapter = one_device(tmp_path)
    try:
        ns = list(range(10))
        assert store(adapter, ns) == [True] * 10
        assert adapter.lookup_and_lock([key(n) for n in [*ns, 99]]).result(TIMEOUT) == [True] * 10 + [False]
        adapter.unlock([key(n) for n in ns])
        assert load_equal(adapter, [*ns, 99]) == [True] * 10 + [False]
        # a buffer of another size is a miss, not a partial copy
        short = torch.zeros(OBJ - 1, dtype=torch.uint8)
        assert adapter.load([key(0)], [short]).result(TIMEOUT) == [False]
        assert adapter.delete([key(0), key(1)]).result(TIMEOUT) == [True, True]
        assert load_equal(adapter, [0, 1, 2]) == [False, False, True]
        assert adapter.report_status()["stored_object_count"] == 8
    finally:
        adapter.close()


def test_usage_counts_slots_not_payload(tmp_path: Path) -> None:
    adapter = one_device(tmp_path)
    try:
        assert store(adapter, [1], size=100) == [True]
        adapter.store([key(2, salt="alice")], [payload(2, 100)]).result(TIMEOUT)
        usage = adapter.usage()
        assert usage.total_bytes_used == 2 * SLOT
        assert usage.bytes_by_cache_salt == {"": SLOT, "alice": SLOT}
        assert adapter.report_status()["current_size_bytes"] == 2 * SLOT
    finally:
        adapter.close()


def test_full_device_fails_the_store_and_an_oversized_object_is_refused(tmp_path: Path) -> None:
    adapter = one_device(tmp_path)
    try:
        slots = MIB // SLOT
        assert store(adapter, list(range(slots))) == [True] * slots
        assert store(adapter, [slots]) == [False]
        failures = adapter.failures["store"]
        assert adapter.store([key(500)], [payload(500, SLOT + 1)]).result(TIMEOUT) == [False]
        assert adapter.failures["store"] == failures + 1  # too big is a fault; a full device may be a skip
        # a deleted key's slot is reused
        assert adapter.delete([key(0)]).result(TIMEOUT) == [True]
        assert store(adapter, [slots]) == [True]
        assert load_equal(adapter, list(range(1, slots + 1))) == [True] * slots
    finally:
        adapter.close()


def test_storing_a_stored_key_again_writes_nothing(tmp_path: Path) -> None:
    adapter = one_device(tmp_path)
    try:
        assert store(adapter, [1]) == [True]
        # same key, other bytes: the slot keeps the first (keys are content-addressed, as LMCache)
        assert adapter.store([key(1)], [payload(2)]).result(TIMEOUT) == [True]
        assert load_equal(adapter, [1]) == [True]
        assert adapter.usage().total_bytes_used == SLOT
    finally:
        adapter.close()


def test_new_keys_go_to_the_device_with_most_free_slots(tmp_path: Path) -> None:
    adapter = make_adapter(devices=[{"device_path": device_file(tmp_path, "dax0.0"), "max_dax_size_gb": gb(MIB)},
                                    {"device_path": device_file(tmp_path, "dax1.0", 2 * MIB),
                                     "max_dax_size_gb": gb(2 * MIB)}])
    try:
        per_device = MIB // SLOT
        store(adapter, list(range(per_device)))
        live = [d["live_slot_count"] for d in adapter.reconfigure_status()["devices"]]
        # the bigger device takes new keys until both have the same room, then they alternate
        assert live[1] >= live[0] and sum(live) == per_device
        assert abs((per_device - live[0]) - (2 * per_device + 1 - live[1])) <= 1
    finally:
        adapter.close()


def test_a_slot_is_reused_only_after_its_last_reader(tmp_path: Path) -> None:
    adapter = one_device(tmp_path, size=SLOT)  # one slot
    try:
        assert store(adapter, [1]) == [True]
        with adapter._cond:
            device, slot, _, mapping = adapter._borrow(key(1))  # a reader copying out of the slot
        assert adapter.delete([key(1)]).result(TIMEOUT) == [True]
        assert store(adapter, [2]) == [False]  # the only slot is still being read
        with adapter._cond:
            adapter._give_back(device, slot, mapping)
        assert store(adapter, [2]) == [True]
        assert load_equal(adapter, [2]) == [True]
    finally:
        adapter.close()


def test_lookup_locks_pin_keys_against_delete(tmp_path: Path) -> None:
    adapter = one_device(tmp_path)
    try:
        store(adapter, [1])
        assert adapter.lookup_and_lock([key(1)]).result(TIMEOUT) == [True]
        assert adapter.delete([key(1)]).result(TIMEOUT) == [False]
        adapter.unlock([key(1)])
        assert adapter.delete([key(1)]).result(TIMEOUT) == [True]
    finally:
        adapter.close()


def test_listing_pages_through_every_key(tmp_path: Path) -> None:
    adapter = one_device(tmp_path)
    try:
        store(adapter, list(range(7)))
        seen, token = [], None
        for _ in range(10):
            page = adapter.list_keys(page_size=3, page_token=token)
            seen += [e.key.to_object_key() for e in page.entries]
            assert all(e.size_bytes == OBJ for e in page.entries)
            token = page.next_page_token
            if token is None:
                break
        assert sorted(seen, key=lambda k: k.chunk_hash) == [key(n) for n in range(7)]
        assert adapter.list_keys(model_name="other").entries == []
        with pytest.raises(ValueError, match="malformed page token"):
            adapter.list_keys(page_token="x")
    finally:
        adapter.close()


def test_persistent_slots_carry_a_header_before_the_payload(tmp_path: Path) -> None:
    path = device_file(tmp_path, "dax0.0")
    adapter = make_adapter(device_path=path, max_dax_size_gb=gb(MIB), persist_enabled=True)
    try:
        store(adapter, [1])
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES + OBJ)
        assert head[:8] == b"LMCDAX01"
        assert head[HEADER_BYTES:] == bytes(payload(1).tolist())
    finally:
        adapter.close()
    assert os.path.getsize(path) == MIB  # the file is never resized by the adapter


def test_a_readonly_source_buffer_is_stored(tmp_path: Path) -> None:
    adapter = one_device(tmp_path)
    try:
        data = bytes(payload(3).tolist())
        assert adapter.store([key(3)], [data]).result(TIMEOUT) == [True]
        assert load_equal(adapter, [3]) == [True]
    finally:
        adapter.close()


def test_context_io_workers_are_the_configured_workers(tmp_path: Path) -> None:
    adapter = DaxL2Adapter(make_config(hotplug_enabled=True, num_store_workers=2, num_lookup_workers=1,
                                       num_load_workers=3), L2AdapterContext(0, "dax"))
    try:
        assert adapter._pool._max_workers == 6
    finally:
        adapter.close()
