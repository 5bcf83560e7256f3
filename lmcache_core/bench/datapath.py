"""Data-path benchmark: STORE / RETRIEVE throughput and LOOKUP latency through a real server.

This process plays a vLLM worker with a CPU shared-memory KV cache (default 32
layers, 8 heads x 128 dims, fp16, 16-token blocks; 256-token chunks = 32 MiB
chunk objects) and drives the server over ZMQ with our client. In the same run
it measures the baseline the targets are stated against: a raw torch copy of
the same bytes in the same block pattern (the fastest of ``index_select`` per
layer and per K/V plane into a contiguous buffer, and of ``index_copy_`` /
``index_put_`` back), timed right before every STORE and every RETRIEVE.
``store_ratio_to_raw`` / ``retrieve_ratio_to_raw`` are the medians of those
per-sequence ratios; ``*_ratio_to_best_raw`` compare the mean throughput with the
best baseline time seen before the server started (the stricter, noisier figure
earlier rounds reported).

The real LMCache 0.5.6 server is measured by the same driver when its peer venv
exists (``interop/install-peer.sh``); our client speaks its protocol. Then
:mod:`lmcache_core.bench.realclient` adds the figures a vLLM scheduler sees: NOOP
and LOOKUP round trips through LMCache 0.5.6's own client library, for both servers.

Environment: ``LMCACHE_BENCH_SEQUENCES`` (8), ``LMCACHE_BENCH_CHUNKS`` (8 per
sequence), ``LMCACHE_BENCH_LOOKUPS`` (200), ``LMCACHE_BENCH_LAYERS`` (32).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

import torch

from lmcache_core.bench.peer import PEER_VENV, peer_env, peer_lmcache, peer_server_cmd
from lmcache_core.bench.transfer import timed
from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.testing import free_port, server_process
from lmcache_core.transfer.client_kv import WorkerKVCache

CHUNK, BLOCK = 256, 16
BPC = CHUNK // BLOCK
HEADS, HEAD_DIM = 8, 128
MODEL = "bench-model"
IID = 31337


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class RawCopy:
    """The baseline: plain torch copying ``n_chunks`` chunks' blocks, gather (blocks → contiguous) and scatter.

    Several ways are timed for each direction (``index_select`` per layer and per K/V
    plane; ``index_copy_`` per layer and per plane, ``index_put_`` per plane); the
    fastest of each is the baseline. :meth:`gather` / :meth:`scatter` run that fastest
    way once and return the seconds it took, so a benchmark can time the baseline
    right beside each server operation (paired ratios: a noisy neighbour slows both).
    """

    def __init__(self, kv: WorkerKVCache, n_chunks: int, repeats: int = 3) -> None:
        layers = kv.layers
        ids = torch.arange(0, n_chunks * BPC)
        dst_ids = torch.arange(n_chunks * BPC, 2 * n_chunks * BPC)
        bufs = [torch.empty((2, n_chunks * BPC) + tuple(layers[0].shape[2:]), dtype=layers[0].dtype)
                for _ in layers]
        self.nbytes = sum(b.numel() * b.element_size() for b in bufs)

        def per_layer_gather() -> None:
            for layer, buf in zip(layers, bufs):
                torch.index_select(layer, 1, ids, out=buf)

        def per_plane_gather() -> None:
            for layer, buf in zip(layers, bufs):
                for kv_i in range(layer.shape[0]):
                    torch.index_select(layer[kv_i], 0, ids, out=buf[kv_i])

        def per_layer_scatter() -> None:
            for layer, buf in zip(layers, bufs):
                layer.index_copy_(1, dst_ids, buf)

        def per_plane_scatter() -> None:
            for layer, buf in zip(layers, bufs):
                for kv_i in range(layer.shape[0]):
                    layer[kv_i].index_copy_(0, dst_ids, buf[kv_i])

        def per_plane_put() -> None:
            index = (dst_ids,)
            for layer, buf in zip(layers, bufs):
                for kv_i in range(layer.shape[0]):
                    layer[kv_i].index_put_(index, buf[kv_i])

        def best(fns: tuple) -> tuple[Any, float]:
            runs = [(timed(fn), fn) for fn in fns for _ in range(repeats)]
            t, fn = min(runs, key=lambda x: x[0])
            return fn, self.nbytes / t / 1e9

        self._gather, self.gather_gbps = best((per_layer_gather, per_plane_gather))
        self._scatter, self.scatter_gbps = best((per_layer_scatter, per_plane_scatter, per_plane_put))

    def gather(self) -> float:
        return timed(self._gather)

    def scatter(self) -> float:
        return timed(self._scatter)


def obj_gib(kv: WorkerKVCache) -> float:
    """GiB of one chunk object of ``kv``."""
    return sum(layer[:, :BPC].numel() * layer.element_size() for layer in kv.layers) / (1 << 30)


def wait_rss(pid: int, nbytes: float, timeout_s: float) -> bool:
    """Wait until process ``pid``'s resident set reaches ``nbytes`` (the pre-faulter got ahead)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        if rss >= nbytes:
            return True
        time.sleep(0.1)
    return False


def drive(url: str, kv: WorkerKVCache, sequences: int, chunks: int, lookups: int,
          raw: RawCopy | None = None) -> dict[str, Any]:
    """The workload, twice: store ``sequences`` new sequences, look each up, retrieve it.

    The first pass writes into L1 memory never touched before (page faults: a
    freshly started server); the server is then cleared and the same pass runs
    again into reused memory (a server in steady state, recycling evicted
    space). Then timed lookups (hit and miss). With ``raw``, the baseline copy of
    the same bytes is timed right before each STORE and each RETRIEVE, and the
    ``*_ratio_paired`` figures are the medians of the per-sequence ratios.
    """
    tokens_per_seq = chunks * CHUNK
    obj_bytes = sum(layer[:, :BPC].numel() * layer.element_size() for layer in kv.layers)
    client = LMCacheClient(url, timeout_s=300)
    try:
        client.register_kv_cache(IID, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
        ok = True
        src = [list(range(0, chunks * BPC))]
        dst = [list(range(chunks * BPC, 2 * chunks * BPC))]
        passes = []
        paired: list[list[tuple[float, float]]] = []  # per pass, per sequence: (store, retrieve) raw/ours
        for _ in range(2):
            store_s = retrieve_s = 0.0
            pairs: list[tuple[float, float]] = []
            for s in range(sequences):
                tokens = [(s * 7919 + i) % 50000 for i in range(tokens_per_seq)]
                rid = f"bench-{s}"
                raw_g = raw.gather() if raw is not None else 0.0
                t0 = time.perf_counter()
                ok &= client.store(make_key(tokens, rid, model_name=MODEL, worker_id=0), IID, src)[1]
                t_store = time.perf_counter() - t0
                store_s += t_store
                # A store is visible once its reply arrives (our server); poll for servers that copy later.
                deadline = time.monotonic() + 30
                while client.lookup(make_key(tokens, rid, model_name=MODEL)) != chunks:
                    client.end_session(rid)
                    if time.monotonic() > deadline:
                        ok = False
                        break
                raw_s = raw.scatter() if raw is not None else 0.0
                t0 = time.perf_counter()
                ok &= client.retrieve(make_key(tokens, rid, model_name=MODEL, worker_id=0), IID, dst)[1]
                t_retrieve = time.perf_counter() - t0
                retrieve_s += t_retrieve
                pairs.append((raw_g / t_store, raw_s / t_retrieve))
                client.end_session(rid)
            passes.append((store_s, retrieve_s))
            paired.append(pairs)
            client.clear(True)
        moved = sequences * chunks * obj_bytes
        (cold_store_s, cold_retrieve_s), (store_s, retrieve_s) = passes
        hit_tokens = [(0 * 7919 + i) % 50000 for i in range(tokens_per_seq)]
        client.store(make_key(hit_tokens, "hit", model_name=MODEL, worker_id=0), IID, src)
        client.end_session("hit")
        lat_hit, lat_miss = [], []
        for i in range(lookups):
            for tokens, lat in ((hit_tokens, lat_hit), ([99999 - i] + hit_tokens[1:], lat_miss)):
                rid = f"lk-{i}-{len(lat)}"
                t0 = time.perf_counter()
                client.lookup(make_key(tokens, rid, model_name=MODEL))
                lat.append((time.perf_counter() - t0) * 1e6)
                client.end_session(rid)
        client.unregister_kv_cache(IID)
    finally:
        client.close()

    def pct(xs: list[float], q: float) -> float:
        return round(statistics.quantiles(xs, n=100)[int(q) - 1], 1) if len(xs) >= 2 else round(xs[0], 1)

    out: dict[str, Any] = {}
    if raw is not None:
        for name, pairs in (("first_fill_", paired[0]), ("", paired[1])):
            out[f"{name}store_ratio_paired"] = round(statistics.median(p[0] for p in pairs), 3)
            out[f"{name}retrieve_ratio_paired"] = round(statistics.median(p[1] for p in pairs), 3)
    return {
        **out,
        "ok": bool(ok),
        "store_gbps": round(moved / store_s / 1e9, 3),
        "retrieve_gbps": round(moved / retrieve_s / 1e9, 3),
        "first_fill_store_gbps": round(moved / cold_store_s / 1e9, 3),
        "first_fill_retrieve_gbps": round(moved / cold_retrieve_s / 1e9, 3),
        "lookup_hit_p50_us": pct(lat_hit, 50), "lookup_hit_p99_us": pct(lat_hit, 99),
        "lookup_miss_p50_us": pct(lat_miss, 50), "lookup_miss_p99_us": pct(lat_miss, 99),
        "bytes_per_direction": moved,
    }


def _ratios(got: dict[str, Any], raw_gather: float, raw_scatter: float) -> dict[str, float]:
    """The target figures: paired with the baseline timed beside each op (see :func:`drive`); and, for
    reference, against the best baseline time seen before the server started."""
    return {"store_ratio_to_raw": got["store_ratio_paired"], "retrieve_ratio_to_raw": got["retrieve_ratio_paired"],
            "store_ratio_to_best_raw": round(got["store_gbps"] / raw_gather, 3),
            "retrieve_ratio_to_best_raw": round(got["retrieve_gbps"] / raw_scatter, 3)}


def run() -> list[dict[str, Any]]:
    sequences = _env_int("LMCACHE_BENCH_SEQUENCES", 8)
    chunks = _env_int("LMCACHE_BENCH_CHUNKS", 8)
    lookups = _env_int("LMCACHE_BENCH_LOOKUPS", 200)
    layers = _env_int("LMCACHE_BENCH_LAYERS", 32)
    l1_gb = max(2, int(sequences * chunks * 32 * layers / 32 / 1024 * 1.5) + 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    kv = WorkerKVCache(layers, (2, 2 * chunks * BPC, BLOCK, HEADS, HEAD_DIM))
    rows: list[dict[str, Any]] = []
    try:
        gen = torch.Generator().manual_seed(0)
        for layer in kv.layers:
            layer.copy_(torch.randn(layer.shape, generator=gen).to(layer.dtype))
        raw = RawCopy(kv, chunks)
        raw_gather, raw_scatter = raw.gather_gbps, raw.scatter_gbps
        base = {"bench": "datapath", "layers": layers, "heads": HEADS, "head_dim": HEAD_DIM, "dtype": "float16",
                "block_size": BLOCK, "chunk_tokens": CHUNK, "sequences": sequences, "chunks_per_sequence": chunks,
                "raw_torch_gather_gbps": round(raw_gather, 3), "raw_torch_scatter_gbps": round(raw_scatter, 3)}
        zp, hp = free_port(), free_port()
        with server_process([sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
                             "--http-port", str(hp), "--l1-size-gb", str(l1_gb), "--log-level", "WARNING"],
                            f"http://127.0.0.1:{hp}/healthcheck", env=env):
            ours = drive(f"tcp://127.0.0.1:{zp}", kv, sequences, chunks, lookups, raw)
        row = {**base, "server": "lmcache-server", **ours, **_ratios(ours, raw_gather, raw_scatter)}
        rows.append(row)
        # First-fill remedy (opt-in): the same run with the L1 pre-faulter keeping memory populated ahead.
        ahead_gb = max(1, int(sequences * chunks * obj_gib(kv) + 1))
        zp, hp = free_port(), free_port()
        with server_process([sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
                             "--http-port", str(hp), "--l1-size-gb", str(l1_gb), "--log-level", "WARNING",
                             "--l1-prefault-ahead-gb", str(ahead_gb)],
                            f"http://127.0.0.1:{hp}/healthcheck", env=env) as proc:
            ready = wait_rss(proc.pid, ahead_gb * (1 << 30) * 0.9, timeout_s=60)
            pre = drive(f"tcp://127.0.0.1:{zp}", kv, sequences, chunks, lookups, raw)
        rows.append({**base, "server": f"lmcache-server --l1-prefault-ahead-gb {ahead_gb}",
                     "prefault_ready_before_first_store": ready,
                     "first_fill_store_gbps": pre["first_fill_store_gbps"],
                     "first_fill_store_ratio_to_raw": pre["first_fill_store_ratio_paired"],
                     "first_fill_store_ratio_without_prefault": ours["first_fill_store_ratio_paired"],
                     "first_fill_store_ratio_to_best_raw": round(pre["first_fill_store_gbps"] / raw_gather, 3),
                     "store_gbps": pre["store_gbps"], "store_ratio_to_raw": pre["store_ratio_paired"],
                     "ok": pre["ok"]})
        peer = peer_lmcache()
        if peer is not None:
            zp, hp = free_port(), free_port()
            try:
                with server_process(peer_server_cmd(peer, zp, hp, l1_gb, "--supported-transfer-mode", "auto"),
                                    f"http://127.0.0.1:{hp}/healthcheck", env=peer_env(env)):
                    theirs = drive(f"tcp://127.0.0.1:{zp}", kv, sequences, chunks, lookups, raw)
                rows.append({**base, "server": "lmcache-0.5.6", **theirs, **_ratios(theirs, raw_gather, raw_scatter)})
                rows.append({"bench": "datapath", "comparison": "lmcache-server / lmcache-0.5.6",
                             "store_gbps_ratio": round(ours["store_gbps"] / theirs["store_gbps"], 2),
                             "retrieve_gbps_ratio": round(ours["retrieve_gbps"] / theirs["retrieve_gbps"], 2),
                             "lookup_hit_p50_ratio": round(ours["lookup_hit_p50_us"] / theirs["lookup_hit_p50_us"], 3),
                             "lookup_miss_p50_ratio": round(ours["lookup_miss_p50_us"]
                                                            / theirs["lookup_miss_p50_us"], 3)})
            except RuntimeError as exc:
                rows.append({"bench": "datapath", "server": "lmcache-0.5.6", "error": str(exc)})
        else:
            rows.append({"bench": "datapath", "server": "lmcache-0.5.6",
                         "error": f"not measured: no peer at {PEER_VENV}"})
    finally:
        kv.close()
    # Latency as vLLM sees it: the real 0.5.6 client against both servers (our client's rows are above).
    from lmcache_core.bench import realclient

    try:
        rows.extend(realclient.run())
    except Exception as exc:  # figures, not pass/fail: the rows above stay printed with the reason beside them
        rows.append({"bench": "datapath_real_client", "error": f"{type(exc).__name__}: {exc}"})
    return rows


if __name__ == "__main__":
    import json

    for r in run():
        print(json.dumps(r))
