"""Hot-plug under load: a client stores and retrieves without pause while devices are added, removed, resized.

The server is real (reconfigure routes over HTTP, the dax adapter from its plugin). A client
thread goes through the adapter's public futures as the engine does: it stores new objects
(until it holds ``MAX_KEYS``), and between stores does lookup-and-lock, load and unlock of
objects it stored, comparing every byte. Meanwhile the test adds a second device, removes the
first with ``migrate`` (``force``: the client holds lookup locks at any moment), grows the
second, then shrinks it. The devices always have room for every object the client stores, so
no store may fail either. No retrieve of a stored object may fail or differ, and at the end the
adapter holds exactly the objects the client stored.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from dax_support import MIB, OBJ, SLOT, TIMEOUT, Live, device_file, gb, key, load_equal, payload, serve_live

MAX_KEYS = 40
RUN_LIMIT_S = 300.0  # the test stops the client long before; this only bounds a broken run
WAIT_S = 120.0


class Client(threading.Thread):
    """Stores and retrieves until told to stop; records every failed or unequal retrieve."""

    def __init__(self, adapter: Any) -> None:
        super().__init__(name="dax-load-client", daemon=True)
        self.adapter = adapter
        self.stored: list[int] = []
        self.retrieves = 0
        self.failed: list[tuple[int, str]] = []
        self.store_failures = 0
        self.stop = threading.Event()
        self.rng = random.Random(7)

    def run(self) -> None:
        deadline = time.monotonic() + RUN_LIMIT_S
        n = 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            if len(self.stored) < MAX_KEYS:
                if self.adapter.store([key(n)], [payload(n)]).result(TIMEOUT) == [True]:
                    self.stored.append(n)
                else:
                    self.store_failures += 1
                n += 1
            if not self.stored:
                continue
            picks = self.rng.sample(self.stored, min(4, len(self.stored)))
            keys = [key(p) for p in picks]
            found = self.adapter.lookup_and_lock(keys).result(TIMEOUT)
            outs = [torch.zeros(OBJ, dtype=torch.uint8) for _ in picks]
            loaded = self.adapter.load(keys, outs).result(TIMEOUT)
            self.adapter.unlock([k for k, f in zip(keys, found) if f])
            for p, f, ok, out in zip(picks, found, loaded, outs):
                self.retrieves += 1
                if not (f and ok):
                    self.failed.append((p, f"lookup={f} load={ok}"))
                elif not torch.equal(out, payload(p)):
                    self.failed.append((p, "bytes differ"))

    def wait_for(self, retrieves: int) -> None:
        """Until the client has done ``retrieves`` more retrieves (bounded)."""
        target = self.retrieves + retrieves
        deadline = time.monotonic() + WAIT_S
        while self.retrieves < target and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self.retrieves >= target, "the client stopped retrieving"


@pytest.fixture
def live(lmcache_server_factory: Any, lmcache_http: Any, tmp_path: Path) -> Iterator[Live]:
    devs = tmp_path / "devs"
    l2 = [{"type": "dax", "slot_bytes": SLOT, "hotplug_enabled": True, "allowed_paths": [str(devs)],
           "devices": [{"device_path": device_file(devs, "dax0.0", 2 * MIB), "max_dax_size_gb": gb(2 * MIB)}]}]
    yield from serve_live(lmcache_server_factory, lmcache_http, l2)


def test_add_migrate_remove_and_resize_under_load(live: Live, tmp_path: Path) -> None:
    devs = tmp_path / "devs"
    adapter = live.dax[0]
    client = Client(adapter)
    client.start()
    try:
        client.wait_for(20)
        body = live.post("add", {"device_path": device_file(devs, "dax1.0", 4 * MIB), "size": "3MiB"})
        assert body.status_code == 200, body.text
        client.wait_for(20)

        before = adapter.report_status()["stored_object_count"]
        body = live.post("remove", {"device_path": str(devs / "dax0.0"), "mode": "migrate", "force": True})
        assert body.status_code == 200, body.text
        after = adapter.report_status()["stored_object_count"]
        assert body.json()["moved_keys"] > 0 and body.json()["deleted_keys"] == 0
        assert after >= before  # nothing lost; the client may have stored more meanwhile
        client.wait_for(20)

        body = live.post("resize", {"device_path": str(devs / "dax1.0"), "size": "4MiB", "force": True})
        assert body.status_code == 200, body.text
        client.wait_for(20)
        deadline = time.monotonic() + TIMEOUT
        while len(client.stored) < MAX_KEYS and client.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        body = live.post("resize", {"device_path": str(devs / "dax1.0"), "size": SLOT * (MAX_KEYS + 2),
                                    "mode": "migrate", "force": True})
        assert body.status_code == 200, body.text
        client.wait_for(20)
    finally:
        client.stop.set()
        client.join(TIMEOUT)
    assert not client.is_alive()
    assert client.failed == []
    assert client.store_failures == 0 and len(client.stored) == MAX_KEYS
    status = live.status()["adapters"][0]["status"]
    assert [(d["state"], d["max_dax_size_bytes"]) for d in status["devices"]] == \
        [("removed", 2 * MIB), ("active", SLOT * (MAX_KEYS + 2))]
    assert adapter.report_status()["stored_object_count"] == MAX_KEYS
    assert status["total_used_bytes"] == MAX_KEYS * SLOT
    assert load_equal(adapter, client.stored) == [True] * MAX_KEYS
    assert adapter.report_status()["locked_key_count"] == 0
