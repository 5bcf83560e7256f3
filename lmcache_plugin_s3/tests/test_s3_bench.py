"""``lmcache-server bench s3`` runs end to end on a small size and reports both sides of each operation."""

from __future__ import annotations

from lmcache_plugin_s3.testing import MotoS3

from lmcache_core.bench.s3 import throughput


def test_bench_rows_compare_the_adapter_with_raw_boto3(moto_s3: MotoS3) -> None:
    rows = throughput(moto_s3, 1 << 20, 2, 2)
    assert [r["op"] for r in rows] == ["store", "load"]
    for r in rows:
        assert r["ok"] is True and r["ours_gbps"] > 0 and r["raw_boto3_gbps"] > 0
        assert abs(r["ratio"] - r["ours_gbps"] / r["raw_boto3_gbps"]) < 0.05 * r["ratio"] + 0.01
    assert moto_s3.client().list_objects_v2(Bucket="bench-throughput").get("Contents", []) == []  # cleaned up
