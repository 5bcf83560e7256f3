"""Benchmark: L1 bookkeeping cost (operations per second) and metadata bytes per object.

Rows (``python -m lmcache_core.bench.l1`` prints one JSON object per line):

* ``reserve_finish_write`` with ``batch`` 16 and 1: ``reserve_write`` (views
  included) + ``finish_write`` of fresh keys, metrics on, no data copied.
  Baselines measured in the same run over the same keys: ``dict_insert_pop``
  (a plain dict insert + pop per key: the floor of any Python key table) and
  ``torch_empty`` (a ``torch.empty`` of the object size per key: what handing
  out a fresh buffer per object would cost instead of a view).
* ``reserve_read_finish`` with ``batch`` 16: the retrieve path,
  ``reserve_read`` + ``read`` (views) + ``finish_read``, against the same
  dict baseline.
* ``metadata_bytes_per_object`` with 1,000,000 objects, measured with
  tracemalloc: the ObjectKey (32-byte hash, shared model name and salt), the
  L1 state (index entry, parallel arrays, allocator), and, if the eviction
  module is importable, one LRU policy entry. Target: the sum ≤ 256 bytes.

The arena is virtual and never written here, so the runs need no real memory
for object payloads.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import torch

from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l1 import L1Manager

OBJ_BYTES = 256 << 10  # a plausible KV chunk object
OPS_KEYS = 64 * 1024  # keys per throughput measurement
META_OBJECTS = 1_000_000
META_OBJ_BYTES = 4096
META_TARGET = 256
GiB = 1 << 30


def make_keys(n: int, start: int = 0, salt: str = "") -> list[ObjectKey]:
    """``n`` distinct keys shaped like real ones (32-byte hash, one model, one rank)."""
    model = "meta-llama/Llama-3.1-8B-Instruct"
    rank = (1 << 24) | (0 << 16) | (1 << 8) | 0
    return [ObjectKey(os.urandom(32), model, rank, 0, salt) for _ in range(start, start + n)]


def _best_of(fn: Callable[[], None], setup: Callable[[], None], repeats: int) -> float:
    """Best wall time of ``fn`` in seconds, ``setup`` (untimed) before each run."""
    best = float("inf")
    for _ in range(repeats):
        setup()
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _ops_row(case: str, batch: int, n_keys: int, seconds: float, baselines: dict[str, float]) -> dict[str, Any]:
    ops = n_keys / batch / seconds
    row: dict[str, Any] = {
        "bench": "l1",
        "case": case,
        "batch": batch,
        "keys": n_keys,
        "ops_per_s": round(ops),
        "keys_per_s": round(n_keys / seconds),
        "us_per_key": round(seconds / n_keys * 1e6, 3),
    }
    for name, base_s in baselines.items():
        row[f"baseline_{name}_keys_per_s"] = round(n_keys / base_s)
        # >1 means L1 is slower than the baseline by that factor.
        row[f"ratio_vs_{name}"] = round(seconds / base_s, 2)
    return row


def _dict_baseline(keys: list[ObjectKey]) -> Callable[[], None]:
    def run() -> None:
        d: dict[ObjectKey, int] = {}
        for i, k in enumerate(keys):
            d[k] = i
        for k in keys:
            d.pop(k)

    return run


def _torch_empty_baseline(n: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(n):
            torch.empty(OBJ_BYTES, dtype=torch.uint8)

    return run


def _write_seconds(keys: list[ObjectKey], batch: int, repeats: int) -> float:
    """Best time to reserve_write + finish_write ``keys`` in batches of ``batch`` into a fresh L1."""
    state: dict[str, L1Manager] = {}
    batches = [keys[i : i + batch] for i in range(0, len(keys), batch)]

    def setup() -> None:
        old = state.pop("l1", None)
        if old is not None:
            old.close()
        state["l1"] = L1Manager(32 * GiB)

    def run() -> None:
        l1 = state["l1"]
        for b in batches:
            l1.reserve_write(b, OBJ_BYTES)
            l1.finish_write(b)

    seconds = _best_of(run, setup, repeats)
    assert len(state["l1"]) == len(keys)
    state.pop("l1").close()
    return seconds


def write_rows(repeats: int = 3) -> list[dict[str, Any]]:
    """reserve_write + finish_write rate for batches of 16 and 1, with baselines."""
    keys = make_keys(OPS_KEYS)
    baselines = {
        "dict_insert_pop": _best_of(_dict_baseline(keys), lambda: None, repeats),
        "torch_empty": _best_of(_torch_empty_baseline(OPS_KEYS), lambda: None, repeats),
    }
    return [
        _ops_row("reserve_finish_write", batch, OPS_KEYS, _write_seconds(keys, batch, repeats), baselines)
        for batch in (16, 1)
    ]


def read_rows(repeats: int = 3) -> list[dict[str, Any]]:
    """reserve_read + read + finish_read rate for batches of 16."""
    keys = make_keys(OPS_KEYS)
    l1 = L1Manager(32 * GiB)
    try:
        for i in range(0, OPS_KEYS, 1024):
            l1.reserve_write(keys[i : i + 1024], OBJ_BYTES)
            l1.finish_write(keys[i : i + 1024])
        batch = 16
        batches = [keys[i : i + batch] for i in range(0, OPS_KEYS, batch)]

        def run() -> None:
            for b in batches:
                l1.reserve_read(b)
                l1.read(b)
                l1.finish_read(b)

        seconds = _best_of(run, lambda: None, repeats)
        dict_s = _best_of(_dict_baseline(keys), lambda: None, repeats)
        return [_ops_row("reserve_read_finish", batch, OPS_KEYS, seconds, {"dict_insert_pop": dict_s})]
    finally:
        l1.close()


def _traced(fn: Callable[[], object]) -> tuple[int, object]:
    """Bytes newly held (tracemalloc) after ``fn``, and its result."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    out = fn()
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before, out


def metadata_row(n: int = META_OBJECTS) -> dict[str, Any]:
    """Bytes per object held by keys, L1 state and (if present) an LRU entry, for ``n`` objects."""
    tracemalloc.start()
    try:
        key_bytes, keys = _traced(lambda: make_keys(n))
        keys_list: list[ObjectKey] = keys  # type: ignore[assignment]
        l1 = L1Manager(n * META_OBJ_BYTES + GiB, enable_metrics=False)

        def fill() -> None:
            for i in range(0, n, 1024):
                b = keys_list[i : i + 1024]
                l1.reserve_write(b, META_OBJ_BYTES)
                l1.finish_write(b)

        l1_bytes, _ = _traced(fill)
        assert len(l1) == n
        lru_bytes: int | None = None
        try:
            from lmcache_core.storage.eviction import LRUPolicy

            policy = LRUPolicy()

            def track() -> None:
                for i in range(0, n, 1024):
                    policy.on_keys_created(keys_list[i : i + 1024])

            lru_bytes, _ = _traced(track)
        except ImportError:
            pass
        l1.close()
    finally:
        tracemalloc.stop()
    # The list holding the keys is the bench's, not per-object metadata.
    key_bytes -= sys.getsizeof(keys_list)
    per_key = key_bytes / n
    per_l1 = l1_bytes / n
    per_lru = lru_bytes / n if lru_bytes is not None else None
    total = per_key + per_l1 + (per_lru or 0.0)
    return {
        "bench": "l1",
        "case": "metadata_bytes_per_object",
        "objects": n,
        "key_bytes_per_object": round(per_key, 1),
        "l1_bytes_per_object": round(per_l1, 1),
        "lru_bytes_per_object": round(per_lru, 1) if per_lru is not None else None,
        "total_bytes_per_object": round(total, 1),
        "target_bytes_per_object": META_TARGET,
        "within_target": total <= META_TARGET,
    }


def run() -> list[dict[str, Any]]:
    """Every row, JSON-able (see the module docstring)."""
    return [*write_rows(), *read_rows(), metadata_row()]


def main() -> None:
    """Print :func:`run`'s rows as JSON lines."""
    for row in run():
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
