"""``POST /l2/prefetch`` and ``GET /l2/prefetch/{request_id}`` through real HTTP: chunks STOREd over ZMQ reach
the FS adapter, L1 is cleared, the warm loads them back, and a LOOKUP then hits from L1 with the bytes stored.
Also: every documented status, bounded retention of unpolled results (injected clock, tiny count cap), the
options, the metrics."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec
import pytest
import torch
from l2_live import JSON, MODEL, L2Live, chunk_keys, encoded, parse_options, wait_for
from prometheus_client import REGISTRY

from lmcache_core.cli import build_parser
from lmcache_core.client import make_key
from lmcache_core.keys import fs_file_name
from lmcache_core.plugins import PluginHost

TOKENS = list(range(768))  # three chunks
HEX32 = set("0123456789abcdef")


def detail(resp: Any, status: int) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == JSON
    body = resp.json()
    assert list(body) == ["detail"] and isinstance(body["detail"], str) and body["detail"], body
    return body["detail"]


def warm_body(tokens: list[int] = TOKENS, **fields: Any) -> dict[str, Any]:
    return {"model_name": MODEL, "world_size": 1, "token_ids": tokens, **fields}


def submit(live: L2Live, body: dict[str, Any] | None = None) -> str:
    """POST a warm prefetch that must be accepted; its request id."""
    resp = live.prefetch(body or warm_body())
    assert resp.status_code == 202, resp.text
    assert resp.headers["content-type"] == JSON
    out = resp.json()
    assert list(out) == ["request_id", "chunks", "status"] and out["status"] == "submitted"
    assert len(out["request_id"]) == 32 and set(out["request_id"]) <= HEX32
    return str(out["request_id"])


def stored(live: L2Live, tokens: list[int] = TOKENS, salt: str = "") -> list[Any]:
    """A worker STOREs ``tokens`` (blocks 0...), the write-behind puts them in L2, L1 is cleared."""
    kv = live.workers.get(1) or live.worker()
    live.store(tokens, salt=salt)
    keys = chunk_keys(tokens, salt=salt)
    live.wait_files(len(keys))
    live.client.clear(True)
    assert live.l1_count() == 0
    return [layer[:, : len(keys) * 16].clone() for layer in kv.layers]


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


# -- end to end ---------------------------------------------------------------------------------


def test_warm_prefetch_end_to_end_then_lookup_hits_from_l1_with_the_stored_bytes(make_live: Any) -> None:
    live = make_live()
    expected = stored(live)
    keys = chunk_keys(TOKENS)

    resp = live.prefetch(warm_body(TOKENS + [7, 8, 9]))  # a trailing partial chunk is not a chunk
    assert resp.status_code == 202 and resp.json()["chunks"] == 3
    request_id = resp.json()["request_id"]
    assert live.wait_completed(request_id) == {"status": "completed", "found_keys": 3, "total_keys": 3}
    message = detail(live.poll(request_id), 404)  # exactly once
    assert message == f"unknown prefetch request_id='{request_id}' (already completed or never submitted)"
    assert live.l1_count() == 3

    # Empty L2 (and prove it): a hit now can only come from L1.
    assert live.delete({"keys": [encoded(k) for k in keys]}).json()["ok"] is True
    assert live.data_files() == set()
    before = live.server.status()["storage_manager"]["prefetch_controller"]["submitted_requests"]
    kv = live.workers[1]
    for layer in kv.layers:
        layer[:, 48:96].zero_()
    assert live.lookup(TOKENS, request_id="read") == 3
    key = make_key(TOKENS, "read", model_name=MODEL, worker_id=0)
    assert live.client.retrieve(key, 1, [list(range(48, 96))]) == (b"", True)
    live.client.end_session("read")
    for layer, want in zip(kv.layers, expected):
        assert torch.equal(layer[:, 48:96], want)
    status = live.server.status()["storage_manager"]
    assert status["prefetch_controller"]["submitted_requests"] == before  # the lookup never went to L2
    assert status["l1_manager"]["total_object_count"] == 3  # warmed objects are retained
    assert status["l1_manager"]["read_locked_count"] == 0  # and the warm left no lock behind
    assert status["l2_adapters"][0]["locked_key_count"] == 0


def test_warm_prefetch_expands_each_chunk_across_the_world_size(make_live: Any) -> None:
    live = make_live()
    tokens = TOKENS[:512]
    for worker in (0, 1):
        live.worker(iid=10 + worker, world_size=2, seed=worker)
        live.store(tokens, iid=10 + worker, world_size=2, worker_id=worker, request_id=f"s{worker}")
    live.wait_files(4)
    live.client.clear(True)
    detail(live.prefetch(warm_body(tokens)), 409)  # world size 1 was never registered
    resp = live.prefetch(warm_body(tokens, world_size=2))
    assert resp.status_code == 202 and resp.json()["chunks"] == 2
    assert live.wait_completed(resp.json()["request_id"]) == {"status": "completed", "found_keys": 4,
                                                             "total_keys": 4}
    assert live.l1_count() == 4
    assert live.lookup(tokens, world_size=2, request_id="ws2") == 2
    live.client.end_session("ws2")


def test_resident_chunks_are_skipped_and_not_counted(make_live: Any) -> None:
    live = make_live()
    stored(live)
    first = submit(live, warm_body(TOKENS[:512]))
    assert live.wait_completed(first) == {"status": "completed", "found_keys": 2, "total_keys": 2}
    again = submit(live)
    assert live.wait_completed(again) == {"status": "completed", "found_keys": 1, "total_keys": 3}
    third = submit(live)
    assert live.wait_completed(third) == {"status": "completed", "found_keys": 0, "total_keys": 3}
    assert live.l1_count() == 3


def test_a_gap_in_l2_does_not_stop_the_later_chunks(make_live: Any) -> None:
    live = make_live()
    stored(live)
    middle = chunk_keys(TOKENS)[1]
    assert live.delete({"keys": [encoded(middle)]}).json()["ok"] is True
    request_id = submit(live)
    assert live.wait_completed(request_id) == {"status": "completed", "found_keys": 2, "total_keys": 3}
    assert live.l1_count() == 2
    assert live.lookup(TOKENS, request_id="gap") == 1  # a lookup still stops at the gap
    live.client.end_session("gap")


def test_the_cache_salt_selects_the_tenant_keys(make_live: Any) -> None:
    live = make_live()
    stored(live, salt="tenant-a")
    other = submit(live)
    assert live.wait_completed(other) == {"status": "completed", "found_keys": 0, "total_keys": 3}
    mine = submit(live, warm_body(cache_salt="tenant-a"))
    assert live.wait_completed(mine) == {"status": "completed", "found_keys": 3, "total_keys": 3}
    assert live.lookup(TOKENS, salt="tenant-a", request_id="salted") == 3
    live.client.end_session("salted")


@pytest.mark.parametrize("count", [0, 1, 255])
def test_noop_below_one_full_chunk(make_live: Any, count: int) -> None:
    live = make_live()
    live.worker()
    resp = live.prefetch(warm_body(list(range(count))))
    assert resp.status_code == 202 and resp.headers["content-type"] == JSON
    assert resp.json() == {"chunks": 0, "status": "noop"}
    assert live.warm_status()["pending_jobs"] == 0 and live.warm_status()["completed_unpolled_jobs"] == 0


# -- polling --------------------------------------------------------------------------------------


def test_poll_is_pending_while_the_load_waits_then_completed_once(make_live: Any) -> None:
    """With one prefetch slot held busy (a warm whose completion callback waits), a new job is queued:
    its polls answer ``pending`` until the slot frees."""
    live = make_live("--l2-prefetch-max-in-flight", "1")
    stored(live)
    release = threading.Event()
    held = threading.Event()

    def hold(found: int, total: int) -> None:
        held.set()
        release.wait(30)

    live.server.storage.prefetch.submit_warm([], 0, hold)
    try:
        assert held.wait(30)
        request_id = submit(live)
        for _ in range(3):
            resp = live.poll(request_id)
            assert resp.status_code == 200 and resp.headers["content-type"] == JSON
            assert resp.json() == {"status": "pending"}
        assert live.warm_status()["pending_jobs"] == 1
    finally:
        release.set()
    assert live.wait_completed(request_id) == {"status": "completed", "found_keys": 3, "total_keys": 3}
    detail(live.poll(request_id), 404)


def test_concurrent_polls_see_completion_exactly_once(make_live: Any) -> None:
    live = make_live()
    stored(live)
    request_id = submit(live)
    wait_for(lambda: live.warm_status()["completed_unpolled_jobs"] == 1, "the job to complete")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: live.poll(request_id), range(8)))
    assert sorted(r.status_code for r in answers) == [200] + [404] * 7
    [done] = [r.json() for r in answers if r.status_code == 200]
    assert done == {"status": "completed", "found_keys": 3, "total_keys": 3}


@pytest.mark.parametrize("request_id", ["unknown", "0" * 32, "%2e%2e", "a b", "\u00e9t\u00e9", "x" * 300])
def test_poll_404_for_an_unknown_request_id(make_live: Any, request_id: str) -> None:
    live = make_live()
    detail(live.poll(request_id), 404)


def test_poll_404_without_adapters(make_live: Any) -> None:
    detail(make_live(adapters=[]).poll("0" * 32), 404)


# -- bounded retention ------------------------------------------------------------------------------


class Clock:
    """A settable monotonic clock (the registry's injection point)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_unpolled_results_expire_after_the_ttl(make_live: Any) -> None:
    live = make_live("--l2-warm-job-ttl-seconds", "60")
    stored(live)
    jobs = live.server.storage.warm_jobs
    assert jobs.ttl_s == 60.0
    clock = Clock()
    jobs.clock = clock
    expired = metric("lmcache_mp_l2_warm_prefetch_jobs_expired_total")

    kept = submit(live)
    wait_for(lambda: live.warm_status()["completed_unpolled_jobs"] == 1, "the job to complete")
    clock.now += 59.5
    assert live.poll(kept).json()["status"] == "completed"  # inside the TTL

    dropped = submit(live)
    wait_for(lambda: live.warm_status()["completed_unpolled_jobs"] == 1, "the job to complete")
    clock.now += 60.0
    detail(live.poll(dropped), 404)
    status = live.warm_status()
    assert status["completed_unpolled_jobs"] == 0 and status["expired_jobs"] == 1
    assert status["completed_job_ttl_seconds"] == 60.0
    assert metric("lmcache_mp_l2_warm_prefetch_jobs_expired_total") == expired + 1

    # A pending job never expires: its TTL starts when it completes.
    pending = submit(live)
    wait_for(lambda: live.warm_status()["completed_unpolled_jobs"] == 1, "the job to complete")
    assert live.poll(pending).json()["status"] == "completed"


def test_unpolled_results_are_capped_in_number(make_live: Any) -> None:
    live = make_live("--l2-warm-job-max-completed", "2")
    stored(live)
    ids = []
    for n in range(1, 4):
        ids.append(submit(live))
        wait_for(lambda: live.warm_status()["completed_unpolled_jobs"] == min(n, 2)
                 and live.warm_status()["pending_jobs"] == 0, f"job {n} to complete")
    assert live.warm_status()["expired_jobs"] == 1
    answers = [live.poll(i).status_code for i in ids]
    assert answers == [404, 200, 200]  # the oldest completed result went first


# -- errors ------------------------------------------------------------------------------------------


def test_400_over_the_token_cap(make_live: Any) -> None:
    live = make_live()
    live.worker()
    message = detail(live.prefetch(warm_body([0] * 1_000_001)), 400)
    assert message == "token_ids exceeds the per-request cap (limit=1000000, got=1000001)"
    assert live.warm_status()["pending_jobs"] == 0 and live.warm_status()["completed_unpolled_jobs"] == 0
    resp = live.prefetch(warm_body([1] * 1_000_000))  # exactly at the cap: accepted
    assert resp.status_code == 202 and resp.json()["chunks"] == 1_000_000 // 256
    assert live.wait_completed(resp.json()["request_id"]) == {"status": "completed", "found_keys": 0,
                                                             "total_keys": 3906}


@pytest.mark.parametrize(("fields", "reason"), [
    ({"cache_salt": "a/b"}, "cache_salt must not contain"),
    ({"cache_salt": "a\\b"}, "cache_salt must not contain"),
    ({"cache_salt": "a@b"}, "cache_salt must not contain"),
    ({"cache_salt": "a\x00"}, "cache_salt must not contain"),
    ({"cache_salt": "s" * 129}, "cache_salt must be at most 128 characters"),
    ({"model_name": "org@model"}, "model_name must not contain '@'"),
    ({"model_name": "m\x00"}, "model_name must not contain NUL"),
])
def test_400_for_a_salt_or_model_that_breaks_the_key_invariants(make_live: Any, fields: dict[str, Any],
                                                                 reason: str) -> None:
    live = make_live()
    live.worker()
    assert detail(live.prefetch(warm_body(**fields)), 400).startswith(reason)
    assert live.warm_status()["pending_jobs"] == 0 and live.warm_status()["completed_unpolled_jobs"] == 0


def test_409_without_a_registered_layout(make_live: Any) -> None:
    live = make_live()
    message = detail(live.prefetch(warm_body()), 409)
    assert message == (f"no layout registered for model_name='{MODEL}' world_size=1; "
                       "the model has not allocated KV cache on this node yet")
    live.worker()
    detail(live.prefetch(warm_body(model_name="other-model")), 409)
    detail(live.prefetch(warm_body(world_size=2)), 409)
    assert live.prefetch(warm_body()).status_code == 202
    live.client.unregister_kv_cache(1)
    detail(live.prefetch(warm_body()), 409)
    detail(live.prefetch(warm_body([1])), 409)  # the layout is checked before the noop


BAD_BODIES = [
    b"",
    b"not json",
    b"[]",
    b"null",
    b"{}",
    b'{"world_size": 1, "token_ids": [1]}',
    b'{"model_name": "m", "token_ids": [1]}',
    b'{"model_name": "m", "world_size": 1}',
    b'{"model_name": 1, "world_size": 1, "token_ids": [1]}',
    b'{"model_name": "m", "world_size": 0, "token_ids": [1]}',
    b'{"model_name": "m", "world_size": 256, "token_ids": [1]}',
    b'{"model_name": "m", "world_size": "x", "token_ids": [1]}',
    b'{"model_name": "m", "world_size": true, "token_ids": [1]}',
    b'{"model_name": "m", "world_size": 1.5, "token_ids": [1]}',
    b'{"model_name": "m", "world_size": 1, "token_ids": "1,2"}',
    b'{"model_name": "m", "world_size": 1, "token_ids": [-1]}',
    b'{"model_name": "m", "world_size": 1, "token_ids": [4294967296]}',
    b'{"model_name": "m", "world_size": 1, "token_ids": ["a"]}',
    b'{"model_name": "m", "world_size": 1, "token_ids": [null]}',
    b'{"model_name": "m", "world_size": 1, "token_ids": [1], "cache_salt": 5}',
]


@pytest.mark.parametrize("raw", BAD_BODIES)
def test_422_for_a_body_that_fails_field_validation(make_live: Any, raw: bytes) -> None:
    live = make_live()
    live.worker()
    assert detail(live.prefetch(None, raw=raw), 422).startswith("invalid request body")
    assert live.warm_status()["pending_jobs"] == 0 and live.warm_status()["completed_unpolled_jobs"] == 0


@pytest.mark.parametrize("world_size, token", [('"1"', '"{t}"'), ("1", '"{t}"'), ('"1"', "{t}"), ("1.5", "{t}"),
                                               ("1", "{t}.5")])
def test_integers_in_strings_are_refused(make_live: Any, world_size: str, token: str) -> None:
    """The OpenAPI document says integer: ``"3"`` (or ``1.5``) is a 422, and nothing is submitted (issue 18).
    ``1.0`` is an integer to JSON Schema, and accepted."""
    live = make_live()
    stored(live)
    raw = ('{"model_name": "%s", "world_size": %s, "token_ids": [%s], "extra": 1}'
           % (MODEL, world_size, ",".join(token.format(t=t) for t in TOKENS))).encode()
    assert live.prefetch(None, raw=raw).status_code == 422
    strict = ('{"model_name": "%s", "world_size": 1.0, "token_ids": [%s], "extra": 1}'
              % (MODEL, ",".join(str(t) for t in TOKENS))).encode()
    resp = live.prefetch(None, raw=strict)
    assert resp.status_code == 202
    assert live.wait_completed(resp.json()["request_id"])["found_keys"] == 3


def test_503_without_adapters(make_live: Any) -> None:
    live = make_live(adapters=[])
    live.worker()
    assert detail(live.prefetch(warm_body()), 503) == "no L2 adapters configured"
    detail(live.prefetch(None, raw=b"{}"), 422)  # a malformed body is still named first


# -- options, config, metrics ------------------------------------------------------------------------


def test_options_defaults_env_and_bad_values() -> None:
    opts = parse_options([])
    assert opts.l2_warm_job_ttl_seconds == 600.0 and opts.l2_warm_job_max_completed == 10_000
    opts = parse_options(["--l2-warm-job-ttl-seconds", "2.5", "--l2-warm-job-max-completed", "3"])
    assert opts.l2_warm_job_ttl_seconds == 2.5 and opts.l2_warm_job_max_completed == 3
    from l2_live import plugin_specs

    host = PluginHost(load_entry_points=False, extra_plugins=plugin_specs())
    env = {"LMCACHE_L2_WARM_JOB_TTL_SECONDS": "30"}
    assert build_parser(host, environ=env).parse_args([]).l2_warm_job_ttl_seconds == 30.0
    for argv in (["--l2-warm-job-ttl-seconds", "0"], ["--l2-warm-job-ttl-seconds", "nan"],
                 ["--l2-warm-job-max-completed", "0"], ["--l2-warm-job-max-completed", "1.5"]):
        with pytest.raises(SystemExit):
            parse_options(argv)


def test_config_is_registered_and_applied(make_live: Any) -> None:
    live = make_live("--l2-warm-job-ttl-seconds", "42", "--l2-warm-job-max-completed", "7")
    config = live.server.configs["l2_routes"]
    assert (config.warm_job_ttl_seconds, config.warm_job_max_completed) == (42.0, 7)
    assert msgspec.to_builtins(config) == {"warm_job_ttl_seconds": 42.0, "warm_job_max_completed": 7}
    status = live.warm_status()
    assert status["completed_job_ttl_seconds"] == 42.0 and status["max_completed_jobs"] == 7


def test_the_registry_refuses_a_retention_that_would_keep_nothing_or_forever(make_live: Any) -> None:
    jobs = make_live().server.storage.warm_jobs
    for bad in ({"ttl_s": 0}, {"ttl_s": -1.0}, {"ttl_s": float("nan")}, {"max_completed": 0},
                {"max_completed": 1.5}, {"max_completed": True}):
        with pytest.raises(ValueError):
            jobs.configure(**bad)
    assert (jobs.ttl_s, jobs.max_completed) == (600.0, 10_000)


def test_metrics_count_jobs_and_reset(make_live: Any) -> None:
    from lmcache_core.observability.metrics import reset_all

    live = make_live()
    stored(live)
    names = ["lmcache_mp_l2_warm_prefetch_jobs_submitted_total", "lmcache_mp_l2_warm_prefetch_jobs_completed_total",
             "lmcache_mp_l2_warm_prefetch_loaded_keys_total"]
    before = {n: metric(n) for n in names}
    in_flight = metric("lmcache_mp_l2_warm_prefetch_jobs_in_flight")
    assert live.wait_completed(submit(live))["found_keys"] == 3
    after = {n: metric(n) - before[n] for n in names}
    assert after == {names[0]: 1, names[1]: 1, names[2]: 3}
    assert metric("lmcache_mp_l2_warm_prefetch_jobs_in_flight") == in_flight
    reset_all()
    assert all(metric(n) == 0 for n in names)
    assert metric("lmcache_mp_l2_warm_prefetch_jobs_expired_total") == 0


def test_warm_objects_live_in_the_fs_directory_only(make_live: Any) -> None:
    """The warm reads the FS adapter's own files: deleting one through the route makes it a miss."""
    live = make_live()
    stored(live)
    first = chunk_keys(TOKENS)[0]
    assert live.base is not None and (live.base / fs_file_name(first)).is_file()
    assert live.delete({"keys": [encoded(first)]}).json()["ok"] is True
    request_id = submit(live)
    assert live.wait_completed(request_id) == {"status": "completed", "found_keys": 2, "total_keys": 3}
    assert live.lookup(TOKENS, request_id="miss-first") == 0
    live.client.end_session("miss-first")
