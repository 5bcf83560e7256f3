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


# N workers at once (tensor parallelism), beside N raw copies at once. Both groups of processes
# live through the whole measurement and take turns, synchronised by one barrier of 2N+1
# parties: in each episode the raw group copies, then the transfer group stores and retrieves,
# so every ratio compares two adjacent slices of time; the reported ratio is the median over
# the episodes. Every process passes the same barriers; one waiting for its turn blocks.
_BARRIERS_PER_EPISODE = 4  # raw starts, transfer starts, transfer ended, L1 cleared


def _transfer_worker(url: str, iid: int, first: bool, layers: int, chunks: int, rounds: int, episodes: int,
                     barrier: Any, out: Any) -> None:
    """One of N concurrent workers: per episode, on its turn, STORE then RETRIEVE ``chunks`` chunks ``rounds`` times."""
    client, ctx, kv = _worker(url, iid, layers, 2 * chunks * 16, True)
    ok = True
    times: list[tuple[float, float]] = []

    def one_round(r: int) -> tuple[float, float]:
        nonlocal ok
        tokens = [(iid % 1000) * 1_000_000 + r * 10_000 + i for i in range(chunks * 256)]  # token ids are uint32
        rid = f"w{iid}-{r}"
        k = _key(tokens, rid, 0)
        t0 = time.perf_counter()
        ok &= bool(ctx.submit_store(rid, k, kv, [list(range(chunks * 16))], ctx.create_recorded_event(), 16
                                    ).result(TIMEOUT))
        t_store = time.perf_counter() - t0
        # LMCache finishes a store's copy after replying: retrieve once the whole prefix hits (untimed).
        deadline = time.monotonic() + 30
        while True:
            client.lookup(_key(tokens, rid, None), 1).result(TIMEOUT)
            while (hits := client.query_prefetch_status(rid).result(TIMEOUT)) is None:
                pass
            if hits == chunks or time.monotonic() > deadline:
                break
            client.end_session(rid).result(TIMEOUT)
        t0 = time.perf_counter()
        ok &= bool(ctx.submit_retrieve(rid, k, kv, [list(range(chunks * 16, 2 * chunks * 16))],
                                       ctx.create_recorded_event(), 16, skip_first_n_tokens=0).result(TIMEOUT))
        t_retrieve = time.perf_counter() - t0
        client.end_session(rid).result(TIMEOUT)
        return t_store, t_retrieve

    try:
        # Steady state, like the raw baseline (which touches its buffers first): an untimed
        # warm-up fills L1 memory and the first worker clears it, so timed objects land in
        # memory the server has used before. Each episode ends with a clear too (untimed).
        for r in range(rounds):
            one_round(90 + r)
        barrier.wait(timeout=300)
        if first:
            client.clear(True).result(TIMEOUT)
        for e in range(episodes):
            barrier.wait(timeout=300)  # raw group's turn
            barrier.wait(timeout=600)  # ours
            store_s = retrieve_s = 0.0
            for r in range(rounds):
                st, rt = one_round(100 * (e + 1) + r)
                store_s += st
                retrieve_s += rt
            times.append((store_s, retrieve_s))
            barrier.wait(timeout=600)
            if first:
                client.clear(True).result(TIMEOUT)
            barrier.wait(timeout=300)
    except BaseException:
        barrier.abort()  # the others stop waiting for this one at once
        raise
    finally:
        out.put(("transfer", iid, ok, times))
        ctx.close()
        client.close()


def _raw_worker(wid: int, layers: int, chunks: int, rounds: int, episodes: int, barrier: Any, out: Any) -> None:
    """One worker's baseline: the same bytes gathered to and scattered from contiguous memory by torch."""
    import torch

    torch.set_num_threads(1)
    blocks = 2 * chunks * 16
    kv = [torch.randn(2, blocks, 16, 8, 128).to(torch.float16) for _ in range(layers)]
    src, dst = torch.arange(0, chunks * 16), torch.arange(chunks * 16, blocks)
    bufs = [torch.empty(2, chunks * 16, 16, 8, 128, dtype=torch.float16) for _ in range(layers)]
    for t, b in zip(kv, bufs):  # touch everything once
        torch.index_select(t, 1, src, out=b)
    times: list[tuple[float, float]] = []
    try:
        barrier.wait(timeout=300)  # warmed up
        for _ in range(episodes):
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
            times.append((gather_s, scatter_s))
            barrier.wait(timeout=600)  # the transfer group's turn
            barrier.wait(timeout=600)
            barrier.wait(timeout=300)
    except BaseException:
        barrier.abort()
        raise
    finally:
        out.put(("raw", wid, True, times))


def scaling(url: str, n: int, layers: int, chunks: int, rounds: int, episodes: int = 5) -> dict[str, Any]:
    """N workers at once through the real client, beside N raw copies at once, taking turns (see above)."""
    spawn = mp.get_context("spawn")
    nbytes = n * rounds * chunks * 2 * layers * 256 * 8 * 128 * 2  # per direction, per episode, all workers
    barrier, out = spawn.Barrier(2 * n + 1), spawn.Queue()
    procs = [spawn.Process(target=_raw_worker, args=(i, layers, chunks, rounds, episodes, barrier, out))
             for i in range(n)]
    procs += [spawn.Process(target=_transfer_worker, args=(url, 2000 + i, i == 0, layers, chunks, rounds, episodes,
                                                           barrier, out)) for i in range(n)]
    for p in procs:
        p.start()
    try:
        for _ in range(1 + episodes * _BARRIERS_PER_EPISODE):
            barrier.wait(timeout=900)
        results = [out.get(timeout=120) for _ in range(2 * n)]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    raw = [r[3] for r in results if r[0] == "raw"]
    ours = [r[3] for r in results if r[0] == "transfer"]
    ok = all(r[2] for r in results) and all(len(t) == episodes for t in raw + ours)

    def gbps(group: list[list[tuple[float, float]]], e: int, d: int) -> float:
        # aggregate GB/s of one direction in one episode: bytes over the slowest worker's time in it
        return nbytes / max(w[e][d] for w in group) / 1e9

    per = [(gbps(ours, e, 0), gbps(ours, e, 1), gbps(raw, e, 0), gbps(raw, e, 1)) for e in range(episodes)]
    med = [statistics.median(p[i] for p in per) for i in range(4)]
    return {"workers": n, "ok": ok, "episodes": episodes, "rounds_per_episode": rounds,
            "aggregate_store_gbps": round(med[0], 3), "aggregate_retrieve_gbps": round(med[1], 3),
            "raw_parallel_gather_gbps": round(med[2], 3), "raw_parallel_scatter_gbps": round(med[3], 3),
            "store_ratio_to_raw": round(statistics.median(p[0] / p[2] for p in per), 3),
            "retrieve_ratio_to_raw": round(statistics.median(p[1] / p[3] for p in per), 3),
            "store_ratio_per_episode": [round(p[0] / p[2], 3) for p in per],
            "retrieve_ratio_per_episode": [round(p[1] / p[3], 3) for p in per]}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _summary(ns: list[int]) -> dict[str, Any]:
    """p50/p99 in µs, and every sample (µs, rounded to 0.1) so several runs' tails can be pooled."""
    us = [round(v / 1000, 1) for v in ns]
    return {"p50_us": round(statistics.median(us), 1), "p99_us": round(_pct(us, 0.99), 1), "n": len(us),
            "samples_us": us}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--lookups", type=int, default=300)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--background", type=int, default=0, help="worker processes transferring meanwhile")
    ap.add_argument("--scaling", type=int, default=0, help="instead: N workers transferring at once")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=5)
    args = ap.parse_args()
    if args.scaling:
        print(json.dumps(scaling(args.url, args.scaling, args.layers, args.chunks, args.rounds, args.episodes)))
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
