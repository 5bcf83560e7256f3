"""vLLM's own request patterns through the REAL LMCache 0.5.6 client, one process per TP rank.

Run with the peer venv's python (it imports ``lmcache``; lmcache-server never does)::

    <peer venv>/bin/python interop/vllm_patterns.py tcp://127.0.0.1:PORT --tp 2 --mode lmcache_driven [--mla]

The keys are formed as vLLM's MP connector forms them (``ParallelStrategy`` in
``lmcache.integration.vllm.vllm_multi_process_adapter``): non-MLA, every rank is
a KV writer with ``world_size = tp`` and ``worker_id = rank``; MLA, KV is
replicated, so ``world_size = 1``, every rank has ``worker_id = 0``, only rank 0
stores and every rank reads (``num_kv_readers = tp``). The scheduler looks up
and frees locks with ``worker_id = None``. Each rank is its own process with
its own client, registering a CPU KV cache through the client's own transfer
context (``lmcache_driven``: shared memory; ``engine_driven``: pickled chunks).

Cases (each on its own token prefix): a full hit; vLLM's prefix-cache overlap
(``FREE_LOOKUP_LOCKS [0, 272)`` then every rank retrieves ``[256, 512)`` with
``skip_first_n_tokens = 16``); a rank that never stores (non-MLA); a missing
tail chunk on one rank; late fill of the missing rank; a free of a model that
was never registered. Prints one JSON object ``{"cases": {...}}``; the pytest
side compares it between servers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from typing import Any

TIMEOUT = 30.0
MODEL = "vllm-patterns"
CHUNK_BLOCKS = 16  # chunk 256 / block 16
SRC, DST = 0, 64  # source blocks (stored) and destination blocks (retrieved into)


def _key(tokens, request_id, *, world_size, worker_id, readers, start=0, end=None, model=None):
    from lmcache.v1.multiprocess.custom_types import IPCCacheServerKey

    return IPCCacheServerKey(model_name=model or MODEL, world_size=world_size, worker_id=worker_id,
                             token_ids=tuple(tokens), start=start, end=len(tokens) if end is None else end,
                             request_id=request_id, cache_salt="", num_kv_readers=readers)


def rank_main(url: str, rank: int, tp: int, mode: str, mla: bool, model: str, inbox: Any, outbox: Any) -> None:
    """One vLLM worker: registers its KV cache, then runs the coordinator's commands."""
    global MODEL
    MODEL = model
    import torch
    from lmcache.cli.commands.bench.server_bench.helpers import _allocate_kv_cache
    from lmcache.utils import EngineType
    from lmcache.v1.kv_layer_groups import parse_kvcache_shape_spec
    from lmcache.v1.multiprocess.group_view import EngineGroupInfo
    from lmcache.v1.multiprocess.transfer_context import EngineDrivenTransferContext, create_transfer_context
    from lmcache.v1.multiprocess.transport.factory import RequestClientFactory

    client = RequestClientFactory.create(url)
    spec = "(1,128,16,1,64):float16:2" if mla else "(2,128,16,2,64):float16:2"
    groups = parse_kvcache_shape_spec(spec)
    tensors = _allocate_kv_cache(groups=groups, device="cpu")
    kv = {f"layer.{i}": t for i, t in enumerate(tensors)}
    gen = torch.Generator().manual_seed(100 + (0 if mla else rank))  # MLA: replicated KV, same bytes on every rank
    for t in tensors:
        t.copy_(torch.randn(t.shape, generator=gen).to(t.dtype))
    block_axis = 0 if mla else 1  # (NB, BS, H) for MLA, (2, NB, BS, NH, HS) otherwise
    iid = 1000 + rank
    ctx = (EngineDrivenTransferContext(iid, client) if mode == "engine_driven"
           else create_transfer_context(kv, mode=mode, instance_id=iid, req_client=client))
    infos = [EngineGroupInfo(engine_group_id=i, layer_indices=tuple(g.layer_indices), tokens_per_block=16)
             for i, g in enumerate(groups)]
    world_size, worker_id, readers = (1, 0, tp) if mla else (tp, rank, 1)
    ctx.register(kv, MODEL, world_size, CHUNK_BLOCKS, TIMEOUT, layout_hints={"kv_layout": "NHD"},
                 engine_group_infos=infos, engine_type=EngineType.VLLM)

    def blocks(t, first, n):
        return t.narrow(block_axis, first, n)

    try:
        outbox.put(("ready", rank))
        while True:
            cmd = inbox.get()
            if cmd[0] == "stop":
                break
            op, request_id, tokens, start, end, skip = cmd
            first, n = start // 16, (end - start) // 16
            k = _key(tokens, request_id, world_size=world_size, worker_id=worker_id, readers=readers,
                     start=start, end=end)
            if op == "store":
                ids = [list(range(SRC + first, SRC + first + n)) for _ in groups]
                ok = bool(ctx.submit_store(request_id, k, kv, ids, ctx.create_recorded_event(), CHUNK_BLOCKS
                                           ).result(TIMEOUT))
                outbox.put((rank, {"ok": ok}))
            else:
                for t in tensors:
                    blocks(t, DST, 64).zero_()
                ids = [list(range(DST + first, DST + first + n)) for _ in groups]
                ok = bool(ctx.submit_retrieve(request_id, k, kv, ids, ctx.create_recorded_event(), CHUNK_BLOCKS,
                                              skip_first_n_tokens=skip).result(TIMEOUT))
                sb = skip // 16  # whole blocks left alone by the skip
                equal = ok and all(
                    torch.equal(blocks(t, DST + first + sb, n - sb), blocks(t, SRC + first + sb, n - sb))
                    for t in tensors)
                untouched = all(not blocks(t, DST + first, sb).any() for t in tensors) if sb else True
                outbox.put((rank, {"ok": ok, "bytes_equal": bool(equal), "skipped_untouched": bool(untouched)}))
    finally:
        try:
            fut = ctx.unregister()
            if fut is not None:
                fut.result(TIMEOUT)
        except Exception:  # the server may already be gone
            pass
        ctx.close()
        client.close()


def _answered(sched: Any, key: Any) -> bool:
    try:
        sched.free_lookup_locks(key, 1).result(3.0)
        return True
    except Exception:
        return False


class Fleet:
    """The coordinator's view of the rank processes."""

    def __init__(self, url: str, tp: int, mode: str, mla: bool, model: str) -> None:
        spawn = mp.get_context("spawn")
        self.inboxes = [spawn.Queue() for _ in range(tp)]
        self.outbox = spawn.Queue()
        self.procs = [spawn.Process(target=rank_main, args=(url, r, tp, mode, mla, model, self.inboxes[r],
                                                                      self.outbox))
                      for r in range(tp)]
        for p in self.procs:
            p.start()
        for _ in range(tp):
            self.outbox.get(timeout=180)

    def run(self, ranks: list[int], *cmd: Any) -> dict[int, dict]:
        for r in ranks:
            self.inboxes[r].put(cmd)
        out = {}
        for _ in ranks:
            r, reply = self.outbox.get(timeout=120)
            out[r] = reply
        return out

    def stop(self) -> None:
        for q in self.inboxes:
            q.put(("stop",))
        for p in self.procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--mode", choices=["lmcache_driven", "engine_driven"], default="lmcache_driven")
    ap.add_argument("--mla", action="store_true")
    ap.add_argument("--model", default="vllm-patterns")
    args = ap.parse_args()
    from lmcache.v1.multiprocess.transport.factory import RequestClientFactory

    global MODEL
    MODEL = args.model
    tp, mla = args.tp, args.mla
    sched = RequestClientFactory.create(args.url)
    world_size, readers = (1, tp) if mla else (tp, 1)
    writers = [0] if mla else list(range(tp))
    everyone = list(range(tp))

    def skey(tokens, rid, start=0, end=None, model=MODEL):
        return _key(tokens, rid, world_size=world_size, worker_id=None, readers=readers, start=start, end=end,
                    model=model)

    def lookup(tokens, rid, want=None):
        """LOOKUP + QUERY as the scheduler does. LMCache finishes a store's copy after replying, so when
        ``want`` is given a short miss is retried (with a new request id) until it is reached or 30 s pass."""
        deadline = time.monotonic() + 30
        attempt = 0
        while True:
            r = rid if attempt == 0 else f"{rid}.{attempt}"
            sched.lookup(skey(tokens, r), 1).result(TIMEOUT)
            while (hits := sched.query_prefetch_status(r).result(TIMEOUT)) is None:
                time.sleep(0.001)
            if want is None or hits == want or time.monotonic() > deadline:
                return r, hits
            sched.end_session(r).result(TIMEOUT)
            attempt += 1
            time.sleep(0.05)

    cases: dict[str, Any] = {}
    # Before any worker registered this model: LMCache 0.5.6 leaves the free unanswered (see the test).
    cases["free_before_registration_answered"] = _answered(sched, skey(list(range(512)), "early", 0, 512))
    fleet = Fleet(args.url, tp, args.mode, mla, MODEL)
    try:
        a = list(range(10_000, 10_512))
        stored = fleet.run(writers, "store", "a-store", a, 0, 512, 0)
        sched.end_session("a-store").result(TIMEOUT)
        rid, hits = lookup(a, "a-full", want=2)
        got = fleet.run(everyone, "retrieve", rid, a, 0, 512, 0)
        sched.end_session(rid).result(TIMEOUT)
        cases["full"] = {"stored": all(v["ok"] for v in stored.values()), "hits": hits,
                         "retrieved": all(v["ok"] for v in got.values()),
                         "bytes_equal": all(v["bytes_equal"] for v in got.values())}

        # vLLM's automatic prefix cache already holds 272 tokens of the 512-token hit.
        rid, hits = lookup(a, "a-overlap", want=2)
        sched.free_lookup_locks(skey(a, rid, 0, 272), 1).result(TIMEOUT)
        got = fleet.run(everyone, "retrieve", rid, a, 256, 512, 16)
        sched.end_session(rid).result(TIMEOUT)
        cases["prefix_overlap"] = {"hits": hits, "retrieved": all(v["ok"] for v in got.values()),
                                   "bytes_equal": all(v["bytes_equal"] for v in got.values()),
                                   "skipped_untouched": all(v["skipped_untouched"] for v in got.values())}

        if not mla:  # MLA has one writer: there is no "other" rank to be missing
            b = list(range(20_000, 20_512))
            fleet.run(writers[:-1], "store", "b-store", b, 0, 512, 0)
            sched.end_session("b-store").result(TIMEOUT)
            rid, hits = lookup(b, "b-missing-rank")
            sched.free_lookup_locks(skey(b, rid, 0, 512), 1).result(TIMEOUT)
            sched.end_session(rid).result(TIMEOUT)
            cases["rank_never_stored"] = {"hits": hits}
            fleet.run(writers[-1:], "store", "b-late", b, 0, 512, 0)
            sched.end_session("b-late").result(TIMEOUT)
            rid, hits = lookup(b, "b-late-fill", want=2)
            got = fleet.run(everyone, "retrieve", rid, b, 0, 512, 0)
            sched.end_session(rid).result(TIMEOUT)
            cases["late_fill"] = {"hits": hits, "retrieved": all(v["ok"] for v in got.values()),
                                  "bytes_equal": all(v["bytes_equal"] for v in got.values())}

            c = list(range(30_000, 30_512))
            fleet.run(writers, "store", "c-head", c, 0, 256, 0)
            fleet.run(writers[:-1], "store", "c-tail", c, 256, 512, 0)
            sched.end_session("c-head").result(TIMEOUT)
            sched.end_session("c-tail").result(TIMEOUT)
            rid, hits = lookup(c, "c-missing-tail", want=1)
            got = fleet.run(everyone, "retrieve", rid, c, 0, 256, 0)
            sched.end_session(rid).result(TIMEOUT)
            cases["missing_tail_chunk"] = {"hits": hits, "retrieved": all(v["ok"] for v in got.values()),
                                           "bytes_equal": all(v["bytes_equal"] for v in got.values())}

    finally:
        fleet.stop()
        sched.close()
    print(json.dumps({"cases": cases}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
