"""The reconfigure routes through real HTTP (LMCache's HTTP API, "Runtime L2 Reconfiguration").

One server carries five L2 adapters, in this order (engine-wide index → backend-local index):

====  =========  ===========================================
 #     type       role
====  =========  ===========================================
 0     memory     not reconfigurable: never listed, never reachable
 1     Knob       knob #0 (generic backend, mixed-case type name)
 2     dax        dax #0, one device file mapped at start
 3     Knob       knob #1
 4     dax        dax #1, no devices
====  =========  ===========================================

The adapters are real (``reconfigure_test_adapters``: a plugin registering the ``dax`` and ``Knob``
types through ``lmcache_register_l2_adapters``); DAX devices are real files. Tests look at the
adapters' own state to see which instance an operation reached and with which parameters, and that a
refused request changed nothing.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import lmcache_plugin_reconfigure.plugin as reconfigure_plugin
import pytest
import reconfigure_test_adapters as test_adapters
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reconfigure_test_adapters import FileDaxAdapter, KnobAdapter
from support import MemoryPlugin

from lmcache_core.cli import build_parser
from lmcache_core.config import MPConfig, StorageManagerConfig
from lmcache_core.keys import ObjectKey
from lmcache_core.plugins import PluginHost
from lmcache_core.storage.l2.base import Reconfigurable
from lmcache_core.testing import free_port
from lmcache_core.units import KIB, MIB, SIZE_ERROR

JSON = "application/json"
TIMEOUT = 30.0
DEVICE_FILE_BYTES = 1 * MIB
UNAVAILABLE = {"error": "engine not initialized"}
PLUGINS = [("reconfigure", reconfigure_plugin), ("memory-l2", MemoryPlugin()), ("reconfigure-tests", test_adapters)]


@dataclass
class Live:
    """A started server, its base URL and its adapters by role."""

    server: Any
    url: str
    http: httpx.Client
    devices: list[str]  # device files that exist (readable, writable, DEVICE_FILE_BYTES long)
    tmp: Path

    @property
    def adapters(self) -> list[Any]:
        return list(self.server.storage.l2_adapters)

    @property
    def knob(self) -> list[KnobAdapter]:
        return [self.adapters[1], self.adapters[3]]

    @property
    def dax(self) -> list[FileDaxAdapter]:
        return [self.adapters[2], self.adapters[4]]

    def post(self, path: str, body: Any = None, *, raw: bytes | None = None, **kw: Any) -> httpx.Response:
        content = raw if raw is not None else json.dumps(body).encode()
        return self.http.post(path, content=content, headers={"Content-Type": JSON, **kw.pop("headers", {})}, **kw)

    def snapshot(self) -> list[Any]:
        """Everything a reconfiguration could change, per adapter."""
        out: list[Any] = []
        for adapter in self.adapters:
            state: Any = None
            if isinstance(adapter, Reconfigurable):
                state = adapter.reconfigure_status()
            extra = dict(adapter.settings) if isinstance(adapter, KnobAdapter) else None
            out.append((state, extra, adapter.usage().total_bytes_used, len(getattr(adapter, "applied", []))))
        return out


def device_file(tmp: Path, name: str, size: int = DEVICE_FILE_BYTES) -> str:
    path = tmp / name
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


def l2_config(tmp: Path, *, knob: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    knob = knob or {}
    return [{"type": "memory"}, {"type": "Knob", **knob},
            {"type": "dax", "devices": [{"device_path": device_file(tmp, "dax0-dev0"), "size": "256KiB"}]},
            {"type": "Knob", **knob}, {"type": "dax"}]


def options(*argv: str) -> Any:
    return build_parser(PluginHost(load_entry_points=False), environ={}).parse_args(list(argv))


def make_live(factory: Any, serve: Any, tmp: Path, *argv: str, l2: list[dict[str, Any]] | None = None,
              start: bool = True) -> Live:
    server = factory(PLUGINS, options=options(*argv) if argv else None, start=start, configs={
        "mp": MPConfig(host="127.0.0.1", port=free_port(), worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.05, l2_adapter=l2 if l2 is not None else l2_config(tmp)),
    })
    url = serve(server)
    devices = [device_file(tmp, f"spare{i}") for i in range(3)]
    return Live(server, url, httpx.Client(base_url=url, timeout=TIMEOUT), devices, tmp)


@pytest.fixture
def live(lmcache_server_factory: Any, lmcache_http: Any, tmp_path: Path) -> Iterator[Live]:
    lv = make_live(lmcache_server_factory, lmcache_http, tmp_path)
    with lv.http:
        yield lv


def answer(resp: httpx.Response, status: int) -> Any:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == JSON
    return resp.json()


def error_of(resp: httpx.Response, status: int) -> str:
    body = answer(resp, status)
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
    return str(body["error"])


def detail_of(resp: httpx.Response) -> list[dict[str, Any]]:
    """A 422 in FastAPI's envelope; the list of errors."""
    body = answer(resp, 422)
    assert list(body) == ["detail"] and isinstance(body["detail"], list) and body["detail"], body
    for item in body["detail"]:
        assert set(item) == {"type", "loc", "msg"} and item["loc"][0] == "body", item
    return list(body["detail"])


def key(n: int) -> ObjectKey:
    return ObjectKey(n.to_bytes(4, "big") * 8, "reconfigure-model", 0)


def store(adapter: Any, keys: list[ObjectKey], size: int) -> None:
    objs = [bytearray([k.chunk_hash[3]]) * size for k in keys]
    assert adapter.store(keys, objs).result(TIMEOUT) == [True] * len(keys)


def objects_on(adapter: FileDaxAdapter, path: str) -> set[ObjectKey]:
    return set(adapter.devices[path].objects)


# -- GET /reconfigure/backends --------------------------------------------------------------------


def test_backends_lists_each_reconfigurable_backend_once_sorted_lower_case(live: Live) -> None:
    assert answer(live.http.get("/reconfigure/backends"), 200) == {
        "enabled": True, "num_backends": 2, "backends": ["dax", "knob"]}


@pytest.mark.parametrize("l2", [[], [{"type": "memory"}]], ids=["no-l2", "only-non-reconfigurable"])
def test_backends_disabled_without_a_reconfigurable_adapter(lmcache_server_factory: Any, lmcache_http: Any,
                                                            tmp_path: Path, l2: list[dict[str, Any]]) -> None:
    lv = make_live(lmcache_server_factory, lmcache_http, tmp_path, l2=l2)
    with lv.http:
        assert answer(lv.http.get("/reconfigure/backends"), 200) == {
            "enabled": False, "num_backends": 0, "backends": []}
        assert answer(lv.http.get("/reconfigure/dax/status"), 200) == {
            "enabled": False, "backend": "dax", "num_adapters": 0, "adapters": []}
        assert error_of(lv.post("/reconfigure/dax/add", {"device_path": lv.devices[0], "size": 1}), 404) == \
            "dax adapter not found"


# -- 503 before the engine is ready, and after it stopped -------------------------------------------


def assert_unavailable(lv: Live) -> None:
    requests = [
        lv.http.get("/reconfigure/backends"),
        lv.http.get("/reconfigure/dax/status"),
        lv.http.get("/reconfigure/%20/status"),  # would be a 400: the engine is checked first
        lv.post("/reconfigure/knob/set", {"x": 1}),
        lv.post("/reconfigure/dax/add", raw=b"not json"),
        lv.post("/reconfigure/knob/status", {}),
    ]
    for resp in requests:
        assert answer(resp, 503) == UNAVAILABLE, resp.request.url


def test_every_route_answers_503_before_start(lmcache_server_factory: Any, lmcache_http: Any, tmp_path: Path) -> None:
    lv = make_live(lmcache_server_factory, lmcache_http, tmp_path, start=False)
    with lv.http:
        assert_unavailable(lv)


def test_every_route_answers_503_after_stop(lmcache_server_factory: Any, lmcache_http: Any, tmp_path: Path) -> None:
    lv = make_live(lmcache_server_factory, lmcache_http, tmp_path)
    with lv.http:
        assert answer(lv.http.get("/reconfigure/backends"), 200)["enabled"] is True
        lv.server.stop()
        assert_unavailable(lv)


# -- GET /reconfigure/{backend}/status -------------------------------------------------------------


def test_status_rewrites_adapter_index_to_the_backend_local_position(live: Live) -> None:
    body = answer(live.http.get("/reconfigure/dax/status"), 200)
    assert list(body) == ["enabled", "backend", "num_adapters", "adapters"]
    assert body["enabled"] is True and body["backend"] == "dax" and body["num_adapters"] == 2
    first, second = body["adapters"]
    assert (first["adapter_index"], first["l2_adapter_index"]) == (0, 2)
    assert (second["adapter_index"], second["l2_adapter_index"]) == (1, 4)
    for entry, adapter in zip(body["adapters"], live.dax):
        assert entry["backend"] == "dax"
        assert entry["supported_operations"] == ["add", "remove", "resize"]
        assert entry["status"] == adapter.reconfigure_status()
    assert [d["device_path"] for d in first["status"]["devices"]] == [str(live.tmp / "dax0-dev0")]
    assert first["status"]["total_capacity_bytes"] == 256 * KIB
    assert second["status"]["devices"] == []

    knobs = answer(live.http.get("/reconfigure/knob/status"), 200)
    assert [(a["adapter_index"], a["l2_adapter_index"]) for a in knobs["adapters"]] == [(0, 1), (1, 3)]
    assert knobs["adapters"][0]["status"] == {"settings": {}, "applied": 0}


@pytest.mark.parametrize("spelling", ["DAX", "%20dax%20", "Dax", "%09dAx%0A", "dax%20%20"])
def test_status_normalises_the_backend(live: Live, spelling: str) -> None:
    body = answer(live.http.get(f"/reconfigure/{spelling}/status"), 200)
    assert body["backend"] == "dax" and body["num_adapters"] == 2


def test_status_matches_a_mixed_case_type_name(live: Live) -> None:
    for spelling in ("knob", "Knob", "KNOB"):
        body = answer(live.http.get(f"/reconfigure/{spelling}/status"), 200)
        assert body["backend"] == "knob" and body["num_adapters"] == 2


@pytest.mark.parametrize("backend", ["nope", "memory", "backends", "fs", "dax0", "%C3%A9"])
def test_status_of_an_unknown_or_unreconfigurable_backend_is_disabled_not_404(live: Live, backend: str) -> None:
    body = answer(live.http.get(f"/reconfigure/{backend}/status"), 200)
    assert body == {"enabled": False, "backend": urllib.parse.unquote(backend).lower(), "num_adapters": 0,
                    "adapters": []}


@pytest.mark.parametrize("blank", ["%20", "%20%20%20", "%09", "%0A%0D"])
def test_status_of_a_blank_backend_is_400(live: Live, blank: str) -> None:
    assert error_of(live.http.get(f"/reconfigure/{blank}/status"), 400) == "backend must be non-empty"


def test_status_survives_an_adapter_whose_status_raises(lmcache_server_factory: Any, lmcache_http: Any,
                                                        tmp_path: Path) -> None:
    lv = make_live(lmcache_server_factory, lmcache_http, tmp_path, l2=l2_config(tmp_path, knob={"status_fails": True}))
    with lv.http:
        body = answer(lv.http.get("/reconfigure/knob/status"), 200)
        assert body["num_adapters"] == 2
        for entry in body["adapters"]:
            assert entry["status"] == {"error": "OSError: status probe failed"}
            assert entry["supported_operations"] == []


# -- POST: the generic path (Knob) -------------------------------------------------------------------


def test_generic_operation_reaches_the_backend_local_instance_with_verbatim_params(live: Live) -> None:
    body = answer(live.post("/reconfigure/knob/set", {"adapter_index": 1, "limit": 7, "note": {"a": [1, None]}}), 200)
    assert body == {"status": "ok", "settings": {"limit": 7, "note": {"a": [1, None]}}, "adapter_index": 1,
                    "l2_adapter_index": 3}
    assert live.knob[1].applied == [("set", {"limit": 7, "note": {"a": [1, None]}})]
    assert live.knob[0].applied == [] and live.knob[0].settings == {}

    # adapter_index defaults to 0
    assert answer(live.post("/reconfigure/knob/set", {"limit": 1}), 200)["adapter_index"] == 0
    assert live.knob[0].applied == [("set", {"limit": 1})]
    # the status reports what the operations did, per instance
    adapters = answer(live.http.get("/reconfigure/knob/status"), 200)["adapters"]
    assert [a["status"]["settings"] for a in adapters] == [{"limit": 1}, {"limit": 7, "note": {"a": [1, None]}}]


@pytest.mark.parametrize(("backend", "operation"), [("KNOB", "SET"), ("%20knob", "set%20"), ("Knob", "%09Set%0A")])
def test_generic_operation_normalises_backend_and_operation(live: Live, backend: str, operation: str) -> None:
    answer(live.post(f"/reconfigure/{backend}/{operation}", {"adapter_index": 1, "limit": 2}), 200)
    assert live.knob[1].applied == [("set", {"limit": 2})]


@pytest.mark.parametrize(("body", "message"), [
    ({"kind": "invalid"}, (400, {"error": "invalid knob"})),
    ({"kind": "busy"}, (409, {"error": "knob is busy"})),
    ({"kind": "conflict"}, (409, {"error": "knob conflict", "blocking": 3})),
    ({"kind": "unsupported"}, (501, {"error": "this knob cannot turn"})),
    ({"kind": "unavailable"}, (503, {"error": "knob backend unavailable"})),
    ({"kind": "no-room"}, (507, {"error": "no room for the knob"})),
    ({"kind": "other"}, (400, {"error": "unknown failure kind: 'other'"})),
])
def test_adapter_refusals_map_to_their_statuses_and_change_nothing(live: Live, body: dict[str, Any],
                                                                   message: tuple[int, dict[str, Any]]) -> None:
    answer(live.post("/reconfigure/knob/set", {"adapter_index": 1, "limit": 3}), 200)
    before = live.snapshot()
    status, expected = message
    assert answer(live.post("/reconfigure/knob/fail", {"adapter_index": 1, **body}), status) == expected
    assert live.snapshot() == before


def test_an_adapter_value_error_is_400_and_changes_nothing(live: Live) -> None:
    before = live.snapshot()
    assert error_of(live.post("/reconfigure/knob/set", {"limit": -1, "other": 1}), 400) == \
        "limit must be a non-negative integer"
    assert error_of(live.post("/reconfigure/knob/set", {}), 400) == "set needs at least one field"
    assert live.snapshot() == before


@pytest.mark.parametrize(("kind", "message"), [
    ("crash", "reconfigure bug failed: KeyError"),
    ("not-a-dict", "reconfigure bug failed: the adapter returned no result object"),
    ("bad-status", "reconfigure bug failed: invalid error status from the adapter"),
])
def test_an_adapter_bug_is_a_500_that_names_no_internals(lmcache_server_factory: Any, lmcache_http: Any,
                                                         tmp_path: Path, kind: str, message: str) -> None:
    lv = make_live(lmcache_server_factory, lmcache_http, tmp_path, l2=l2_config(tmp_path, knob={"allow_bugs": True}))
    with lv.http:
        assert error_of(lv.post("/reconfigure/knob/bug", {"kind": kind}), 500) == message
        # the server is fine afterwards
        assert answer(lv.post("/reconfigure/knob/set", {"limit": 1}), 200)["settings"] == {"limit": 1}


# -- POST: 400 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "message"), [
    ("/reconfigure/%20/set", "backend must be non-empty"),
    ("/reconfigure/%09%0A/add", "backend must be non-empty"),
    ("/reconfigure/%20/%20", "backend must be non-empty"),
    ("/reconfigure/knob/%20", "operation must be non-empty"),
    ("/reconfigure/dax/%20%09", "operation must be non-empty"),
    ("/reconfigure/knob/spin", "unsupported knob reconfigure operation: spin"),
    ("/reconfigure/knob/status", "unsupported knob reconfigure operation: status"),
    ("/reconfigure/knob/Bug", "unsupported knob reconfigure operation: bug"),  # listed only with allow_bugs
    ("/reconfigure/dax/status", "unsupported dax reconfigure operation: status"),
    ("/reconfigure/dax/grow", "unsupported dax reconfigure operation: grow"),
    ("/reconfigure/DAX/%20ATTACH", "unsupported dax reconfigure operation: attach"),
])
def test_blank_path_segments_and_unsupported_operations_are_400(live: Live, path: str, message: str) -> None:
    before = live.snapshot()
    assert error_of(live.post(path, {"device_path": live.devices[0], "size": "1KiB"}), 400) == message
    assert live.snapshot() == before


def test_an_unsupported_dax_operation_is_400_whatever_the_body(live: Live) -> None:
    for raw in (b"{}", b'{"bogus": true}', b'{"adapter_index": 99}'):
        assert error_of(live.post("/reconfigure/dax/attach", raw=raw), 400) == \
            "unsupported dax reconfigure operation: attach"


@pytest.mark.parametrize("size", [0, -1, -(2**70), 2**63, "0", "0GiB", "-1GiB", "1.5XB", "", "  ", "GiB", "1e9",
                                  "nan", "inf", "0.4b", "1" * 65, "10PiB", "\u0661"])
@pytest.mark.parametrize("operation", ["add", "resize"])
def test_an_invalid_dax_size_is_400_and_changes_nothing(live: Live, operation: str, size: Any) -> None:
    before = live.snapshot()
    path = str(live.tmp / "dax0-dev0")
    message = error_of(live.post(f"/reconfigure/dax/{operation}", {"device_path": path, "size": size}), 400)
    assert message.startswith(SIZE_ERROR)
    assert live.snapshot() == before


# -- POST: 404 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "body"), [
    ("dax", {"adapter_index": 2, "device_path": "/x", "size": 1}),
    ("dax", {"adapter_index": -1, "device_path": "/x", "size": 1}),
    ("dax", {"adapter_index": 10**30, "device_path": "/x", "size": 1}),
    ("knob", {"adapter_index": 2, "limit": 1}),
    ("knob", {"adapter_index": -1, "limit": 1}),
    ("nope", {"limit": 1}),
    ("memory", {}),
    ("%20Nope%20", {"adapter_index": 0}),
])
def test_an_out_of_range_adapter_index_or_unknown_backend_is_404(live: Live, backend: str, body: Any) -> None:
    before = live.snapshot()
    operation = "add" if backend == "dax" else "set"
    name = urllib.parse.unquote(backend).strip().lower()
    assert error_of(live.post(f"/reconfigure/{backend}/{operation}", body), 404) == f"{name} adapter not found"
    assert live.snapshot() == before


# -- POST: 422 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "kind"), [
    (b"", "missing"), (b"   ", "missing"), (b"not json", "json_invalid"), (b'{"a": 1', "json_invalid"),
    (b"[]", "dict_type"), (b'"a"', "dict_type"), (b"1", "dict_type"), (b"null", "dict_type"),
    (b"[" * 100_000, "json_invalid"), (b'{"a": NaN}', "json_invalid"), (b"\xff\xfe", "json_invalid"),
])
@pytest.mark.parametrize("path", ["/reconfigure/dax/add", "/reconfigure/knob/set", "/reconfigure/nope/x"])
def test_a_body_that_is_not_a_json_object_is_422(live: Live, path: str, raw: bytes, kind: str) -> None:
    before = live.snapshot()
    [item] = detail_of(live.post(path, raw=raw))
    assert item["type"] == kind and item["loc"] == ["body"]
    assert live.snapshot() == before


@pytest.mark.parametrize(("operation", "body", "kind", "loc"), [
    ("add", {"size": "1KiB"}, "missing", ["body", "device_path"]),
    ("add", {"device_path": "/dev/dax0.0"}, "missing", ["body", "size"]),
    ("add", {"device_path": "/dev/dax0.0", "size": 1, "mode": "migrate"}, "extra_forbidden", ["body", "mode"]),
    ("add", {"device_path": "/dev/dax0.0", "size": True}, "value_error", ["body", "size"]),
    ("add", {"device_path": "/dev/dax0.0", "size": 1.5}, "value_error", ["body", "size"]),
    ("add", {"device_path": "/dev/dax0.0", "size": None}, "value_error", ["body", "size"]),
    ("add", {"device_path": 5, "size": 1}, "value_error", ["body", "device_path"]),
    ("add", {"device_path": "/dev/dax0.0", "size": 1, "adapter_index": "0"}, "value_error", ["body", "adapter_index"]),
    ("add", {"device_path": "/dev/dax0.0", "size": 1, "adapter_index": 0.0}, "value_error", ["body", "adapter_index"]),
    ("add", {"device_path": "/dev/dax0.0", "size": 1, "adapter_index": True}, "value_error",
     ["body", "adapter_index"]),
    ("remove", {}, "missing", ["body", "device_path"]),
    ("remove", {"device_path": "/d", "mode": "shred"}, "value_error", ["body", "mode"]),
    ("remove", {"device_path": "/d", "force": 1}, "value_error", ["body", "force"]),
    ("remove", {"device_path": "/d", "force": "true"}, "value_error", ["body", "force"]),
    ("remove", {"device_path": "/d", "size": 1}, "extra_forbidden", ["body", "size"]),
    ("resize", {"device_path": "/d", "size": 1, "mode": "drain"}, "value_error", ["body", "mode"]),
    ("resize", {"device_path": "/d"}, "missing", ["body", "size"]),
    ("resize", {"device_path": "/d", "size": 1, "extra": None}, "extra_forbidden", ["body", "extra"]),
])
def test_a_dax_body_that_fails_the_schema_is_422(live: Live, operation: str, body: Any, kind: str,
                                                 loc: list[Any]) -> None:
    before = live.snapshot()
    [item] = detail_of(live.post(f"/reconfigure/dax/{operation}", body))
    assert item["type"] == kind and item["loc"] == loc, item
    assert live.snapshot() == before


@pytest.mark.parametrize("index", ["1", 1.0, True, None, [0], {"i": 0}])
def test_a_generic_adapter_index_that_is_not_an_integer_is_422(live: Live, index: Any) -> None:
    before = live.snapshot()
    [item] = detail_of(live.post("/reconfigure/knob/set", {"adapter_index": index, "limit": 1}))
    assert item["loc"] == ["body", "adapter_index"]
    assert live.snapshot() == before


# -- POST /reconfigure/dax/{add,remove,resize}: the Device-DAX operations -----------------------------


def test_dax_add_parses_size_and_reaches_the_chosen_instance(live: Live) -> None:
    dev = live.devices[0]
    body = answer(live.post("/reconfigure/dax/add", {"adapter_index": 1, "device_path": dev, "size": " 1.5 kib "}), 200)
    assert body == {"status": "ok", "operation": "add", "device": {"device_path": dev, "state": "active",
                                                                   "size_bytes": 1536},
                    "already_mapped": False, "adapter_index": 1, "l2_adapter_index": 4}
    assert live.dax[1].applied == [("add", {"device_path": dev, "size_bytes": 1536})]
    assert live.dax[0].applied == []
    status = answer(live.http.get("/reconfigure/dax/status"), 200)["adapters"][1]["status"]
    assert status["total_capacity_bytes"] == 1536
    assert [(d["device_path"], d["state"]) for d in status["devices"]] == [(dev, "active")]
    # an integer size is a byte count
    answer(live.post("/reconfigure/dax/add", {"adapter_index": 1, "device_path": live.devices[1], "size": 4096}), 200)
    assert live.dax[1].applied[-1] == ("add", {"device_path": live.devices[1], "size_bytes": 4096})


def test_dax_add_is_idempotent_and_refuses_a_different_size_with_409(live: Live) -> None:
    dev = live.devices[0]
    answer(live.post("/reconfigure/dax/add", {"device_path": dev, "size": "64KiB"}), 200)
    again = answer(live.post("/reconfigure/dax/add", {"device_path": dev, "size": 65536}), 200)
    assert again["already_mapped"] is True
    before = live.snapshot()
    assert "already mapped" in error_of(live.post("/reconfigure/dax/add", {"device_path": dev, "size": "32KiB"}), 409)
    assert live.snapshot() == before


@pytest.mark.parametrize("case", ["missing", "directory", "too-small", "nul", "long"])
def test_dax_add_refuses_a_device_that_cannot_be_used_with_400(live: Live, case: str) -> None:
    small = device_file(live.tmp, "small", 1000)
    path = {"missing": str(live.tmp / "absent"), "directory": str(live.tmp), "too-small": small, "nul": "/tmp/a\x00b", "long": "/" + "x" * 5000}[case]
    before = live.snapshot()
    message = error_of(live.post("/reconfigure/dax/add", {"device_path": path, "size": "1000" if case != "too-small"
                                                          else "1001"}), 400)
    assert "device" in message
    assert live.snapshot() == before


def test_dax_remove_migrates_objects_to_the_other_devices(live: Live) -> None:
    dax = live.dax[0]
    first = str(live.tmp / "dax0-dev0")
    keys = [key(i) for i in range(4)]
    store(dax, keys, 1000)
    assert objects_on(dax, first) == set(keys)
    answer(live.post("/reconfigure/dax/add", {"device_path": live.devices[0], "size": "8KiB"}), 200)

    body = answer(live.post("/reconfigure/dax/remove", {"device_path": first}), 200)  # mode defaults to migrate
    assert body["mode"] == "migrate" and body["migrated"] == 4 and body["evicted"] == 0
    assert body["device"]["state"] == "removed"
    assert dax.applied[-1] == ("remove", {"device_path": first, "mode": "migrate", "force": False})
    assert objects_on(dax, live.devices[0]) == set(keys)
    assert dax.lookup_and_lock(keys).result(TIMEOUT) == [True] * 4  # still readable
    dax.unlock(keys)
    # a removed device is gone for operations (a tombstone in the status)
    assert "device not found" in error_of(live.post("/reconfigure/dax/remove", {"device_path": first}), 404)
    devices = answer(live.http.get("/reconfigure/dax/status"), 200)["adapters"][0]["status"]["devices"]
    assert [(d["device_path"], d["state"]) for d in devices] == [(first, "removed"), (live.devices[0], "active")]


def test_dax_remove_without_room_to_migrate_is_507_and_changes_nothing(live: Live) -> None:
    dax = live.dax[0]
    first = str(live.tmp / "dax0-dev0")
    store(dax, [key(i) for i in range(4)], 1000)
    answer(live.post("/reconfigure/dax/add", {"device_path": live.devices[0], "size": 2000}), 200)
    before = live.snapshot()
    assert "no destination capacity" in error_of(live.post("/reconfigure/dax/remove",
                                                           {"device_path": first, "mode": "migrate"}), 507)
    assert live.snapshot() == before


def test_dax_remove_evict_deletes_and_drain_keeps_objects_readable(live: Live) -> None:
    dax = live.dax[0]
    first = str(live.tmp / "dax0-dev0")
    keys = [key(i) for i in range(3)]
    store(dax, keys, 100)
    answer(live.post("/reconfigure/dax/add", {"device_path": live.devices[0], "size": "4KiB"}), 200)

    drained = answer(live.post("/reconfigure/dax/remove", {"device_path": first, "mode": "drain"}), 200)
    assert drained["device"]["state"] == "draining" and drained["evicted"] == 0
    assert dax.lookup_and_lock(keys).result(TIMEOUT) == [True] * 3
    dax.unlock(keys)
    store(dax, [key(9)], 100)  # new objects avoid the draining device
    assert objects_on(dax, live.devices[0]) == {key(9)}

    evicted = answer(live.post("/reconfigure/dax/remove", {"device_path": first, "mode": "evict"}), 200)
    assert evicted["evicted"] == 3 and evicted["device"]["state"] == "removed"
    assert dax.lookup_and_lock(keys).result(TIMEOUT) == [False] * 3
    assert dax.usage().total_bytes_used == 100


def test_dax_locked_objects_refuse_remove_and_shrink_with_409_unless_forced(live: Live) -> None:
    dax = live.dax[0]
    first = str(live.tmp / "dax0-dev0")
    keys = [key(i) for i in range(2)]
    store(dax, keys, 1000)
    answer(live.post("/reconfigure/dax/add", {"device_path": live.devices[0], "size": "8KiB"}), 200)
    assert dax.lookup_and_lock(keys[:1]).result(TIMEOUT) == [True]  # a reader pins one object

    before = live.snapshot()
    for path, body in [("remove", {"device_path": first, "mode": "evict"}),
                       ("remove", {"device_path": first}),
                       ("resize", {"device_path": first, "size": 1500, "mode": "evict"})]:
        resp = live.post(f"/reconfigure/dax/{path}", body)
        assert answer(resp, 409) == {"error": f"1 objects on {first} are locked; retry with force",
                                     "locked_objects": 1}
        assert live.snapshot() == before

    forced = answer(live.post("/reconfigure/dax/remove", {"device_path": first, "force": True}), 200)
    assert forced["migrated"] == 2
    dax.unlock(keys[:1])


def test_dax_resize_grows_shrinks_by_migrating_or_evicting(live: Live) -> None:
    dax = live.dax[0]
    first = str(live.tmp / "dax0-dev0")
    store(dax, [key(i) for i in range(4)], 1000)
    answer(live.post("/reconfigure/dax/add", {"device_path": live.devices[0], "size": "2KiB"}), 200)

    grown = answer(live.post("/reconfigure/dax/resize", {"device_path": first, "size": "512KiB"}), 200)
    assert grown["device"]["size_bytes"] == 512 * KIB and grown["migrated"] == 0
    assert dax.applied[-1] == ("resize", {"device_path": first, "size_bytes": 512 * KIB, "mode": "migrate",
                                          "force": False})

    shrunk = answer(live.post("/reconfigure/dax/resize", {"device_path": first, "size": 2500}), 200)
    assert shrunk["migrated"] == 2 and len(objects_on(dax, first)) == 2
    before = live.snapshot()  # the other device is full now: 507, nothing moved
    assert "no destination capacity" in error_of(live.post("/reconfigure/dax/resize",
                                                           {"device_path": first, "size": 1500}), 507)
    assert live.snapshot() == before
    evicted = answer(live.post("/reconfigure/dax/resize", {"device_path": first, "size": 1500, "mode": "evict"}), 200)
    assert evicted["evicted"] == 1 and evicted["device"]["size_bytes"] == 1500
    assert dax.usage().total_bytes_used == 3000


@pytest.mark.parametrize(("operation", "body", "status"), [
    ("resize", {"device_path": "/not/mapped", "size": 1}, 404),
    ("remove", {"device_path": "/not/mapped"}, 404),
    ("resize", {"device_path": "DAX0-DEV0", "size": 1}, 404),  # paths are not normalised
    ("resize", {"device_path": "dax0-dev0", "size": DEVICE_FILE_BYTES + 1}, 400),  # beyond the file
])
def test_dax_operations_on_unmapped_devices_or_beyond_the_file(live: Live, operation: str, body: dict[str, Any],
                                                               status: int) -> None:
    if body["device_path"] == "dax0-dev0":
        body = {**body, "device_path": str(live.tmp / "dax0-dev0")}
    before = live.snapshot()
    error_of(live.post(f"/reconfigure/dax/{operation}", body), status)
    assert live.snapshot() == before


# -- the admin guard ----------------------------------------------------------------------------------


def test_with_an_admin_token_post_needs_it_and_reads_stay_open(lmcache_server_factory: Any, lmcache_http: Any,
                                                               tmp_path: Path) -> None:
    lv = make_live(lmcache_server_factory, lmcache_http, tmp_path, "--http-admin-token", "s3cret")
    with lv.http:
        before = lv.snapshot()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            for path in ("/reconfigure/knob/set", "/reconfigure/knob/status", "/reconfigure/%20/set"):
                resp = lv.post(path, {"limit": 1}, headers=headers)
                assert answer(resp, 401) == {"error": "admin token required"}
                assert resp.headers["www-authenticate"].startswith("Bearer")
        assert lv.snapshot() == before
        ok = lv.post("/reconfigure/knob/set", {"limit": 1}, headers={"Authorization": "Bearer s3cret"})
        assert answer(ok, 200)["settings"] == {"limit": 1}
        assert answer(lv.http.get("/reconfigure/backends"), 200)["enabled"] is True
        assert answer(lv.http.get("/reconfigure/knob/status"), 200)["num_adapters"] == 2


# -- off the event loop, one operation at a time per adapter --------------------------------------------


def wait_for(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_operations_on_one_adapter_are_serialised_and_others_proceed(live: Live) -> None:
    knob0, knob1 = live.knob
    knob0.gate = threading.Event()
    results: dict[str, httpx.Response] = {}

    def post(name: str, path: str, body: dict[str, Any]) -> threading.Thread:
        def run() -> None:
            with httpx.Client(base_url=live.url, timeout=TIMEOUT) as client:
                results[name] = client.post(path, json=body)
        thread = threading.Thread(target=run, name=f"reconfigure-test-{name}", daemon=True)
        thread.start()
        return thread

    try:
        held = post("held", "/reconfigure/knob/hold", {"tag": "A"})
        wait_for(lambda: ("enter", "A") in knob0.events, "the held operation to start")
        queued = post("queued", "/reconfigure/knob/set", {"tag": "B", "limit": 1})

        # While A holds knob #0: the event loop serves reads, and knob #1 (another adapter) is not blocked.
        assert answer(live.http.get("/reconfigure/backends"), 200)["enabled"] is True
        assert answer(live.http.get("/reconfigure/knob/status"), 200)["num_adapters"] == 2
        assert answer(live.post("/reconfigure/knob/set", {"adapter_index": 1, "limit": 5}), 200)["adapter_index"] == 1
        # B waits for A: bounded check that it has not entered the adapter.
        queued.join(0.3)
        assert queued.is_alive() and ("enter", "B") not in knob0.events
    finally:
        knob0.gate.set()
    held.join(TIMEOUT)
    queued.join(TIMEOUT)
    assert answer(results["held"], 200)["held"] is True
    assert answer(results["queued"], 200)["settings"] == {"tag": "B", "limit": 1}
    assert knob0.events == [("enter", "A"), ("exit", "A"), ("enter", "B"), ("exit", "B")]
    assert knob0.max_inside == 1 and knob1.max_inside == 1


def test_concurrent_operations_never_overlap_inside_one_adapter(live: Live) -> None:
    """Eight held operations at once: with the gate closed only one may be inside the adapter."""
    knob0 = live.knob[0]
    knob0.gate = threading.Event()
    codes: list[int] = []

    def run(i: int) -> None:
        with httpx.Client(base_url=live.url, timeout=TIMEOUT) as client:
            codes.append(client.post("/reconfigure/knob/hold", json={"tag": i}).status_code)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(8)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: knob0.max_inside >= 1, "the first operation to enter")
        threads[-1].join(0.3)  # bounded: room for the others to (wrongly) enter too
        assert knob0.max_inside == 1
    finally:
        knob0.gate.set()
    for t in threads:
        t.join(TIMEOUT)
    assert codes == [200] * 8
    assert knob0.max_inside == 1 and len(knob0.applied) == 8
    tags = [tag for _, tag in knob0.events]
    assert all(tags[i] == tags[i + 1] for i in range(0, len(tags), 2))  # every enter is followed by its exit


# -- fuzzing: no 5xx but the documented 501/503, refusals change nothing ---------------------------------

_json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
              st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)
_segment = st.one_of(
    st.sampled_from(["dax", "DAX", " dax ", "knob", "Knob", "memory", "nope", "backends", "status", " ", "\t"]),
    st.text(max_size=12),
)
_operation = st.one_of(
    st.sampled_from(["add", "remove", "resize", "ADD", " Resize", "set", "reset", "fail", "hold", "status", "bug",
                     "spin", " "]),
    st.text(max_size=12),
)
_size = st.one_of(st.integers(-5, 2**64), st.sampled_from(["1KiB", "4096", "1.5k", "0", "-1", "x", "", "8MiB"]),
                  _json_value)


def _body(paths: list[str]) -> Any:
    path = st.one_of(st.sampled_from(paths), st.text(max_size=10), _json_value)
    dax = st.fixed_dictionaries({}, optional={
        "adapter_index": st.one_of(st.integers(-2, 3), _json_value), "device_path": path, "size": _size,
        "mode": st.one_of(st.sampled_from(["migrate", "evict", "drain", "MIGRATE"]), _json_value),
        "force": st.one_of(st.booleans(), _json_value), "extra": _json_value})
    knob = st.fixed_dictionaries({}, optional={
        "adapter_index": st.one_of(st.integers(-2, 3), _json_value),
        "limit": st.one_of(st.integers(-3, 5), _json_value),
        "kind": st.one_of(st.sampled_from(["invalid", "busy", "conflict", "unsupported", "unavailable", "other"]),
                          _json_value),
        "tag": _json_value})
    return st.one_of(dax, knob, _json_value)


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def test_fuzz_every_route(live: Live) -> None:
    """Random backends, operations and bodies: the documented statuses only, and a refusal changes nothing."""
    paths = live.devices + [str(live.tmp / "dax0-dev0")]
    seen: set[int] = set()

    def check_json(resp: httpx.Response) -> Any:
        assert resp.headers["content-type"] == JSON, resp.text
        return resp.json()

    @settings(max_examples=250, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(route=st.sampled_from(["backends", "status", "post"]), backend=_segment, operation=_operation,
           body=_body(paths), raw=st.one_of(st.none(), st.binary(max_size=20)))
    @example(route="post", backend="dax", operation="add", body={"device_path": paths[0], "size": "1KiB"}, raw=None)
    @example(route="post", backend="knob", operation="fail", body={"kind": "unsupported"}, raw=None)
    @example(route="post", backend="knob", operation="fail", body={"kind": "unavailable"}, raw=None)
    @example(route="post", backend="dax", operation="add", body={"device_path": 1}, raw=None)
    @example(route="post", backend="nope", operation="add", body={}, raw=None)
    @example(route="post", backend=" ", operation="add", body={}, raw=None)
    @example(route="post", backend="dax", operation="add", body={"device_path": paths[0], "size": "x"}, raw=None)
    @example(route="post", backend="knob", operation="fail", body={"kind": "busy"}, raw=None)
    def run(route: str, backend: str, operation: str, body: Any, raw: bytes | None) -> None:
        before = live.snapshot()
        if route == "backends":
            resp = live.http.get("/reconfigure/backends")
            assert answer(resp, 200)["backends"] == ["dax", "knob"]
            return
        if route == "status":
            resp = live.http.get(f"/reconfigure/{_quote(backend)}/status")
        else:
            content = raw if raw is not None else json.dumps(body).encode()
            resp = live.http.post(f"/reconfigure/{_quote(backend)}/{_quote(operation)}", content=content,
                                  headers={"Content-Type": JSON})
        seen.add(resp.status_code)
        assert resp.status_code < 500 or resp.status_code in (501, 503), (resp.request.url, body, resp.text)
        payload = check_json(resp)
        if resp.status_code == 200:
            assert isinstance(payload, dict)
            if route == "status":
                assert payload["num_adapters"] == len(payload["adapters"])
            else:
                assert isinstance(payload["adapter_index"], int) and isinstance(payload["l2_adapter_index"], int)
        else:
            assert live.snapshot() == before, (resp.request.url, body, resp.text)
            if resp.status_code == 422:
                assert list(payload) == ["detail"]
            elif resp.status_code not in (404, 405) or "error" in payload:
                assert "error" in payload, payload

    run()
    assert {200, 400, 404, 422, 501, 503} <= seen
