"""The benchmark runs end to end on a small size and reports both sides of every operation."""

from __future__ import annotations

import os

from lmcache_plugin_fs.bench import run


def test_bench_rows_compare_adapter_and_raw_io(tmp_path):
    rows = run(size_bytes=1 << 20, count=2, repeats=2, directory=str(tmp_path))
    assert [(r["op"], r["checksum"]) for r in rows] == [
        ("store", "none"), ("load", "none"), ("store", "crc32"), ("load", "crc32")]
    for r in rows:
        assert r["fs_gbps"] > 0 and r["raw_gbps"] > 0
        assert abs(r["ratio"] - r["fs_gbps"] / r["raw_gbps"]) < 0.05 * r["ratio"] + 0.01
    assert os.listdir(tmp_path) == []  # it cleans up after itself
