"""The fs adapter passes the L2 contract kit (lmcache_core.l2_contract), persistence included."""

from __future__ import annotations

from lmcache_core.l2_contract import check_l2_adapter

ALL = ("round_trip", "absent", "wrong_size_buffer", "locks", "overwrite", "usage", "concurrency", "listing",
       "persistence", "close")


def test_fs_adapter_keeps_the_l2_contract(make_fs, tmp_path):
    report = check_l2_adapter(lambda: make_fs(tmp_path / "contract"), persistent=True)
    assert report == dict.fromkeys(ALL, "passed")
