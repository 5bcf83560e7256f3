"""Latency as vLLM sees it: NOOP and LOOKUP round trips through the REAL LMCache 0.5.6 client.

This file is run by the LMCache peer venv's python, never imported by
lmcache-server (it imports ``lmcache``)::

    <peer venv>/bin/python lmcache_core/bench/_real_client_probe.py URL [--lookups N] [--store]

(``lmcache_core`` must be importable only as a path: the bench passes this file's
path instead.) It registers a CPU KV cache (32 layers x 8 heads x 128 fp16, 16-token
blocks, the issue's shape) through the client's own transfer context, stores a
2048-token prefix once, then times, with ``time.perf_counter_ns``:

* ``noop``: ``client.noop().result()``;
* ``lookup_hit``: ``lookup(key)`` then ``query_prefetch_status`` until it answers
  (what vLLM's scheduler pays per new request), then ``end_session``, untimed;
* ``lookup_miss``: the same for a prefix never stored.

``--background`` makes two more worker processes STORE and RETRIEVE continuously
on their own KV caches while the lookups are timed (a scheduler looking up while
TP workers transfer). Prints one JSON object with p50/p99 in microseconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from typing import Any

MODEL = "probe-model"
TIMEOUT = 60.0
SPEC = "(2,{nb},16,8,128):float16:{layers}"
PREFIX = 2048


def _key(tokens: list[int], rid: str, worker_id: int | None) -> Any:
    from lmcache.v1.multiprocess.custom_types import IPCCacheServerKey

    return IPCCacheServerKey(model_name=MODEL, world_size=1, worker_id=worker_id, token_ids=tuple(tokens), start=0,
                             end=len(tokens), request_id=rid, cache_salt="", num_kv_readers=1)


def _worker(url: str, iid: int, layers: int, nb: int, store: bool) -> tuple[Any, Any, dict]:
    """A registered worker: (client, transfer context, kv caches)."""
    import torch
    from lmcache.cli.commands.bench.server_bench.helpers import _allocate_kv_cache
    from lmcache.utils import EngineType
    from lmcache.v1.kv_layer_groups import parse_kvcache_shape_spec
    from lmcache.v1.multiprocess.group_view import EngineGroupInfo
    from lmcache.v1.multiprocess.transfer_context import create_transfer_context
    from lmcache.v1.multiprocess.transport.factory import RequestClientFactory

    client = RequestClientFactory.create(url)
    groups = parse_kvcache_shape_spec(SPEC.format(nb=nb, layers=layers))
    tensors = _allocate_kv_cache(groups=groups, device="cpu")
    for t in tensors:
        t.copy_(torch.randn(t.shape).to(t.dtype))
    kv = {f"layer.{i}": t for i, t in enumerate(tensors)}
    ctx = create_transfer_context(kv, mode="lmcache_driven", instance_id=iid, req_client=client)
    infos = [EngineGroupInfo(engine_group_id=i, layer_indices=tuple(g.layer_indices), tokens_per_block=16)
             for i, g in enumerate(groups)]
    ctx.register(kv, MODEL, 1, 16, TIMEOUT, layout_hints={"kv_layout": "NHD"}, engine_group_infos=infos,
                 engine_type=EngineType.VLLM)
    return client, ctx, kv


def _background(url: str, iid: int, layers: int, stop: Any, counter: Any) -> None:
    """STORE then RETRIEVE 4 chunks of a worker-private prefix, over and over, until ``stop`` is set."""
    client, ctx, kv = _worker(url, iid, layers, 160, True)
    n = 0
    try:
        while not stop.is_set():
            tokens = [iid * 1_000_000 + n * 1024 + i for i in range(1024)]
            rid = f"bg-{iid}-{n}"
            k = _key(tokens, rid, 0)
            ctx.submit_store(rid, k, kv, [list(range(64))], ctx.create_recorded_event(), 16).result(TIMEOUT)
            client.lookup(_key(tokens, rid, None), 1).result(TIMEOUT)
            while client.query_prefetch_status(rid).result(TIMEOUT) is None:
                pass
            ctx.submit_retrieve(rid, k, kv, [list(range(64, 128))], ctx.create_recorded_event(), 16,
                                skip_first_n_tokens=0).result(TIMEOUT)
            client.end_session(rid).result(TIMEOUT)
            n += 1
            with counter.get_lock():
                counter.value += 1
            if n % 8 == 0:
                client.clear(True).result(TIMEOUT)  # keep L1 from filling up over a long run
    finally:
        ctx.close()
        client.close()


def _transfer_worker(url: str, iid: int, layers: int, chunks: int, rounds: int, barrier: Any, out: Any) -> None:
    """One of N concurrent workers: STORE then RETRIEVE ``chunks`` chunks, ``rounds`` times, after a barrier."""
    client, ctx, kv = _worker(url, iid, layers, 2 * chunks * 16, True)
    store_s = retrieve_s = 0.0
    ok = True
    try:
        barrier.wait(timeout=300)
        for r in range(rounds):
            tokens = [(iid % 1000) * 1_000_000 + r * 10_000 + i for i in range(chunks * 256)]  # token ids are uint32
            rid = f"w{iid}-{r}"
            k = _key(tokens, rid, 0)
            t0 = time.perf_counter()
            ok &= bool(ctx.submit_store(rid, k, kv, [list(range(chunks * 16))], ctx.create_recorded_event(), 16
                                        ).result(TIMEOUT))
            store_s += time.perf_counter() - t0
            client.lookup(_key(tokens, rid, None), 1).result(TIMEOUT)
            while client.query_prefetch_status(rid).result(TIMEOUT) is None:
                pass
            t0 = time.perf_counter()
            ok &= bool(ctx.submit_retrieve(rid, k, kv, [list(range(chunks * 16, 2 * chunks * 16))],
                                           ctx.create_recorded_event(), 16, skip_first_n_tokens=0).result(TIMEOUT))
            retrieve_s += time.perf_counter() - t0
            client.end_session(rid).result(TIMEOUT)
        barrier.wait(timeout=600)
    finally:
        out.put((iid, ok, store_s, retrieve_s))
        ctx.close()
        client.close()


def _raw_worker(layers: int, chunks: int, rounds: int, barrier: Any, out: Any) -> None:
    """The baseline for one worker: the same bytes gathered to and scattered from contiguous memory by torch."""
    import torch

    torch.set_num_threads(1)
    blocks = 2 * chunks * 16
    kv = [torch.randn(2, blocks, 16, 8, 128).to(torch.float16) for _ in range(layers)]
    src, dst = torch.arange(0, chunks * 16), torch.arange(chunks * 16, blocks)
    bufs = [torch.empty(2, chunks * 16, 16, 8, 128, dtype=torch.float16) for _ in range(layers)]
    for t, b in zip(kv, bufs):  # touch everything once
        torch.index_select(t, 1, src, out=b)
    barrier.wait(timeout=300)
    gather_s = scatter_s = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for t, b in zip(kv, bufs):
            torch.index_select(t, 1, src, out=b)
        gather_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for t, b in zip(kv, bufs):
            t.index_copy_(1, dst, b)
        scatter_s += time.perf_counter() - t0
    barrier.wait(timeout=600)
    out.put((0, True, gather_s, scatter_s))


def scaling(url: str, n: int, layers: int, chunks: int, rounds: int) -> dict[str, Any]:
    """N workers at once through the real client, beside N raw copies at once; and LOOKUP p50 meanwhile."""
    spawn = mp.get_context("spawn")
    nbytes = n * rounds * chunks * 2 * layers * 256 * 8 * 128 * 2  # per direction, all workers

    def phase(target: Any, args_for: Any) -> tuple[float, float, bool]:
        barrier, out = spawn.Barrier(n + 1), spawn.Queue()
        procs = [spawn.Process(target=target, args=(*args_for(i), barrier, out)) for i in range(n)]
        for p in procs:
            p.start()
        barrier.wait(timeout=300)
        t0 = time.perf_counter()
        barrier.wait(timeout=600)
        wall = time.perf_counter() - t0
        results = [out.get(timeout=60) for _ in range(n)]
        for p in procs:
            p.join(timeout=60)
        ok = all(r[1] for r in results)
        # aggregate GB/s of each direction: bytes over the slowest worker's time in it
        return nbytes / max(r[2] for r in results) / 1e9, nbytes / max(r[3] for r in results) / 1e9, ok and wall > 0

    raw_gather, raw_scatter, _ = phase(_raw_worker, lambda i: (layers, chunks, rounds))
    store, retrieve, ok = phase(_transfer_worker, lambda i: (url, 2000 + i, layers, chunks, rounds))
    return {"workers": n, "ok": ok, "aggregate_store_gbps": round(store, 3),
            "aggregate_retrieve_gbps": round(retrieve, 3), "raw_parallel_gather_gbps": round(raw_gather, 3),
            "raw_parallel_scatter_gbps": round(raw_scatter, 3),
            "store_ratio_to_raw": round(store / raw_gather, 3), "retrieve_ratio_to_raw": round(retrieve / raw_scatter, 3)}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _summary(ns: list[int]) -> dict[str, float]:
    us = [v / 1000 for v in ns]
    return {"p50_us": round(statistics.median(us), 1), "p99_us": round(_pct(us, 0.99), 1), "n": len(us)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--lookups", type=int, default=300)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--background", type=int, default=0, help="worker processes transferring meanwhile")
    ap.add_argument("--scaling", type=int, default=0, help="instead: N workers transferring at once")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    if args.scaling:
        print(json.dumps(scaling(args.url, args.scaling, args.layers, args.chunks, args.rounds)))
        return 0

    client, ctx, kv = _worker(args.url, 777, args.layers, PREFIX // 16, True)
    out: dict[str, Any] = {}
    procs: list[Any] = []
    stop = None
    try:
        hit = list(range(50_000, 50_000 + PREFIX))
        miss = list(range(90_000, 90_000 + PREFIX))
        ok = ctx.submit_store("probe-store", _key(hit, "probe-store", 0), kv, [list(range(PREFIX // 16))],
                              ctx.create_recorded_event(), 16).result(TIMEOUT)
        client.end_session("probe-store").result(TIMEOUT)
        out["stored"] = bool(ok)
        # LMCache completes a store's copy after replying: wait until the prefix hits in full.
        deadline = time.monotonic() + 30
        while True:
            client.lookup(_key(hit, "probe-warm", None), 1).result(TIMEOUT)
            while (hits := client.query_prefetch_status("probe-warm").result(TIMEOUT)) is None:
                pass
            client.end_session("probe-warm").result(TIMEOUT)
            if hits == PREFIX // 256 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        out["hit_chunks"] = hits
        if args.background:
            spawn = mp.get_context("spawn")
            stop, counter = spawn.Event(), spawn.Value("q", 0)
            procs = [spawn.Process(target=_background, args=(args.url, 900 + i, args.layers, stop, counter))
                     for i in range(args.background)]
            for p in procs:
                p.start()
            deadline = time.monotonic() + 120
            while counter.value < 2 * args.background and time.monotonic() < deadline:
                time.sleep(0.05)  # wait until every background worker is transferring
        for _ in range(50):  # warm-up
            client.noop().result(TIMEOUT)
        samples: dict[str, list[int]] = {"noop": [], "lookup_hit": [], "lookup_miss": []}
        for i in range(args.lookups):
            t0 = time.perf_counter_ns()
            client.noop().result(TIMEOUT)
            samples["noop"].append(time.perf_counter_ns() - t0)
            for name, tokens in (("lookup_hit", hit), ("lookup_miss", miss)):
                rid = f"{name}-{i}"
                t0 = time.perf_counter_ns()
                client.lookup(_key(tokens, rid, None), 1).result(TIMEOUT)
                while (hits := client.query_prefetch_status(rid).result(TIMEOUT)) is None:
                    pass
                samples[name].append(time.perf_counter_ns() - t0)
                client.end_session(rid).result(TIMEOUT)
                if name == "lookup_hit" and hits != PREFIX // 256:
                    out.setdefault("short_hits", 0)
                    out["short_hits"] += 1
        out.update({name: _summary(ns) for name, ns in samples.items()})
        if procs:
            out["background_cycles"] = counter.value
    finally:
        if stop is not None:
            stop.set()
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
        ctx.close()
        client.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
