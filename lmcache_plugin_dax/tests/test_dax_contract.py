"""The dax adapter passes the L2 contract kit (lmcache_core.l2_contract), persistent and volatile."""

from __future__ import annotations

import pytest
from dax_support import MIB, SLOT, device_file, gb, make_adapter

from lmcache_core.l2_contract import check_l2_adapter

ALL = ("round_trip", "absent", "wrong_size_buffer", "locks", "overwrite", "usage", "concurrency", "listing",
       "close")


@pytest.mark.parametrize("persist", [False, True])
def test_dax_adapter_keeps_the_l2_contract(tmp_path, persist):
    size = 32 * MIB
    path = device_file(tmp_path, "dax0.0", size)
    report = check_l2_adapter(lambda: make_adapter(device_path=path, max_dax_size_gb=gb(size),
                                                   persist_enabled=persist),
                              persistent=persist, accounted_nbytes=SLOT)
    expected = dict.fromkeys(ALL, "passed")
    if persist:
        expected["persistence"] = "passed"
    assert report == expected
