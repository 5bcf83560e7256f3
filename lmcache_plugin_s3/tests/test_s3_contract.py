"""The s3 adapter passes the L2 contract kit (lmcache_core.l2_contract) on a real moto server."""

from __future__ import annotations

from lmcache_core.l2_contract import check_l2_adapter

ALL = ("round_trip", "absent", "wrong_size_buffer", "locks", "overwrite", "usage", "concurrency", "listing",
       "persistence", "close")


def test_s3_adapter_keeps_the_l2_contract(make_s3):
    # persistence: a new adapter with recover_on_start lists the bucket and accounts what is there
    report = check_l2_adapter(lambda: make_s3(recover_on_start=True), persistent=True)
    assert report == dict.fromkeys(ALL, "passed")
