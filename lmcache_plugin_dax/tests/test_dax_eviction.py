"""L2 eviction on a dax adapter: usage counts slots, the controller deletes down to the watermark, slots are reused."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from dax_support import MIB, SLOT, TIMEOUT, device_file, gb, key, load_equal, serve_live, store


def test_the_eviction_controller_frees_slots_by_slot_usage(lmcache_server_factory: Any, lmcache_http: Any,
                                                          tmp_path: Path) -> None:
    l2 = [{"type": "dax", "slot_bytes": SLOT, "device_path": device_file(tmp_path, "dax0.0"),
           "max_dax_size_gb": gb(MIB),
           "eviction": {"eviction_policy": "LRU", "trigger_watermark": 0.5, "eviction_ratio": 0.5}}]
    slots = MIB // SLOT
    for live in serve_live(lmcache_server_factory, lmcache_http, l2):
        adapter = live.dax[0]
        assert adapter.usage().total_capacity_bytes == slots * SLOT
        # payloads of 100 bytes: by payload bytes nothing is near the watermark, by slots most of it is
        for n in range(12):  # one store per key: recency follows n
            assert store(adapter, [n], size=100) == [True]
        deadline = time.monotonic() + TIMEOUT
        while adapter.usage().total_bytes_used > slots * SLOT * 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        count = adapter.report_status()["stored_object_count"]
        assert count * SLOT == adapter.usage().total_bytes_used <= slots * SLOT * 0.5
        survivors = [n for n in range(12) if load_equal(adapter, [n], size=100) == [True]]
        assert len(survivors) == count and survivors == list(range(12 - count, 12))  # least recent went first
        assert adapter.delete([key(n) for n in survivors]).result(TIMEOUT) == [True] * count
        assert store(adapter, list(range(100, 100 + slots)), size=100) == [True] * slots  # every slot reusable
