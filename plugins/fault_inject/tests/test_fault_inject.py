"""The ``fault_inject`` adapter around a real ``fs`` adapter on a real directory; runtime switches over real HTTP.

One test per fault kind (fail, latency, hang, truncate) and operation where it
applies, the config and ``set`` validation (a refused change leaves the faults
as they were), and the reconfigure route driving a started server's adapter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import lmcache_plugin_fault_inject.plugin as fault_plugin
import lmcache_plugin_fs.plugin as fs_plugin
import lmcache_plugin_reconfigure.plugin as reconfigure_plugin
import msgspec
import pytest
import torch
from lmcache_plugin_fault_inject.adapter import (
    POISON,
    FaultInjectConfig,
    FaultInjectL2Adapter,
    make_adapter,
)

from lmcache_core.config import StorageManagerConfig
from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l2.base import L2AdapterContext
from lmcache_core.testing import make_server, serving

DEADLINE_S = 10.0


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(i.to_bytes(4, "big") * 8, "fi-model", 0x01000100, 0, salt)


def obj(i: int, n: int = 4096) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64).add(i).remainder(251).to(torch.uint8)


def data_files(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_file() and p.name.endswith(".data"))


@pytest.fixture
def make_fi(tmp_path: Path) -> Iterator[Callable[..., FaultInjectL2Adapter]]:
    """``make(faults=..., **config)``: a started fault_inject adapter over ``fs`` in ``tmp_path/l2``."""
    made: list[FaultInjectL2Adapter] = []

    def make(**config: Any) -> FaultInjectL2Adapter:
        cfg = msgspec.convert({"inner": {"type": "fs", "base_path": str(tmp_path / "l2")}, "seed": 7, **config},
                              FaultInjectConfig)
        adapter = make_adapter(cfg, L2AdapterContext(len(made), "fault_inject", io_workers=2))
        adapter.start()
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        adapter.close()


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# -- pass-through -----------------------------------------------------------------------------


def test_without_faults_it_is_the_inner_adapter(make_fi, tmp_path):
    a = make_fi()
    assert a.store([key(1), key(2)], [obj(1), obj(2)]).result() == [True, True]
    assert len(data_files(tmp_path / "l2")) == 2
    assert a.lookup_and_lock([key(1), key(3)]).result() == [True, False]
    a.unlock([key(1)])
    out = torch.zeros(4096, dtype=torch.uint8)
    assert a.load([key(2)], [out]).result() == [True]
    assert torch.equal(out, obj(2))
    assert a.delete([key(1)]).result() == [True]
    assert len(data_files(tmp_path / "l2")) == 1
    st = a.report_status()
    assert st["inner_type"] == "fs" and st["stored_object_count"] == 1
    assert all(v == 0 for kinds in st["fault_inject"]["injected"].values() for v in kinds.values())


def test_a_restarted_wrapper_recovers_what_the_inner_adapter_holds(make_fi):
    assert make_fi().store([key(1)], [obj(1)]).result() == [True]
    again = make_fi()
    assert again.report_status()["stored_object_count"] == 1
    assert again.lookup_and_lock([key(1)]).result() == [True]


# -- fail -------------------------------------------------------------------------------------


def test_store_failures_write_nothing_and_are_counted(make_fi, tmp_path):
    a = make_fi(faults={"store": {"fail_rate": 1.0}})
    assert a.store([key(1), key(2)], [obj(1), obj(2)]).result() == [False, False]
    assert data_files(tmp_path / "l2") == []
    st = a.report_status()
    assert st["failures"]["store"] == 2 and st["stored_object_count"] == 0
    assert st["fault_inject"]["injected"]["store"]["fail"] == 2


def test_lookup_load_and_delete_failures(make_fi, tmp_path):
    a = make_fi()
    assert a.store([key(1)], [obj(1)]).result() == [True]
    a.apply_reconfigure("set", {"faults": {"lookup": {"fail_rate": 1}, "load": {"fail_rate": 1},
                                           "delete": {"fail_rate": 1}}})
    assert a.lookup_and_lock([key(1)]).result() == [False]  # a failed lookup is a miss
    out = torch.zeros(4096, dtype=torch.uint8)
    assert a.load([key(1)], [out]).result() == [False]
    assert not out.any()  # a failed load never reached the inner adapter
    report = a.delete_report([key(1)]).result()
    assert report.deleted == [] and [k for k, _ in report.failed] == [key(1)]
    assert len(data_files(tmp_path / "l2")) == 1  # still there
    assert a.report_status()["failures"] == {"store": 0, "lookup": 1, "load": 1, "delete": 1}


def test_rates_are_drawn_per_object_from_the_seed(make_fi):
    outcomes = []
    for _ in range(2):
        a = make_fi(faults={"store": {"fail_rate": 0.5}}, seed=1234)
        keys = [key(100 + i) for i in range(64)]
        outcomes.append(a.store(keys, [obj(i, 64) for i in range(64)]).result())
        a.delete(keys).result()
    assert outcomes[0] == outcomes[1]  # the same seed, the same faults
    assert 0 < outcomes[0].count(False) < 64


# -- latency ----------------------------------------------------------------------------------


def test_latency_is_added_to_every_call_of_the_operation(make_fi):
    a = make_fi(faults={"lookup": {"latency_ms": 30}})
    assert a.store([key(1)], [obj(1)]).result() == [True]
    started = time.monotonic()
    assert a.lookup_and_lock([key(1), key(2)]).result() == [True, False]
    assert time.monotonic() - started >= 0.055  # two calls, each waited at least 30 ms
    injected = a.report_status()["fault_inject"]["injected"]
    assert injected["lookup"]["latency"] == 2 and injected["store"]["latency"] == 0


# -- hang -------------------------------------------------------------------------------------


def test_a_hung_store_blocks_until_released_then_fails(make_fi, tmp_path):
    a = make_fi(faults={"store": {"hang_rate": 1.0}}, hang_seconds=60)
    fut = a.store([key(1)], [obj(1)])
    wait_until(lambda: a.reconfigure_status()["hung_now"] == 1, "the store to hang")
    assert not fut.done()
    a.apply_reconfigure("release", {})
    assert fut.result(timeout=DEADLINE_S) == [False]
    assert data_files(tmp_path / "l2") == []
    assert a.reconfigure_status()["hung_now"] == 0
    assert a.reconfigure_status()["injected"]["store"]["hang"] == 1


def test_a_hang_ends_by_itself_after_hang_seconds(make_fi):
    a = make_fi(faults={"load": {"hang_rate": 1.0}}, hang_seconds=0.2)
    assert a.store([key(1)], [obj(1)]).result() == [True]
    out = torch.zeros(4096, dtype=torch.uint8)
    assert a.load([key(1)], [out]).result(timeout=DEADLINE_S) == [False]
    assert a.report_status()["failures"]["load"] == 1


def test_closing_releases_hung_calls(make_fi):
    a = make_fi(faults={"delete": {"hang_rate": 1.0}}, hang_seconds=600)
    assert a.store([key(1)], [obj(1)]).result() == [True]
    fut = a.delete([key(1)])
    wait_until(lambda: a.reconfigure_status()["hung_now"] == 1, "the delete to hang")
    closer = threading.Thread(target=a.close)
    closer.start()
    closer.join(DEADLINE_S)
    assert not closer.is_alive(), "close() waited for a hung call"
    assert fut.result(timeout=DEADLINE_S) == [False]


# -- truncate ---------------------------------------------------------------------------------


def test_a_truncated_load_fails_and_poisons_the_tail(make_fi):
    a = make_fi(faults={"load": {"truncate_rate": 1.0}})
    assert a.store([key(1)], [obj(1)]).result() == [True]
    out = torch.zeros(4096, dtype=torch.uint8)
    assert a.load([key(1)], [out]).result() == [False]
    assert torch.equal(out[:2048], obj(1)[:2048])
    assert bool((out[2048:] == POISON).all())
    assert a.reconfigure_status()["injected"]["load"]["truncate"] == 1
    a.apply_reconfigure("clear", {})
    assert a.load([key(1)], [out]).result() == [True] and torch.equal(out, obj(1))


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("config, message", [
    ({"faults": {"store": {"fail_rate": 1.5}}}, "fail_rate"),
    ({"faults": {"store": {"fail_rate": "0.5"}}}, "Expected `float`"),
    ({"faults": {"store": {"truncate_rate": 0.1}}}, "load only"),
    ({"faults": {"load": {"fail_rate": 0.6, "hang_rate": 0.6}}}, "<= 1"),
    ({"faults": {"load": {"latency_ms": -1}}}, "latency_ms"),
    ({"faults": {"upload": {}}}, "unknown field"),
    ({"hang_seconds": 0}, "hang_seconds"),
    ({"inner": {"type": "fault_inject", "inner": {}}}, "cannot itself"),
    ({"inner": {"type": "no-such-type"}}, "unknown type"),
    ({"inner": {"type": "fs"}}, "base_path"),
])
def test_bad_configs_are_refused_at_start(tmp_path, config, message):
    full = {"inner": {"type": "fs", "base_path": str(tmp_path)}, **config}
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(full, FaultInjectConfig)


@pytest.mark.parametrize("params", [
    {"faults": {"store": {"fail_rate": 2}}},
    {"faults": {"store": {"truncate_rate": 0.5}}},
    {"faults": {"nope": {}}},
    {"faults": {"store": {"fail_rate": 0.1, "bogus": 1}}},
    {"enabled": "yes"},
    {"hang_seconds": -1},
])
def test_a_refused_set_changes_nothing(make_fi, params):
    a = make_fi(faults={"load": {"fail_rate": 0.25}})
    before = a.reconfigure_status()
    with pytest.raises(ValueError):
        a.apply_reconfigure("set", params)
    assert a.reconfigure_status() == before


def test_set_replaces_named_operations_only_and_enabled_switches_all(make_fi):
    a = make_fi(faults={"load": {"fail_rate": 0.25}, "store": {"latency_ms": 5}})
    st = a.apply_reconfigure("set", {"faults": {"store": {"fail_rate": 1.0}}})
    assert st["faults"]["store"] == {"fail_rate": 1.0, "latency_ms": 0.0, "hang_rate": 0.0, "truncate_rate": 0.0}
    assert st["faults"]["load"]["fail_rate"] == 0.25
    a.apply_reconfigure("set", {"enabled": False})
    assert a.store([key(1)], [obj(1)]).result() == [True]
    a.apply_reconfigure("set", {"enabled": True})
    assert a.store([key(2)], [obj(2)]).result() == [False]


# -- through the server and the generic reconfigure route -------------------------------------


def test_switched_at_runtime_over_http(tmp_path):
    l2 = [{"type": "fault_inject", "inner": {"type": "fs", "base_path": str(tmp_path / "l2")}, "seed": 3}]
    server = make_server([("fs", fs_plugin), ("fault_inject", fault_plugin), ("reconfigure", reconfigure_plugin)],
                         configs={"storage_manager": StorageManagerConfig(l1_size_gb=0.05, l2_adapter=l2)})
    try:
        adapter = server.storage.l2_adapters[0]
        assert isinstance(adapter, FaultInjectL2Adapter)
        with serving(server) as url, httpx.Client(base_url=url, timeout=30) as http:
            assert http.get("/reconfigure/backends").json()["backends"] == ["fault_inject"]
            r = http.post("/reconfigure/fault_inject/set", json={"faults": {"store": {"fail_rate": 1}}})
            assert r.status_code == 200, r.text
            assert r.json()["faults"]["store"]["fail_rate"] == 1.0
            assert adapter.store([key(1)], [obj(1)]).result() == [False]
            bad = http.post("/reconfigure/fault_inject/set", json={"faults": {"store": {"fail_rate": "1"}}})
            assert bad.status_code == 400 and "error" in bad.json()
            assert http.post("/reconfigure/fault_inject/explode", json={}).status_code == 400
            assert http.post("/reconfigure/fault_inject/clear", json={}).status_code == 200
            assert adapter.store([key(1)], [obj(1)]).result() == [True]
            status = http.get("/reconfigure/fault_inject/status").json()
            assert status["adapters"][0]["status"]["injected"]["store"]["fail"] == 1
    finally:
        server.stop()
