"""The inspect routes through real HTTP, as curl sees them (LMCache's HTTP API, "Inspection and
Status"): ``GET /status``, ``GET /conf``, ``GET /version``, ``GET /lmc_version``, ``GET /commit_id``.

Servers are real (ZMQ data path, L1 in shared memory, a real dict-backed L2 adapter type) and workers
register real shared-memory KV caches with our client, so ``cache_context_meta`` describes tensors the
server really mapped.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version as dist_version
from typing import Any

import httpx
import msgspec
import pytest
import torch
from hypothesis import HealthCheck, given, settings

import lmcache_plugin_inspect.plugin as inspect_plugin
from lmcache_core import buildinfo, hookimpl
from lmcache_core.cli import build_parser
from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.http.app import create_app
from lmcache_core.plugins import PluginHost
from lmcache_core.storage.l2.base import L2Adapter, L2AdapterConfig
from lmcache_core.strategies import http_requests
from lmcache_core.transfer.client_kv import WorkerKVCache
from lmcache_core.transport.wire import Op

JSON = "application/json"
TIMEOUT = 30.0
ENGINE_UNAVAILABLE = {"error": "engine not initialized"}
CONFIGS_UNAVAILABLE = {"error": "configs not initialized"}
ROUTES = ["/status", "/conf", "/version", "/lmc_version", "/commit_id"]
VERSION_ROUTES = ["/version", "/lmc_version", "/commit_id"]
CORE_SECTIONS = ["mp", "storage_manager", "observability", "http", "plugins"]

ADMIN_TOKEN = "admin-t0ken-f7c1e9"
AWS_SECRET = "aws-s3cret-9b2d4e"
AWS_KEY_ID = "AKIA-key-id-5e8a"
PLUGIN_TOKEN = "plugin-t0ken-31c7"
DC_PASSWORD = "dataclass-passw0rd-77"
SECRETS = [ADMIN_TOKEN, AWS_SECRET, AWS_KEY_ID, PLUGIN_TOKEN, DC_PASSWORD]

BLOCK = 16
SHAPE = (2, 64, BLOCK, 2, 8)  # NHD: (K/V, blocks, tokens per block, heads, head size)
MLA_SHAPE = (64, BLOCK, 32)  # MLA: (blocks, tokens per block, latent size)
MODEL = "inspect-model"
MLA_MODEL = "inspect-mla-model"
IID, MLA_IID = 7001, 7002
TOKENS = list(range(512))  # two 256-token chunks


# -- plugins the tests load ---------------------------------------------------------------------


class VaultAdapter(L2Adapter):
    """A real L2 adapter (objects in a dict) whose config carries cloud credentials."""

    def __init__(self, config: Any, context: Any) -> None:
        self.objects: dict[Any, bytes] = {}
        self.fail_status = False
        super().__init__(config, context)

    def _put(self, key: Any, data: memoryview) -> None:
        self.objects[key] = bytes(data)

    def _get(self, key: Any, out: memoryview) -> bool:
        data = self.objects.get(key)
        if data is None or len(data) != out.nbytes:
            return False
        out[:] = data
        return True

    def _size(self, key: Any) -> int | None:
        data = self.objects.get(key)
        return None if data is None else len(data)

    def _remove(self, key: Any) -> int | None:
        data = self.objects.pop(key, None)
        return None if data is None else len(data)

    def _status(self) -> dict[str, Any]:
        if self.fail_status:
            raise OSError("vault unreachable")
        return {"bucket": self.config.bucket}


class VaultConfig(L2AdapterConfig, kw_only=True, forbid_unknown_fields=True):
    bucket: str = ""
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""


class VaultPlugin:
    """Registers the ``vault`` L2 adapter type."""

    @staticmethod
    @hookimpl
    def lmcache_register_l2_adapters(register: Any) -> None:
        register("vault", VaultConfig, VaultAdapter)


class SecretiveConfig(msgspec.Struct, kw_only=True):
    endpoint: str = "https://plugin.example.invalid"
    api_token: str = PLUGIN_TOKEN
    greeting: str = "grüß dich ✓"
    ratio: float = math.nan
    ceiling: float = math.inf


@dataclass
class DataclassConfig:
    password: str = DC_PASSWORD
    retries: int = 3


class ConfigPlugin:
    """A plugin registering its configs at startup, as the template does."""

    @staticmethod
    @hookimpl
    def lmcache_startup(server: Any) -> None:
        server.register_config("secretive", SecretiveConfig())
        server.register_config("dataclassy", DataclassConfig())  # type: ignore[arg-type]


class SectionPlugin:
    @staticmethod
    @hookimpl
    def lmcache_status(server: Any) -> dict[str, Any]:
        return {"extra_section": {"ok": True}}


class FailingSectionPlugin:
    @staticmethod
    @hookimpl
    def lmcache_status(server: Any) -> dict[str, Any]:
        raise RuntimeError("section exploded")


PLUGINS = [("inspect", inspect_plugin), ("vault", VaultPlugin), ("configs", ConfigPlugin)]


def options(*argv: str, plugins: list[tuple[str, Any]] = PLUGINS) -> Any:
    """A parsed command line, as ``lmcache-server`` would parse ``argv``."""
    host = PluginHost(load_entry_points=False, extra_plugins=plugins)
    return build_parser(host, environ={}).parse_args(list(argv))


def full_options(**extra: str) -> Any:
    vault = {"type": "vault", "bucket": "kv-bucket", "aws_access_key_id": AWS_KEY_ID,
             "aws_secret_access_key": AWS_SECRET}
    return options("--http-admin-token", ADMIN_TOKEN, "--l2-adapter", json.dumps(vault), "--l1-size-gb", "0.25",
                   "--chunk-size", "256", "--worker-reap-timeout-seconds", "0", "--host", "127.0.0.1",
                   *[a for k, v in extra.items() for a in (f"--{k.replace('_', '-')}", v)])


@dataclass
class Live:
    """A started server with every test plugin, its HTTP base URL and a worker-side client."""

    server: Any
    url: str
    client: LMCacheClient
    stack: contextlib.ExitStack

    def worker(self, iid: int = IID, shape: tuple[int, ...] = SHAPE, num_layers: int = 2, model: str = MODEL,
               dtype: torch.dtype = torch.float16) -> WorkerKVCache:
        kv = WorkerKVCache(num_layers, shape, dtype)
        self.stack.callback(kv.close)
        self.client.register_kv_cache(iid, kv.descriptors(), model, 1, {"kv_layout": "NHD"})
        return kv

    def status(self) -> dict[str, Any]:
        # As the admin: with a token set, only the admin sees instance ids (test_security_status.py).
        resp = httpx.get(f"{self.url}/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=TIMEOUT)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == JSON
        return resp.json()  # type: ignore[no-any-return]


@pytest.fixture
def live(lmcache_server_factory: Any, lmcache_http: Any) -> Iterator[Live]:
    from lmcache_core.testing import free_port

    port = free_port()
    server = lmcache_server_factory(PLUGINS, options=full_options(port=str(port)))
    client = LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=20)
    with contextlib.ExitStack() as stack:
        yield Live(server, lmcache_http(server), client, stack)
    client.close()


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, timeout=TIMEOUT, **kwargs)


def assert_json(resp: httpx.Response, status: int, body: Any) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == JSON
    assert resp.json() == body


def app_without_server(factory: Any) -> Any:
    """The real app before a server is wired onto its state (what the seed calls "not initialized")."""
    app = create_app(factory([("inspect", inspect_plugin)], start=False))
    del app.state.server
    return app


# -- GET /status: 200 ---------------------------------------------------------------------------


def test_status_has_every_field_of_the_seed_example(live: Live) -> None:
    live.worker()
    body = live.status()
    assert body["is_healthy"] is True
    assert body["engine_type"] == "CacheServer"
    assert body["chunk_size"] == 256 and body["hash_algorithm"] == "blake3"
    assert body["active_sessions"] == 0
    assert body["registered_gpu_ids"] == [IID]
    assert list(body["cache_context_meta"]) == [str(IID)]
    assert body["active_prefetch_jobs"] == 0
    sm = body["storage_manager"]
    assert sm["is_healthy"] is True
    for section in ("l1_manager", "l1_eviction_controller", "store_controller", "prefetch_controller",
                    "l2_eviction_controller", "l2_adapters"):
        assert isinstance(sm[section], (dict, list)), section
    assert sm["l1_manager"]["is_healthy"] is True
    assert sm["l1_manager"]["memory_configured_bytes"] >= int(0.25 * (1 << 30))
    assert sm["num_l2_adapters"] == 1
    [l2] = sm["l2_adapters"]
    assert l2["type_name"] == "vault" and l2["index"] == 0 and l2["is_healthy"] is True
    assert l2["bucket"] == "kv-bucket"
    assert [a["adapter_index"] for a in sm["l2_eviction_controller"]["adapters"]] in ([], [0])
    assert "plugin_errors" not in body and "status_errors" not in body


def test_status_carries_what_lmcache_056_tools_read(live: Live) -> None:
    """0.5.6's component maps and the path ``lmcache describe kvcache`` reads the eviction policy from."""
    sm = live.status()["storage_manager"]
    assert sm["eviction_controller"] == sm["l1_eviction_controller"]
    assert sm["eviction_controller"]["eviction_policy"] == "LRU"
    assert sm["l1_managers"] == {"_default": sm["l1_manager"]}
    assert sm["l1_eviction_controllers"] == {"_default": sm["l1_eviction_controller"]}
    assert sm["store_controllers"] == {"_default": sm["store_controller"]}
    assert sm["l1_usage"] == [sm["l1_manager"]["memory_used_bytes"], sm["l1_manager"]["memory_total_bytes"]]
    assert sm["l1_capacity_bytes_by_backend"] == {"dram": sm["l1_manager"]["memory_total_bytes"]}
    [l2] = sm["l2_adapters"]
    assert l2["type"] == l2["type_name"] == "vault"


def test_registered_kv_caches_show_in_cache_context_meta_and_registered_gpu_ids(live: Live) -> None:
    live.worker(IID, SHAPE, 2, MODEL, torch.float16)
    live.worker(MLA_IID, MLA_SHAPE, 3, MLA_MODEL, torch.bfloat16)
    body = live.status()
    assert body["registered_gpu_ids"] == [IID, MLA_IID]
    meta = body["cache_context_meta"]
    assert set(meta) == {str(IID), str(MLA_IID)}

    nhd = meta[str(IID)]
    assert nhd["model_name"] == MODEL and nhd["world_size"] == 1
    layout = nhd["kv_cache_layout"]
    assert layout["num_layers"] == 2 and layout["num_blocks"] == 64
    assert layout["cache_size_per_token"] == 2 * 2 * (2 * 8) * 2  # K/V × layers × hidden × fp16 bytes
    assert layout["kv_layout"] == "NHD" and layout["device"] == "cpu"
    assert layout["object_nbytes"] == nhd["object_nbytes"] == 256 * layout["cache_size_per_token"]
    [group] = layout["kernel_groups"]
    assert group == {
        "kernel_group_idx": 0, "engine_group_idx": 0, "object_group_idx": 0, "num_layers": 2,
        "layer_indices": [0, 1], "tokens_per_block": BLOCK, "slots_per_block": BLOCK, "dtype": "torch.float16",
        "engine_kv_concrete_shape": list(SHAPE), "is_mla": False, "engine_kv_format": "2,NB,BS,NH,HS",
        "engine_kv_shape": [2, 64, BLOCK, 2, 8], "attention_backend": None, "num_blocks": 64, "num_heads": 2,
        "head_size": 8, "sw_size_tokens": -1,
    }

    mla = meta[str(MLA_IID)]
    assert mla["model_name"] == MLA_MODEL
    layout = mla["kv_cache_layout"]
    assert layout["num_layers"] == 3 and layout["cache_size_per_token"] == 1 * 3 * 32 * 2
    [group] = layout["kernel_groups"]
    assert group["is_mla"] is True and group["dtype"] == "torch.bfloat16"
    assert group["engine_kv_concrete_shape"] == list(MLA_SHAPE) and group["engine_kv_shape"] == [1, 64, BLOCK, 1, 32]

    live.client.unregister_kv_cache(MLA_IID)
    body = live.status()
    assert body["registered_gpu_ids"] == [IID] and list(body["cache_context_meta"]) == [str(IID)]


def test_engine_driven_workers_show_in_non_cuda_context_meta(live: Live) -> None:
    from lmcache_core.transport import messages as m

    payload = m.RegisterEngineDrivenContextPayload(
        instance_id=77, model_name=MODEL, world_size=1, block_size=16, num_layers=4, hidden_dim_size=64,
        dtype_str="torch.bfloat16", use_mla=False)
    live.client.call(Op.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT, payload)
    body = live.status()
    assert body["registered_non_cuda_instance_ids"] == [77]
    assert body["non_cuda_context_meta"] == {"77": {
        "model_name": MODEL, "world_size": 1, "block_size": 256, "use_mla": False, "dtype": "bfloat16",
        "object_shape": [2, 4, 256, 64], "object_nbytes": 2 * 4 * 256 * 64 * 2}}
    live.client.call(Op.UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT, 77)
    body = live.status()
    assert body["registered_non_cuda_instance_ids"] == [] and body["non_cuda_context_meta"] == {}


def test_active_sessions_and_prefetch_jobs_follow_the_data_path(live: Live) -> None:
    live.worker()
    key = make_key(TOKENS, "req-1", model_name=MODEL)
    live.client.call(Op.LOOKUP, key, 1)  # the scheduler's LOOKUP, result not yet taken
    assert live.client.noop() == "OK"  # LOOKUP replies before its work; the next request is read after it
    body = live.status()
    assert body["active_sessions"] == 1 and body["active_prefetch_jobs"] == 1
    assert live.client.call(Op.QUERY_PREFETCH_STATUS, "req-1") == 0
    assert live.status()["active_prefetch_jobs"] == 0
    live.client.end_session("req-1")
    assert live.status()["active_sessions"] == 0


def test_status_reflects_stored_objects(live: Live) -> None:
    live.worker()
    key = make_key(TOKENS, "store-1", model_name=MODEL, worker_id=0)
    assert live.client.store(key, IID, [list(range(32))]) == (b"", True)
    live.client.end_session("store-1")
    assert live.status()["storage_manager"]["l1_manager"]["total_object_count"] == 2


def test_status_merges_plugin_sections_and_reports_a_failing_one(lmcache_server_factory, lmcache_http) -> None:
    server = lmcache_server_factory([("inspect", inspect_plugin), ("extra", SectionPlugin),
                                     ("broken", FailingSectionPlugin)])
    body = get(f"{lmcache_http(server)}/status").json()
    assert body["extra_section"] == {"ok": True}
    assert body["plugin_errors"] == {"broken": "RuntimeError: section exploded"}
    assert body["is_healthy"] is True and body["storage_manager"]["is_healthy"] is True


def test_status_answers_unhealthy_when_storage_is_closed(live: Live) -> None:
    live.server.storage.close()
    body = live.status()
    assert body["is_healthy"] is False
    assert body["storage_manager"]["is_healthy"] is False
    assert body["storage_manager"]["l1_manager"]["is_healthy"] is False


def test_status_survives_a_component_that_fails_to_report(live: Live) -> None:
    live.worker()
    live.server.storage.l2_adapters[0].fail_status = True
    body = live.status()
    assert body["storage_manager"] == {"is_healthy": False, "error": "OSError: vault unreachable"}
    assert body["is_healthy"] is False
    assert body["registered_gpu_ids"] == [IID] and body["active_sessions"] == 0  # the rest still reported
    live.server.storage.l2_adapters[0].fail_status = False
    assert live.status()["is_healthy"] is True


def test_status_and_conf_need_no_admin_token(live: Live) -> None:
    for path in ("/status", "/conf"):
        assert get(f"{live.url}{path}").status_code == 200
        assert get(f"{live.url}{path}", headers={"Authorization": "Bearer wrong"}).status_code == 200


def test_status_never_shows_secrets(live: Live) -> None:
    text = get(f"{live.url}/status").text
    for secret in SECRETS:
        assert secret not in text


# -- GET /status: 503 ---------------------------------------------------------------------------


def test_status_is_503_with_error_before_start_and_after_stop(lmcache_server_factory, lmcache_http) -> None:
    server = lmcache_server_factory([("inspect", inspect_plugin)], start=False)
    url = lmcache_http(server)
    resp = get(f"{url}/status")
    assert_json(resp, 503, ENGINE_UNAVAILABLE)
    server.start()
    assert get(f"{url}/status").status_code == 200
    server.stop()
    assert_json(get(f"{url}/status"), 503, ENGINE_UNAVAILABLE)


def test_status_is_503_in_an_app_without_a_server(lmcache_server_factory, lmcache_serve_app) -> None:
    assert_json(get(f"{lmcache_serve_app(app_without_server(lmcache_server_factory))}/status"), 503, ENGINE_UNAVAILABLE)


# -- GET /conf ----------------------------------------------------------------------------------


def test_conf_is_every_registered_config_as_one_indented_json_document(live: Live) -> None:
    resp = get(f"{live.url}/conf")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == JSON
    doc = resp.json()
    assert list(doc) == [*CORE_SECTIONS, "security", "secretive", "dataclassy"]  # security: the core.security plugin
    assert resp.text == json.dumps(doc, indent=2, ensure_ascii=False)  # indent 2, non-ASCII kept
    assert "grüß dich ✓" in resp.content.decode("utf-8")
    assert doc["mp"]["chunk_size"] == 256 and doc["mp"]["host"] == "127.0.0.1"
    assert doc["mp"]["port"] == live.server.mp_config.port
    assert doc["storage_manager"]["l1_size_gb"] == 0.25
    assert doc["storage_manager"]["eviction_policy"] == "LRU"
    assert doc["observability"] == {"log_level": "INFO", "disable_metrics": False}
    assert doc["http"]["http_port"] == 8080
    assert doc["plugins"] == {"plugins": None, "disable_plugins": None, "strict_plugins": False}
    assert doc["secretive"]["endpoint"] == "https://plugin.example.invalid"
    assert doc["secretive"]["ratio"] == "NaN" and doc["secretive"]["ceiling"] == "Infinity"
    assert doc["dataclassy"]["retries"] == 3


def test_conf_masks_every_secret(live: Live) -> None:
    resp = get(f"{live.url}/conf")
    for secret in SECRETS:
        assert secret not in resp.text, secret
    doc = resp.json()
    assert doc["http"]["http_admin_token"] == "***"
    [vault] = doc["storage_manager"]["l2_adapter"]
    assert vault == {"type": "vault", "bucket": "kv-bucket", "aws_access_key_id": "***",
                     "aws_secret_access_key": "***"}
    assert doc["secretive"]["api_token"] == "***"
    assert doc["dataclassy"]["password"] == "***"


def test_conf_shows_an_unset_secret_as_unset(lmcache_server_factory, lmcache_http) -> None:
    doc = get(f"{lmcache_http(lmcache_server_factory([('inspect', inspect_plugin)]))}/conf").json()
    assert doc["http"]["http_admin_token"] is None  # nothing to hide: None, not "***"
    assert doc["storage_manager"]["l2_adapter"] == []


def test_conf_answers_before_start_with_what_the_process_loaded(lmcache_server_factory, lmcache_http) -> None:
    server = lmcache_server_factory(PLUGINS, options=full_options(), start=False)
    resp = get(f"{lmcache_http(server)}/conf")
    assert resp.status_code == 200
    assert list(resp.json()) == [*CORE_SECTIONS, "security"]  # declared: built with the server
    assert ADMIN_TOKEN not in resp.text and AWS_SECRET not in resp.text


def test_conf_renders_an_unrenderable_section_without_str(lmcache_server_factory, lmcache_http) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "password=opaque-s3cret"

    server = lmcache_server_factory([("inspect", inspect_plugin)])
    server.register_config("opaque", Opaque())  # type: ignore[arg-type]
    resp = get(f"{lmcache_http(server)}/conf")
    assert resp.status_code == 200
    assert resp.json()["opaque"] == {"error": "unrenderable config: Opaque"}
    assert "opaque-s3cret" not in resp.text


def test_conf_is_503_in_an_app_without_a_server(lmcache_server_factory, lmcache_serve_app) -> None:
    url = lmcache_serve_app(app_without_server(lmcache_server_factory))
    assert_json(get(f"{url}/conf"), 503, CONFIGS_UNAVAILABLE)


def test_conf_is_503_when_the_server_has_no_configs(lmcache_server_factory, lmcache_http) -> None:
    server = lmcache_server_factory([("inspect", inspect_plugin)], start=False)
    url = lmcache_http(server)
    assert get(f"{url}/conf").status_code == 200
    server.configs.clear()
    assert_json(get(f"{url}/conf"), 503, CONFIGS_UNAVAILABLE)


# -- /version, /lmc_version, /commit_id ---------------------------------------------------------


def raw_json_string(resp: httpx.Response) -> str:
    """A bare JSON string body (not an object), as the seed documents."""
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == JSON
    assert resp.text.startswith('"') and resp.text.endswith('"')
    value = resp.json()
    assert isinstance(value, str)
    return value


def test_version_routes_report_the_build(lmcache_server_factory, lmcache_http) -> None:
    url = lmcache_http(lmcache_server_factory([("inspect", inspect_plugin)]))
    package = raw_json_string(get(f"{url}/lmc_version"))
    commit = raw_json_string(get(f"{url}/commit_id"))
    assert package == dist_version("lmcache-core") == buildinfo.package_version()
    assert commit == "" or re.fullmatch(r"[0-9a-f]{40}", commit), commit
    assert commit == buildinfo.commit_id()
    assert raw_json_string(get(f"{url}/version")) == f"{package or 'NA'}-{commit or 'NA'}"


def test_version_routes_fall_back_as_the_seed_says(lmcache_server_factory, lmcache_http, monkeypatch) -> None:
    url = lmcache_http(lmcache_server_factory([("inspect", inspect_plugin)]))
    monkeypatch.setitem(sys.modules, "lmcache_core._build_info", None)  # as if never generated: no commit
    assert raw_json_string(get(f"{url}/commit_id")) == ""
    assert raw_json_string(get(f"{url}/version")) == f"{dist_version('lmcache-core')}-NA"
    monkeypatch.setattr(buildinfo, "__version__", "0.0.0")  # no version metadata either
    assert raw_json_string(get(f"{url}/lmc_version")) == ""
    assert raw_json_string(get(f"{url}/version")) == "NA-NA"


def test_version_routes_answer_in_every_server_state(lmcache_server_factory, lmcache_http, lmcache_serve_app) -> None:
    server = lmcache_server_factory([("inspect", inspect_plugin)], start=False)
    url = lmcache_http(server)
    no_server = lmcache_serve_app(app_without_server(lmcache_server_factory))
    expected = {"/version": buildinfo.full_version(), "/lmc_version": buildinfo.package_version(),
                "/commit_id": buildinfo.commit_id()}
    for step in ("not started", "ready", "stopped"):
        for base in (url, no_server):
            for path, value in expected.items():
                assert raw_json_string(get(f"{base}{path}")) == value, (step, path)
        if step == "not started":
            server.start()
        elif step == "ready":
            server.stop()


# -- methods ------------------------------------------------------------------------------------


def test_other_methods_are_405(live: Live) -> None:
    for path in ROUTES:
        for method in ("POST", "PUT", "PATCH", "DELETE", "HEAD"):
            resp = httpx.request(method, f"{live.url}{path}", content=b'{"x": 1}', timeout=TIMEOUT,
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
            assert resp.status_code == 405, (method, path)
            assert "GET" in resp.headers["allow"]
        assert httpx.options(f"{live.url}{path}", timeout=TIMEOUT).status_code == 204


# -- reads under load ---------------------------------------------------------------------------


def test_status_and_conf_answer_while_stores_run_and_do_not_stall_them(live: Live) -> None:
    """A store-heavy worker and an operator polling /status and /conf: both make progress."""
    live.worker()
    port = live.server.mp_config.port
    stop = threading.Event()
    stored = [0]
    errors: list[BaseException] = []

    def store_loop() -> None:
        client = LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=20)
        try:
            for i in range(5000):  # bounded; stopped long before by the event
                if stop.is_set():
                    return
                rid = f"load-{i}"
                key = make_key([i * 1000 + t for t in range(512)], rid, model_name=MODEL, worker_id=0)
                assert client.store(key, IID, [list(range(32))]) == (b"", True)
                client.end_session(rid)
                stored[0] += 1
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)
        finally:
            client.close()

    thread = threading.Thread(target=store_loop, name="test-store-load", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while stored[0] < 5 and time.monotonic() < deadline and not errors:
            time.sleep(0.005)
        assert stored[0] >= 5, errors
        before = stored[0]
        for _ in range(15):
            started = time.monotonic()
            assert get(f"{live.url}/status").status_code == 200
            assert get(f"{live.url}/conf").status_code == 200
            assert time.monotonic() - started < 10
        progress = stored[0] - before
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    assert progress > 0, "stores stalled while /status and /conf were polled"
    assert live.status()["storage_manager"]["l1_manager"]["total_object_count"] > 0


# -- fuzzing ------------------------------------------------------------------------------------

REQUESTS = http_requests(ROUTES)


def _fuzz(url: str, ready: bool, req: dict[str, Any]) -> None:
    resp = httpx.request(req["method"], f"{url}{req['path']}", params=req["params"], headers=req["headers"],
                         content=req["body"], timeout=TIMEOUT)
    documented_503 = resp.status_code == 503 and req["path"] == "/status" and not ready
    assert resp.status_code < 500 or documented_503, (req, resp.status_code, resp.text)
    if req["method"] == "GET":
        if req["path"] == "/status" and not ready:
            assert_json(resp, 503, ENGINE_UNAVAILABLE)
        else:
            assert resp.status_code == 200 and resp.headers["content-type"] == JSON, (req, resp.text)
            if req["path"] in VERSION_ROUTES:
                assert isinstance(resp.json(), str)
            else:
                assert isinstance(resp.json(), dict)
        for secret in SECRETS:
            assert secret not in resp.text
    elif req["method"] == "OPTIONS":
        assert resp.status_code == 204
    else:
        assert resp.status_code == 405


@pytest.fixture
def ready_url(lmcache_server_factory: Any, lmcache_http: Any) -> str:
    """One ready server per test function (hypothesis reuses a function's fixtures across examples)."""
    return lmcache_http(lmcache_server_factory(PLUGINS, options=full_options()))


@pytest.fixture
def unstarted_url(lmcache_server_factory: Any, lmcache_http: Any) -> str:
    return lmcache_http(lmcache_server_factory(PLUGINS, options=full_options(), start=False))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=REQUESTS)
def test_fuzz_ready_server_never_5xx(ready_url: str, req: dict[str, Any]) -> None:
    _fuzz(ready_url, True, req)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(req=REQUESTS)
def test_fuzz_unstarted_server_only_documented_503(unstarted_url: str, req: dict[str, Any]) -> None:
    _fuzz(unstarted_url, False, req)


def test_installed_distribution_exposes_the_entry_point() -> None:
    from importlib.metadata import entry_points

    [ep] = [ep for ep in entry_points(group="lmcache") if ep.name == "inspect"]
    assert ep.load() is inspect_plugin
    assert ep.dist.metadata["Name"] == "lmcache-plugin-inspect"
