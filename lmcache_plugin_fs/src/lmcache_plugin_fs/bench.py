"""Micro-benchmark: the fs adapter's store/load throughput beside raw file I/O of the same bytes.

Both sides run in one directory, in one process, alternately, with the same fsync
setting: raw store = ``open / os.write / [fsync] / close`` of a new file, raw load =
``open / readv into the buffer / close``; the adapter goes through its public
futures (``store`` / ``load``, one batch, its own I/O thread). Files are deleted
between rounds so every store writes new files. Loads read what the round just
wrote, so both sides read from the page cache unless the directory bypasses it.

Run: ``python -m lmcache_plugin_fs.bench [--size-mib 32] [--count 16] [--repeats 5]
[--dir DIR] [--fsync]`` (JSON, one row per line).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from lmcache_core.api import L2AdapterContext, ObjectKey, as_bytes_view
from lmcache_plugin_fs.adapter import FSAdapterConfig, FSL2Adapter

MIB = 1 << 20


def _raw_store(paths: Sequence[str], view: memoryview, fsync: bool) -> float:
    t0 = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            done = 0
            while done < view.nbytes:
                done += os.write(fd, view[done:])
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - t0


def _raw_load(paths: Sequence[str], view: memoryview) -> float:
    t0 = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            done = 0
            while done < view.nbytes:
                n = os.readv(fd, [view[done:]])
                if n <= 0:
                    raise OSError(f"short read of {path}")
                done += n
        finally:
            os.close(fd)
    return time.perf_counter() - t0


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - t0
    if not all(result):
        raise RuntimeError("adapter operation failed during the benchmark")
    return elapsed


def _measure(directory: str, size: int, count: int, repeats: int, fsync: bool,
             checksum: str) -> list[dict[str, Any]]:
    src = torch.randint(0, 256, (size,), dtype=torch.uint8)
    dst = torch.empty(size, dtype=torch.uint8)
    adapter = FSL2Adapter(FSAdapterConfig(base_path=directory, checksum=checksum, fsync=fsync,
                                          recover_on_start=False), L2AdapterContext(0, "fs", io_workers=1))
    keys = [ObjectKey(i.to_bytes(4, "big") * 8, "bench-model", 0x01000100, 0, "") for i in range(count)]
    raw_paths = [os.path.join(directory, f"raw-{i}.bin") for i in range(count)]
    times: dict[str, list[float]] = {"raw_store": [], "fs_store": [], "raw_load": [], "fs_load": []}
    try:
        for r in range(repeats):
            # Alternate which side goes first so warm-up and writeback do not favour one.
            sides = ["raw", "fs"] if r % 2 == 0 else ["fs", "raw"]
            for side in sides:
                if side == "raw":
                    times["raw_store"].append(_raw_store(raw_paths, as_bytes_view(src), fsync))
                else:
                    times["fs_store"].append(_timed(lambda: adapter.store(keys, [src] * count).result()))
            for side in sides:
                if side == "raw":
                    times["raw_load"].append(_raw_load(raw_paths, as_bytes_view(dst)))
                else:
                    times["fs_load"].append(_timed(lambda: adapter.load(keys, [dst] * count).result()))
            if not torch.equal(dst, src):
                raise RuntimeError("loaded bytes differ from stored bytes")
            adapter.delete(keys).result()
            for path in raw_paths:
                os.unlink(path)
    finally:
        adapter.close()
    total = size * count
    rows = []
    for op in ("store", "load"):
        fs_s, raw_s = statistics.median(times[f"fs_{op}"]), statistics.median(times[f"raw_{op}"])
        rows.append({
            "op": op, "checksum": checksum, "fsync": fsync, "object_bytes": size, "objects": count,
            "repeats": repeats, "fs_gbps": round(total / fs_s / 1e9, 3), "raw_gbps": round(total / raw_s / 1e9, 3),
            "ratio": round(raw_s / fs_s, 3),
        })
    return rows


def run(size_bytes: int = 32 * MIB, count: int = 16, repeats: int = 5, directory: str | None = None,
        fsync: bool = False, checksums: Sequence[str] = ("none", "crc32")) -> list[dict[str, Any]]:
    """Adapter vs raw GB/s (median of ``repeats`` rounds of ``count`` objects) per checksum setting.

    Each row: ``op`` (store|load), ``checksum``, ``fsync``, ``object_bytes``, ``objects``,
    ``repeats``, ``fs_gbps``, ``raw_gbps`` and ``ratio`` = fs / raw throughput (the target
    is >= 0.8 with ``checksum: "none"``; crc32 rows show the cost of the CRC pass).
    """
    rows: list[dict[str, Any]] = []
    for checksum in checksums:
        with tempfile.TemporaryDirectory(prefix="lmcache-fs-bench-", dir=directory) as d:
            rows += _measure(d, size_bytes, count, repeats, fsync, checksum)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry: print one JSON row per line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="parent directory of the benchmark's temp directory")
    parser.add_argument("--fsync", action="store_true")
    args = parser.parse_args(argv)
    for row in run(args.size_mib * MIB, args.count, args.repeats, args.dir, args.fsync):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
