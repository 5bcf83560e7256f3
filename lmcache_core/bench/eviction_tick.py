"""The L1 eviction tick with 1,000,000 objects in a real L1 (policy + L1 delete, end to end).

Rows (each with a baseline from the same run: popping the same number of keys
from a plain dict, the cheapest thing any eviction could do per victim):

* ``below_watermark``: the usual tick, nothing to evict;
* ``trigger_ratio_<r>``: a trigger owing ``ratio × tracked`` evictions (LMCache
  semantics; 0.2 is the default: 200,000 keys) is paid in bounded slices, one per
  tick (the eviction thread ticks every 50 ms): the slowest tick, and the total time
  and number of ticks to pay the whole trigger;
* also with ratio 0.001 (1,000 keys): a small eviction among a million.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.eviction import LRUPolicy
from lmcache_core.storage.eviction_controller import EvictionController, PolicyFeeder
from lmcache_core.storage.l1 import L1Manager

N = 1_000_000
OBJ = 4096
BATCH = 4096


def _fill(n: int) -> tuple[L1Manager, EvictionController, list[ObjectKey]]:
    # Capacity so that n objects sit just over the 0.8 watermark.
    l1 = L1Manager(int(n * OBJ / 0.81), align_bytes=4096, enable_metrics=False)
    policy = LRUPolicy()
    l1.register_listener(PolicyFeeder(policy))
    ctl = EvictionController(l1, policy, watermark=0.8, ratio=0.2)
    keys = [ObjectKey(i.to_bytes(32, "big"), "bench-model", 0x01000100) for i in range(n)]
    for start in range(0, n, BATCH):
        batch = keys[start:start + BATCH]
        l1.reserve_write(batch, OBJ)
        l1.finish_write(batch)
    return l1, ctl, keys


def _dict_pop_ms(n_keys: int, victims: int) -> float:
    d = dict.fromkeys(range(n_keys))
    victims_list = list(range(victims))
    t0 = time.perf_counter()
    for k in victims_list:
        d.pop(k)
    return (time.perf_counter() - t0) * 1000


def _timed_tick(ctl: EvictionController) -> tuple[float, int]:
    gc.collect()
    t0 = time.perf_counter()
    summary = ctl.tick()
    return (time.perf_counter() - t0) * 1000, summary["evicted"]


def _pay_trigger(ctl: EvictionController) -> tuple[float, float, int, int]:
    """Tick until the trigger's debt is paid: (slowest tick ms, total ms, ticks, evicted)."""
    gc.collect()
    slowest = total = 0.0
    ticks = evicted = 0
    while True:
        t0 = time.perf_counter()
        summary = ctl.tick()
        ms = (time.perf_counter() - t0) * 1000
        slowest, total, ticks, evicted = max(slowest, ms), total + ms, ticks + 1, evicted + summary["evicted"]
        if not summary["left_to_evict"]:
            return slowest, total, ticks, evicted


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    l1, ctl, _ = _fill(N)
    try:
        ctl.watermark = 0.99  # below it: the common tick
        ms, evicted = _timed_tick(ctl)
        rows.append({"bench": "eviction_tick_1M_objects", "case": "below_watermark", "ms": round(ms, 3),
                     "evicted": evicted, "target_ms": 50})
        ctl.watermark = 0.8
        for ratio in (0.001, 0.2):
            ctl.ratio = ratio
            slowest, total, ticks, evicted = _pay_trigger(ctl)
            base = _dict_pop_ms(l1.get_memory_usage()[0] // OBJ + evicted, evicted)
            rows.append({"bench": "eviction_tick_1M_objects", "case": f"trigger_ratio_{ratio}",
                         "ms": round(slowest, 3), "ms_meaning": "slowest tick",
                         "ticks_to_pay_trigger": ticks, "total_ms": round(total, 3),
                         "max_victims_per_tick": ctl.max_victims_per_tick,
                         "evicted": evicted, "baseline": "dict.pop of the same number of keys",
                         "baseline_ms": round(base, 3),
                         "ratio_total_to_baseline": round(total / base, 2) if base else None,
                         "us_per_victim": round(total * 1000 / max(evicted, 1), 3), "target_ms": 50})
            # refill what was evicted so the next case starts from 1M again
            l1.clear(force=True)
            l1.close()
            l1, ctl, _ = _fill(N)
    finally:
        l1.close()
    return rows


if __name__ == "__main__":
    import json

    for row in run():
        print(json.dumps(row))
