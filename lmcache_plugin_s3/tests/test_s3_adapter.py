"""The s3 adapter against a real S3 server (moto, server mode): names, bodies, lookups, loads, deletes, listing."""

from __future__ import annotations

import threading
import time
from urllib.parse import quote

import pytest
import torch

from lmcache_core.keys import ObjectKey, object_name
from lmcache_core.storage.l2.base import as_bytes_view

MODEL = "org/model-a"


def key(i: int, *, model: str = MODEL, salt: str = "", rank: int = 0, group: int = 0) -> ObjectKey:
    return ObjectKey(i.to_bytes(4, "big") * 8, model, rank, group, salt)


def obj(i: int, n: int = 4096) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.int64) * (i + 7) % 251).to(torch.uint8)


def test_objects_are_lmcache_names_with_raw_bytes(make_s3, moto_s3, bucket):
    a = make_s3()
    keys = [key(1), key(2, salt="tenant-1", rank=0x01020304, group=3)]
    assert a.store(keys, [obj(1), obj(2)]).result() == [True, True]
    raw = moto_s3.client()
    names = {o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"]}
    assert names == {f"{MODEL}@00000000@0@{keys[0].chunk_hash.hex()}",
                     f"{MODEL}@01020304@3@{keys[1].chunk_hash.hex()}@tenant-1"}
    assert names == {object_name(k) for k in keys}
    for k, i in zip(keys, (1, 2)):
        assert raw.get_object(Bucket=bucket, Key=object_name(k))["Body"].read() == bytes(as_bytes_view(obj(i)))


def test_lookup_load_unlock_delete_round_trip(make_s3):
    a = make_s3()
    keys = [key(i) for i in range(6)]
    assert a.store(keys[:4], [obj(i) for i in range(4)]).result() == [True] * 4
    b = make_s3()  # a second adapter: nothing cached, every lookup is a HEAD
    assert b.lookup_and_lock(keys).result() == [True] * 4 + [False] * 2
    bufs = [torch.zeros(4096, dtype=torch.uint8) for _ in range(4)]
    assert b.load(keys[:4], bufs).result() == [True] * 4
    for i, buf in enumerate(bufs):
        assert torch.equal(buf, obj(i))
    # Locked keys survive a delete until unlocked.
    assert b.delete(keys[:2]).result() == [False, False]
    assert a.lookup_and_lock(keys[:2]).result() == [True, True]
    a.unlock(keys[:2])
    b.unlock(keys[:4])
    report = b.delete_report(keys[:2] + [keys[5]]).result()
    assert (report.deleted, report.absent, report.locked, report.failed) == (keys[:2], [keys[5]], [], [])
    assert b.lookup_and_lock(keys[:2]).result() == [False, False]


def test_a_wrong_sized_buffer_is_a_miss_not_a_short_read(make_s3):
    a = make_s3()
    a.store([key(1)], [obj(1)]).result()
    buf = torch.full((4095,), 9, dtype=torch.uint8)
    assert a.load([key(1)], [buf]).result() == [False]


def test_an_object_deleted_behind_our_back_is_a_clean_miss(make_s3, moto_s3, bucket):
    a = make_s3()
    assert a.store([key(1)], [obj(1)]).result() == [True]
    assert a.usage().total_bytes_used == 4096
    moto_s3.client().delete_object(Bucket=bucket, Key=object_name(key(1)))
    # The cached size still says "hit" (no HEAD); the GET's 404 turns it into a miss and drops it.
    assert a.lookup_and_lock([key(1)]).result() == [True]
    buf = torch.full((4096,), 9, dtype=torch.uint8)
    assert a.load([key(1)], [buf]).result() == [False]
    a.unlock([key(1)])
    assert a.failures["load"] == 0 and a.usage().total_bytes_used == 0
    assert a.lookup_and_lock([key(1)]).result() == [False]
    # Stored again: the adapter no longer believes it is there, so it PUTs.
    assert a.store([key(1)], [obj(1)]).result() == [True]
    assert moto_s3.client().head_object(Bucket=bucket, Key=object_name(key(1)))["ContentLength"] == 4096


def test_a_known_object_is_not_put_again(make_s3, moto_s3, bucket):
    a = make_s3()
    a.store([key(1)], [obj(1)]).result()
    puts = a.report_status()["latency_ms"]["put"]["count"]
    assert a.store([key(1)], [obj(1)]).result() == [True]
    assert a.report_status()["latency_ms"]["put"]["count"] == puts


def test_names_are_url_quoted_in_the_request_path(make_s3, moto_s3, bucket):
    a = make_s3()
    odd = key(3, model="a b/c+d%e", salt="s p")
    assert a.store([odd], [obj(3)]).result() == [True]
    names = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert names == [object_name(odd)] and quote(names[0]) != names[0]
    assert make_s3().lookup_and_lock([odd]).result() == [True]


def test_prefix_keeps_objects_under_it(make_s3, moto_s3, bucket):
    a = make_s3(prefix="node-cache/")
    a.store([key(1)], [obj(1)]).result()
    names = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert names == ["node-cache/" + object_name(key(1))]
    page = a.list_keys()
    assert [e.key.to_object_key() for e in page.entries] == [key(1)]
    # Without the prefix the name reads as another model's key ("node-cache/org/model-a"), never as ours.
    assert [e.key.to_object_key() for e in make_s3().list_keys().entries] == [key(1, model="node-cache/" + MODEL)]


def test_listing_pages_cover_every_object_once_while_stores_continue(make_s3, moto_s3, bucket):
    a = make_s3()
    first = [key(i) for i in range(40)]
    assert all(a.store(first, [obj(i, 64) for i in range(40)]).result())
    moto_s3.client().put_object(Bucket=bucket, Key="not-a-key.txt", Body=b"x")  # another tool's object
    stop = threading.Event()
    later: list[ObjectKey] = []

    def writer() -> None:
        for i in range(1000, 1040):
            if stop.is_set():
                return
            a.store([key(i)], [obj(i, 64)]).result()
            later.append(key(i))

    t = threading.Thread(target=writer)
    t.start()
    seen: list[ObjectKey] = []
    token = None
    pages = 0
    try:
        while True:
            page = a.list_keys(page_size=7, page_token=token)
            seen += [e.key.to_object_key() for e in page.entries]
            assert all(e.size_bytes == 64 for e in page.entries)
            pages += 1
            token = page.next_page_token
            if token is None:
                break
    finally:
        stop.set()
        t.join(timeout=60)
    assert len(seen) == len(set(seen))  # exactly once
    assert set(first) <= set(seen) <= set(first) | set(later)
    assert pages >= 40 // 7
    # A token no S3 could have issued is refused before any request (S3's own 400 maps to ValueError too).
    for bad in ("", "tok\nen", "x" * 5000):
        with pytest.raises(ValueError):
            a.list_keys(page_token=bad)


def test_listing_filters_by_model(make_s3):
    a = make_s3()
    a.store([key(1), key(2, model="other"), key(3, model=MODEL + "x")], [obj(1), obj(2), obj(3)]).result()
    assert [e.key.to_object_key() for e in a.list_keys(model_name=MODEL).entries] == [key(1)]


def test_recover_on_start_accounts_what_the_bucket_holds(make_s3):
    a = make_s3()
    a.store([key(i, salt="t1" if i % 2 else "") for i in range(5)], [obj(i) for i in range(5)]).result()
    assert make_s3().usage().total_bytes_used == 0  # recover_on_start is off by default
    b = make_s3(recover_on_start=True)
    usage = b.usage()
    assert usage.total_bytes_used == 5 * 4096
    assert usage.bytes_by_cache_salt == {"": 3 * 4096, "t1": 2 * 4096}


def test_parallel_batches_keep_per_key_results_in_order(make_s3):
    a = make_s3()
    keys = [key(i) for i in range(32)]
    objs = [obj(i, 1 << 16) for i in range(32)]
    assert a.store(keys, objs).result() == [True] * 32
    bufs = [torch.zeros(1 << 16, dtype=torch.uint8) for _ in range(32)]
    mixed = keys[:16] + [key(i) for i in range(100, 116)]
    assert make_s3().lookup_and_lock(mixed).result() == [True] * 16 + [False] * 16
    assert a.load(keys, bufs).result() == [True] * 32
    assert all(torch.equal(b, o) for b, o in zip(bufs, objs))


def test_status_reports_breaker_and_latency_without_secrets(make_s3):
    a = make_s3()
    a.store([key(1)], [obj(1)]).result()
    status = a.report_status()
    assert status["is_healthy"] is True
    assert status["breaker"]["state"] == "closed"
    assert status["type_name"] == "s3" and status["type"] == "S3L2Adapter"
    assert status["latency_ms"]["put"]["count"] == 1
    text = repr(status)
    assert "testing-secret-key" not in text and "testing-access-key" not in text


def test_a_missing_bucket_is_a_counted_logged_failure(moto_s3, caplog):
    import msgspec
    from lmcache_plugin_s3.adapter import S3AdapterConfig, S3L2Adapter

    from lmcache_core.storage.l2.base import L2AdapterContext

    fields = {k: v for k, v in moto_s3.adapter_config("no-such-bucket").items() if k != "type"}
    a = S3L2Adapter(msgspec.convert(fields, S3AdapterConfig), L2AdapterContext(0, "s3"))
    try:
        with caplog.at_level("ERROR"):
            a.start()
        assert "bucket 'no-such-bucket' does not exist" in caplog.text
        status = a.report_status()
        assert status["is_healthy"] is False and "does not exist" in status["startup_error"]
        assert a.store([key(1)], [obj(1)]).result() == [False]
        assert a.failures["store"] == 1 and a.report_status()["is_healthy"] is False
        assert a.report_status()["failures_by_reason"].get("http_404", 0) >= 2
        assert a.report_status()["breaker"]["state"] == "closed"  # S3 answers: not an outage
        moto_s3.create_bucket("no-such-bucket")  # fixed while the server runs: the next store succeeds
        assert a.store([key(1)], [obj(1)]).result() == [True]
        assert a.report_status()["is_healthy"] is True
    finally:
        a.close()

