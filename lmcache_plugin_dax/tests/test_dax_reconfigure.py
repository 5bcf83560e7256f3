"""Hot-plug through the real reconfigure routes over HTTP (spec §2.7, §5.3): outcomes, refusals, confinement.

One server, two ``dax`` adapters (real plugins, real files standing in for devices):
``dax #0`` has ``hotplug_enabled`` and ``allowed_paths: [<tmp>/devs]`` with ``devs/dax0.0``
mapped at start, and the launcher option ``--dax-allowed-paths <tmp>/flagged``; ``dax #1``
(hot-plug off) maps ``flagged/dax9.0``. Objects are stored and read
through the adapters' public futures; every refusal is checked to leave the whole
``GET /reconfigure/dax/status`` document as it was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dax_support import MIB, SLOT, TIMEOUT, Live, device_file, gb, key, load_equal, serve_live, store

from lmcache_plugin_dax import paths
from lmcache_plugin_dax.adapter import DaxL2Adapter

PER_DEVICE = MIB // SLOT  # 15 slots in a 1 MiB device


@pytest.fixture
def devs(tmp_path: Path) -> Path:
    return tmp_path / "devs"


@pytest.fixture
def live(lmcache_server_factory: Any, lmcache_http: Any, tmp_path: Path, devs: Path) -> Iterator[Live]:
    l2 = [{"type": "dax", "slot_bytes": SLOT, "hotplug_enabled": True, "allowed_paths": [str(devs)],
           "devices": [{"device_path": device_file(devs, "dax0.0"), "max_dax_size_gb": gb(MIB)}]},
          {"type": "dax", "slot_bytes": SLOT, "device_path": device_file(tmp_path / "flagged", "dax9.0"),
           "max_dax_size_gb": gb(MIB)}]
    yield from serve_live(lmcache_server_factory, lmcache_http, l2,
                          "--dax-allowed-paths", str(tmp_path / "flagged"))


def adapter_status(live: Live, index: int = 0) -> dict[str, Any]:
    return live.status()["adapters"][index]["status"]


def states(live: Live) -> list[tuple[str, str]]:
    return [(os.path.basename(d["device_path"]), d["state"]) for d in adapter_status(live)["devices"]]


def ok(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    return resp.json()


def refused(live: Live, operation: str, body: dict[str, Any], status: int) -> dict[str, Any]:
    """Post a request that must be refused with ``status``, and check it changed nothing."""
    before = live.status()
    resp = live.post(operation, body)
    assert resp.status_code == status, resp.text
    assert live.status() == before
    return resp.json()


def test_backends_and_status_shape(live: Live, devs: Path) -> None:
    assert ok(live.http.get("/reconfigure/backends")) == {"enabled": True, "num_backends": 1, "backends": ["dax"]}
    doc = live.status()
    assert doc["enabled"] is True and doc["num_adapters"] == 2
    entry = doc["adapters"][0]
    assert entry["supported_operations"] == ["add", "remove", "resize"] and entry["adapter_index"] == 0
    status = entry["status"]
    assert status["hotplug_enabled"] is True and status["slot_bytes"] == SLOT
    assert status["total_capacity_bytes"] == PER_DEVICE * SLOT and status["total_used_bytes"] == 0
    assert status["watcher"] == {"enabled": False}
    assert status["allowed_paths"] == ["/dev/dax*", str(devs), str(devs.parent / "flagged")]
    [device] = status["devices"]
    assert {"index", "device_path", "state", "max_dax_size_bytes", "physical"} <= set(device)
    assert (device["index"], device["state"], device["max_dax_size_bytes"]) == (0, "active", MIB)
    physical = device["physical"]
    assert set(physical) == {"device_path", "mode", "present", "major", "minor", "kernel_name", "driver",
                             "size_bytes", "align_bytes", "probed_at", "detail"}
    assert (physical["mode"], physical["present"], physical["size_bytes"]) == ("not-a-device", True, MIB)
    assert doc["adapters"][1]["status"]["hotplug_enabled"] is False


def test_add_maps_a_device_and_the_same_add_again_is_idempotent(live: Live, devs: Path) -> None:
    path = device_file(devs, "dax1.0", 2 * MIB)
    body = ok(live.post("add", {"device_path": path, "size": "1MiB"}))
    assert body["status"] == "ok" and body["operation"] == "add" and body["adapter_index"] == 0
    assert body["device"]["device_path"] == path and body["device"]["state"] == "active"
    assert body["device"]["size_bytes"] == body["device"]["max_dax_size_bytes"] == MIB
    assert body["already_mapped"] is False
    again = ok(live.post("add", {"adapter_index": 0, "device_path": path, "size": MIB}))
    assert again["already_mapped"] is True and again["device"]["index"] == 1
    assert states(live) == [("dax0.0", "active"), ("dax1.0", "active")]
    assert adapter_status(live)["total_capacity_bytes"] == 2 * PER_DEVICE * SLOT
    # new keys now spread over both devices; both serve reads
    adapter = live.dax[0]
    assert store(adapter, list(range(20))) == [True] * 20
    assert load_equal(adapter, list(range(20))) == [True] * 20
    assert all(d["live_slot_count"] for d in adapter_status(live)["devices"])
    # the same path with another size: use resize
    err = refused(live, "add", {"device_path": path, "size": "512KiB"}, 409)
    assert "already mapped" in err["error"]


def test_remove_migrate_keeps_every_key(live: Live, devs: Path) -> None:
    adapter = live.dax[0]
    store(adapter, list(range(12)))
    ok(live.post("add", {"device_path": device_file(devs, "dax1.0"), "size": MIB}))
    before = adapter.report_status()["stored_object_count"]
    body = ok(live.post("remove", {"device_path": str(devs / "dax0.0"), "mode": "migrate"}))
    assert (body["state"], body["moved_keys"], body["deleted_keys"]) == ("removed", 12, 0)
    assert states(live) == [("dax0.0", "removed"), ("dax1.0", "active")]
    assert adapter.report_status()["stored_object_count"] == before == 12
    assert load_equal(adapter, list(range(12))) == [True] * 12
    assert adapter_status(live)["total_capacity_bytes"] == PER_DEVICE * SLOT
    # paths are compared normalised
    assert ok(live.post("add", {"device_path": f"{devs}//./dax1.0", "size": MIB}))["already_mapped"] is True
    # the tombstone is not a mapping: removing it again is 404, adding it back works
    refused(live, "remove", {"device_path": str(devs / "dax0.0")}, 404)
    ok(live.post("add", {"device_path": str(devs / "dax0.0"), "size": MIB}))
    assert states(live) == [("dax0.0", "removed"), ("dax1.0", "active"), ("dax0.0", "active")]


def test_remove_migrate_without_room_is_507_and_moves_nothing(live: Live, devs: Path) -> None:
    adapter = live.dax[0]
    store(adapter, list(range(10)))
    refused(live, "remove", {"device_path": str(devs / "dax0.0"), "mode": "migrate"}, 507)
    ok(live.post("add", {"device_path": device_file(devs, "dax1.0", SLOT * 4), "size": SLOT * 4}))
    body = refused(live, "remove", {"device_path": str(devs / "dax0.0")}, 507)
    assert "no room" in body["error"]
    assert load_equal(adapter, list(range(10))) == [True] * 10


def test_remove_evict_deletes_the_devices_keys(live: Live, devs: Path) -> None:
    adapter = live.dax[0]
    store(adapter, [1, 2, 3])
    body = ok(live.post("remove", {"device_path": str(devs / "dax0.0"), "mode": "evict"}))
    assert (body["deleted_keys"], body["moved_keys"], body["state"]) == (3, 0, "removed")
    assert adapter.report_status()["stored_object_count"] == 0
    assert adapter.usage().total_bytes_used == 0
    assert load_equal(adapter, [1, 2, 3]) == [False] * 3
    assert store(adapter, [4]) == [False]  # no device left to write to


def test_remove_drain_serves_reads_until_the_keys_are_gone(live: Live, devs: Path) -> None:
    adapter = live.dax[0]
    store(adapter, [1, 2])
    ok(live.post("add", {"device_path": device_file(devs, "dax1.0"), "size": MIB}))
    body = ok(live.post("remove", {"device_path": str(devs / "dax0.0"), "mode": "drain"}))
    assert (body["state"], body["remaining_keys"]) == ("draining", 2)
    assert states(live)[0] == ("dax0.0", "draining")
    store(adapter, [3, 4])  # new writes go to the active device only
    assert [d["live_slot_count"] for d in adapter_status(live)["devices"]] == [2, 2]
    assert load_equal(adapter, [1, 2, 3, 4]) == [True] * 4
    assert adapter.delete([key(1)]).result(TIMEOUT) == [True]
    assert states(live)[0] == ("dax0.0", "draining")
    assert adapter.delete([key(2)]).result(TIMEOUT) == [True]
    assert states(live)[0] == ("dax0.0", "removed")  # closed with its last key


def test_locked_keys_make_remove_and_shrink_409_unless_forced(live: Live, devs: Path) -> None:
    adapter = live.dax[0]
    store(adapter, list(range(12)))
    ok(live.post("add", {"device_path": device_file(devs, "dax1.0"), "size": MIB}))
    assert adapter.lookup_and_lock([key(11)]).result(TIMEOUT) == [True]
    body = refused(live, "remove", {"device_path": str(devs / "dax0.0")}, 409)
    assert body["locked_key_count"] == 1 and body["borrowed_slot_count"] == 0 and "force" in body["error"]
    refused(live, "resize", {"device_path": str(devs / "dax0.0"), "size": SLOT * 2}, 409)
    # force: the locked key moves with the rest and still loads
    body = ok(live.post("remove", {"device_path": str(devs / "dax0.0"), "mode": "migrate", "force": True}))
    assert body["moved_keys"] == 12
    assert load_equal(adapter, list(range(12))) == [True] * 12
    adapter.unlock([key(11)])


def test_resize_grows_in_place_and_shrinks_by_moving_keys_below_the_cut(live: Live, devs: Path) -> None:
    path = device_file(devs, "dax1.0", 2 * MIB)
    ok(live.post("add", {"device_path": path, "size": MIB}))
    ok(live.post("remove", {"device_path": str(devs / "dax0.0"), "mode": "evict"}))
    adapter = live.dax[0]
    store(adapter, list(range(PER_DEVICE)))
    assert store(adapter, [100]) == [False]  # full
    body = ok(live.post("resize", {"device_path": path, "size": "2MiB"}))
    assert (body["old_size_bytes"], body["new_size_bytes"], body["moved_keys"]) == (MIB, 2 * MIB, 0)
    assert adapter_status(live)["devices"][1]["max_slots"] == 2 * MIB // SLOT
    assert store(adapter, list(range(100, 110))) == [True] * 10  # into the new slots
    assert load_equal(adapter, list(range(PER_DEVICE))) == [True] * PER_DEVICE
    # free the low slots, then shrink to 20 slots: the keys above move down, none is lost
    assert adapter.delete([key(n) for n in range(8)]).result(TIMEOUT) == [True] * 8
    body = ok(live.post("resize", {"device_path": path, "size": SLOT * 20, "mode": "migrate"}))
    assert body["moved_keys"] == 25 - 20 and body["deleted_keys"] == 0
    kept = list(range(8, PER_DEVICE)) + list(range(100, 110))
    assert load_equal(adapter, kept) == [True] * len(kept)
    assert adapter.report_status()["stored_object_count"] == len(kept)
    # shrinking below what is stored: 507 with migrate; evict needs force, then drops exactly the keys above
    refused(live, "resize", {"device_path": path, "size": SLOT * 10}, 507)
    body = refused(live, "resize", {"device_path": path, "size": SLOT * 10, "mode": "evict"}, 409)
    assert "evict" in body["error"]
    body = ok(live.post("resize", {"device_path": path, "size": SLOT * 10, "mode": "evict", "force": True}))
    assert body["deleted_keys"] == len(kept) - 10
    assert adapter.report_status()["stored_object_count"] == 10
    assert sum(load_equal(adapter, kept)) == 10


def test_resize_beyond_the_device_is_400(live: Live, devs: Path) -> None:
    body = refused(live, "resize", {"device_path": str(devs / "dax0.0"), "size": 2 * MIB}, 400)
    assert "exceeds the device" in body["error"]
    refused(live, "resize", {"device_path": str(devs / "dax0.0"), "size": SLOT - 1}, 400)
    refused(live, "resize", {"device_path": str(devs / "nope"), "size": MIB}, 404)


@pytest.mark.parametrize("operation, body, status", [
    ("add", {"device_path": "/dev/dax0.0", "size": 1, "extra": 1}, 422),
    ("add", {"size": MIB}, 422),
    ("remove", {"device_path": "x", "mode": "shred"}, 422),
    ("resize", {"device_path": "x", "size": MIB, "mode": "drain"}, 422),
    ("add", {"device_path": "/dev/dax0.0", "size": "lots"}, 400),
    ("add", {"device_path": "/dev/dax0.0", "size": 0}, 400),
    ("frobnicate", {}, 400),
    ("remove", {"device_path": "/nowhere/dax7.0"}, 404),
    ("remove", {"adapter_index": 2, "device_path": "/x"}, 404),
    ("remove", {"adapter_index": 1, "device_path": "/x"}, 403),
])
def test_bad_requests_are_refused_and_change_nothing(live: Live, operation: str, body: dict[str, Any],
                                                       status: int) -> None:
    store(live.dax[0], [1, 2])
    refused(live, operation, body, status)


def test_confinement_refuses_paths_outside_the_allowed_roots(live: Live, devs: Path, tmp_path: Path) -> None:
    outside = device_file(tmp_path / "outside", "dax5.0")
    os.symlink(outside, devs / "dax-link")
    os.symlink("/etc/passwd", devs / "dax-passwd")
    (devs / "subdir").mkdir()
    os.mkfifo(devs / "fifo")
    cases = {
        "/etc/passwd": "outside the allowed paths",
        f"{devs}/../outside/dax5.0": "'..'",
        f"{devs}/sub/../dax0.0": "'..'",
        str(devs / "dax-link"): "resolves to",
        str(devs / "dax-passwd"): "resolves to",
        outside: "outside the allowed paths",
        "relative/dax0.0": "absolute",
        f"{devs}/dax0.0\x00": "without NUL",
        str(devs / "subdir"): "neither a character device nor a regular file",
        str(devs / "fifo"): "neither a character device nor a regular file",
        str(devs / "missing"): "cannot be opened",
        "/dev/dax-absent.0": "cannot be opened",
    }
    for path, why in cases.items():
        body = refused(live, "add", {"device_path": path, "size": MIB}, 400)
        assert why in body["error"], (path, body)
    # a path in use by another adapter of the server: 409, directly or through a symlink in an allowed root
    other = str(tmp_path / "flagged" / "dax9.0")
    os.symlink(other, devs / "dax-other")
    for path in (other, str(devs / "dax-other")):
        body = refused(live, "add", {"device_path": path, "size": MIB}, 409)
        assert "already mapped by L2 adapter dax:1" in body["error"]
    # the same device as our own through a symlink inside the root is the same mapping
    os.symlink(devs / "dax0.0", devs / "dax-alias")
    assert ok(live.post("add", {"device_path": str(devs / "dax-alias"), "size": MIB}))["already_mapped"] is True
    # a symlink that stays inside a root, and the launcher flag's root, are accepted
    os.symlink(device_file(devs, "dax3.0"), devs / "dax-inside")
    ok(live.post("add", {"device_path": str(devs / "dax-inside"), "size": MIB}))
    ok(live.post("add", {"device_path": device_file(tmp_path / "flagged", "dax4.0"), "size": MIB}))
    assert [d for d, _ in states(live)] == ["dax0.0", "dax-inside", "dax4.0"]


def _fake_sysfs(root: Path, major: int, minor: int, name: str, driver: str | None, size: int) -> None:
    target = root / "devices" / "platform" / name
    target.mkdir(parents=True)
    (root / "dev" / "char").mkdir(parents=True, exist_ok=True)
    os.symlink(target, root / "dev" / "char" / f"{major}:{minor}")
    bus = root / "bus" / "dax" / "devices" / name
    bus.mkdir(parents=True)
    (bus / "size").write_text(f"{size}\n")
    (bus / "align").write_text("2097152\n")
    if driver:
        drv = root / "bus" / "dax" / "drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        os.symlink(drv, bus / "driver")


@pytest.mark.parametrize("driver, size, why", [
    ("kmem", 1 << 30, "bound to kmem (system-ram)"),
    (None, 1 << 30, "unbound"),
    ("device_dax", MIB // 2, "fewer than the 1048576 requested"),
])
def test_the_sysfs_probe_refuses_kmem_unbound_and_small_devices(live: Live, tmp_path: Path, driver: str | None,
                                                                size: int, why: str) -> None:
    # /dev/null is a real character device; a sysfs tree says what it is
    st = os.stat("/dev/null")
    _fake_sysfs(tmp_path / "sys", os.major(st.st_rdev), os.minor(st.st_rdev), "dax0.0", driver, size)
    adapter = live.dax[0]
    adapter.sysfs_root = str(tmp_path / "sys")
    adapter.allow_paths(["/dev"])
    record = paths.probe("/dev/null", adapter.sysfs_root)
    assert record["kernel_name"] == "dax0.0" and record["size_bytes"] == size and record["align_bytes"] == 2097152
    body = refused(live, "add", {"device_path": "/dev/null", "size": MIB}, 400)
    assert why in body["error"]


def test_an_inconclusive_probe_proceeds_to_the_mapping(live: Live, tmp_path: Path) -> None:
    adapter = live.dax[0]
    adapter.sysfs_root = str(tmp_path / "empty-sys")
    adapter.allow_paths(["/dev"])
    assert paths.probe("/dev/null", adapter.sysfs_root)["mode"] == "unknown"
    # the probe lets it through; /dev/null cannot be mapped: still a clean 400, nothing changed
    body = refused(live, "add", {"device_path": "/dev/null", "size": MIB}, 400)
    assert "cannot map" in body["error"]


def test_probe_records_for_files_and_absent_paths(tmp_path: Path) -> None:
    path = device_file(tmp_path, "dax0.0", MIB)
    assert paths.probe(path)["mode"] == "not-a-device"
    assert paths.probe(str(tmp_path / "gone"))["mode"] == "absent"
    assert paths.probe(str(tmp_path))["mode"] == "not-a-device"
    assert paths.probe_refusal({"mode": "unknown", "device_path": "x", "size_bytes": None}, MIB) is None


def test_hotplug_with_no_devices_and_the_watcher(lmcache_server_factory: Any, lmcache_http: Any,
                                                 tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    device_file(watched, "dax0.0")
    device_file(watched, "notes.txt")
    l2 = [{"type": "dax", "slot_bytes": SLOT, "hotplug_enabled": True, "devices": [],
           "watch_directory": str(watched), "watch_interval_seconds": 0.05, "allowed_paths": [str(watched)]}]
    for live in serve_live(lmcache_server_factory, lmcache_http, l2):
        assert store(live.dax[0], [1]) == [False]  # nothing mapped yet
        deadline = time.monotonic() + 10
        while not adapter_status(live)["watcher"].get("present_devices") and time.monotonic() < deadline:
            time.sleep(0.02)
        watcher = adapter_status(live)["watcher"]
        assert watcher["enabled"] is True and watcher["directory"] == str(watched)
        assert watcher["present_devices"] == [{"device_path": str(watched / "dax0.0"), "kind": "file",
                                               "mapped": False}]
        assert adapter_status(live)["devices"] == []  # reported, never attached
        ok(live.post("add", {"device_path": str(watched / "dax0.0"), "size": MIB}))
        deadline = time.monotonic() + 10
        while not adapter_status(live)["watcher"]["present_devices"][0]["mapped"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert adapter_status(live)["watcher"]["present_devices"][0]["mapped"] is True
        assert store(live.dax[0], [1]) == [True]


def test_adapter_type_is_dax(live: Live) -> None:
    assert all(isinstance(a, DaxL2Adapter) for a in live.dax) and len(live.dax) == 2
