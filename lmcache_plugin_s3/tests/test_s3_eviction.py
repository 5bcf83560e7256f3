"""Capacity eviction and IsolatedLRU quotas hold on S3, also after a restart with ``recover_on_start``.

Real servers (subprocesses) with the s3 L2 on moto; each chunk object is 32 KiB (the
test worker's KV: 2 layers x 16 blocks x 1 KiB). The bucket itself is the evidence:
it is listed with a plain boto3 client.
"""

from __future__ import annotations

from pathlib import Path

from lmcache_plugin_s3.testing import MotoS3, Worker
from s3_support import bucket_objects, flushed, http_json, our_server, s3_status, until

OBJ = 32 * 1024
GIB = 1 << 30


def _sizes(moto: MotoS3, bucket: str) -> dict[str, int]:
    return {o["Key"]: o["Size"] for o in moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])}


def _settled(moto: MotoS3, bucket: str, http: str, most: int) -> bool:
    """The bucket holds at most ``most`` objects and the adapter's books agree with it."""
    objects = _sizes(moto, bucket)
    status = s3_status(http)
    return len(objects) <= most and status["current_size_bytes"] == sum(objects.values())


def test_capacity_eviction_holds_also_after_a_restart(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    cap_objects = 8
    adapter = moto_s3.adapter_config(bucket, max_capacity_gb=cap_objects * OBJ / GIB, recover_on_start=True,
                                     eviction={"eviction_policy": "LRU", "trigger_watermark": 0.8,
                                               "eviction_ratio": 0.5})
    with our_server(adapter, tmp_path / "first.log") as (zmq, http, _):
        w = Worker(zmq, 41, "evict/model")
        try:
            for seq in range(8):  # 16 objects: twice the capacity
                assert w.store(seq, 2)[0]
            until("the write-behind", lambda: flushed(http, 16))
            # Under the watermark (0.8 x 8 objects), so nothing more is evicted, now or at the restart.
            until("eviction to bring the bucket under the watermark", lambda: _settled(moto_s3, bucket, http, 6))
        finally:
            w.close()
    before = _sizes(moto_s3, bucket)
    assert 0 < len(before) <= 6
    with our_server(adapter, tmp_path / "second.log") as (zmq, http, _):
        status = s3_status(http)
        assert (status["stored_object_count"], status["current_size_bytes"]) == (len(before), sum(before.values()))
        w = Worker(zmq, 42, "evict/model")
        try:
            for seq in range(100, 104):
                assert w.store(seq, 2)[0]
            until("the write-behind", lambda: flushed(http, 8))
            until("eviction after the restart", lambda: _settled(moto_s3, bucket, http, cap_objects))
        finally:
            w.close()
    after = _sizes(moto_s3, bucket)
    # Without the recovered books the new server would think it had room for all 8 new objects.
    assert set(before) - set(after), "nothing stored before the restart was evicted"
    assert len(after) <= cap_objects


def test_isolated_lru_quotas_hold_on_s3(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    """A salt over its quota loses its oldest objects from the bucket; another salt within its quota keeps all.

    (Not across a restart: quotas live in memory only, as in LMCache, so until they are set
    again IsolatedLRU evicts every recovered salt as one without a quota.)
    """
    quota_objects = 4
    adapter = moto_s3.adapter_config(bucket, eviction={"eviction_policy": "IsolatedLRU", "trigger_watermark": 0.8,
                                                       "eviction_ratio": 0.5})
    with our_server(adapter, tmp_path / "server.log") as (zmq, http, _):
        for salt, gib in (("tenant-a", quota_objects * OBJ / GIB), ("tenant-b", 1.0)):
            assert http_json("PUT", f"{http}/quota/{salt}", {"limit_gb": gib})[0] == 200
        a = Worker(zmq, 51, "quota/model", cache_salt="tenant-a")
        b = Worker(zmq, 52, "quota/model", cache_salt="tenant-b")
        try:
            for seq in range(4):
                assert a.store(seq, 2)[0] and b.store(seq, 2)[0]
            until("the write-behind", lambda: flushed(http, 16))

            def tenant_a_within_quota() -> bool:
                return sum(n.endswith("@tenant-a") for n in bucket_objects(moto_s3, bucket)) <= quota_objects

            until("tenant-a's quota eviction", tenant_a_within_quota)
        finally:
            a.close()
            b.close()
        names = bucket_objects(moto_s3, bucket)
        assert 0 < sum(n.endswith("@tenant-a") for n in names) <= quota_objects
        assert sum(n.endswith("@tenant-b") for n in names) == 8
        assert s3_status(http)["current_size_bytes"] == len(names) * OBJ
