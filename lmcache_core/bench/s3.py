"""S3 L2 benchmark (``lmcache-server bench s3``): the s3 adapter beside raw boto3, against one real S3 server.

The S3 server is moto's server mode (``moto[server]``, the s3 plugin's test extra),
started here as a subprocess on 127.0.0.1 and stopped at the end. Two kinds of rows:

``op: store`` / ``op: load``
    ``LMCACHE_BENCH_S3_OBJECTS`` (16) objects of ``LMCACHE_BENCH_S3_MIB`` (32) MiB per
    round. Ours: one ``store`` (then ``load``) batch through the adapter's public futures,
    with ``s3_num_io_threads`` = the concurrency. Raw: boto3 ``put_object`` of the same
    ``bytes`` / ``get_object(...)["Body"].read()`` on a thread pool of the same size,
    one client with the same botocore settings (pool size, timeouts, checksums only when
    required). The adapter stores under fresh keys each round (nothing is skipped as
    already present) and loads into preallocated buffers, verified byte-equal.
    ``ratio`` = ours / raw throughput (target >= 0.9).
``op: prefetch``
    A real ``lmcache-server`` with the s3 L2; this process plays a vLLM worker whose KV
    chunks are ``LMCACHE_BENCH_LAYERS`` (8) MiB objects. It stores
    ``LMCACHE_BENCH_L2_CHUNKS`` (32) chunks, waits for the write-behind, then per repeat
    clears L1 and times the LOOKUP that prefetches the whole prefix from S3 (verified by
    a RETRIEVE, byte-equal); beside it the raw time to GET the same objects in parallel
    (same concurrency) into preallocated buffers.

``op: outage``
    STORE round trips (this process's client to a real server with the s3 L2, small
    32 KiB chunks, ``LMCACHE_BENCH_S3_STORES`` (200) per phase): S3 up (the baseline),
    S3 stopped, S3 hung (a socket that accepts and never answers). p50/p99 per phase and
    p99 ratios against the baseline (acceptance: <= 1.2).

Medians of ``LMCACHE_BENCH_S3_REPEATS`` (3) rounds; GB/s are 1e9 bytes per second.
moto is a Python server: the absolute figures measure it as much as the client; the
ratios are the point.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from lmcache_core.bench.datapath import BLOCK, BPC, CHUNK, HEAD_DIM, HEADS
from lmcache_core.bench.l2_prefetch import _fill, _matches, _status, _summary, wait_write_behind
from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l2.base import L2AdapterContext, as_bytes_view
from lmcache_core.testing import free_port, stop_process_group, wait_http
from lmcache_core.transfer.client_kv import WorkerKVCache

MIB = 1 << 20
GIB = 1 << 30
MODEL = "bench-s3-model"
IID = 31339


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _adapter(moto: Any, bucket: str, threads: int) -> Any:
    import msgspec
    from lmcache_plugin_s3.adapter import S3AdapterConfig, S3L2Adapter

    fields = {k: v for k, v in moto.adapter_config(bucket, s3_num_io_threads=threads).items() if k != "type"}
    adapter = S3L2Adapter(msgspec.convert(fields, S3AdapterConfig), L2AdapterContext(0, "s3", io_workers=1))
    adapter.start()
    return adapter


def _keys(round_: int, count: int) -> list[ObjectKey]:
    return [ObjectKey((round_ * 1000 + i).to_bytes(4, "big") * 8, MODEL, 0, 0, "") for i in range(count)]


def _gbps(nbytes: int, seconds: list[float]) -> float:
    return round(nbytes / statistics.median(seconds) / 1e9, 3)


def throughput(moto: Any, size: int, count: int, repeats: int) -> list[dict[str, Any]]:
    """Store and load rows: the adapter vs raw boto3 at the same concurrency (``count`` objects in flight)."""
    bucket = "bench-throughput"
    moto.create_bucket(bucket)
    raw = moto.client()
    src = torch.randint(0, 256, (size,), dtype=torch.uint8)
    src_bytes = bytes(as_bytes_view(src))  # what raw boto3 users hand put_object
    bufs = [torch.empty(size, dtype=torch.uint8) for _ in range(count)]
    adapter = _adapter(moto, bucket, count)
    times: dict[str, list[float]] = {"ours_store": [], "raw_store": [], "ours_load": [], "raw_load": []}
    ok = True
    try:
        with ThreadPoolExecutor(count) as pool:
            for r in range(repeats):
                keys = _keys(r, count)
                raw_names = [f"raw/{r}/{i}" for i in range(count)]
                sides = ["raw", "ours"] if r % 2 == 0 else ["ours", "raw"]  # alternate who goes first
                for side in sides:
                    t0 = time.perf_counter()
                    if side == "raw":
                        list(pool.map(lambda n: raw.put_object(Bucket=bucket, Key=n, Body=src_bytes), raw_names))
                    else:
                        ok &= all(adapter.store(keys, [src] * count).result())
                    times[f"{side}_store"].append(time.perf_counter() - t0)
                for side in sides:
                    t0 = time.perf_counter()
                    if side == "raw":
                        got = list(pool.map(lambda n: raw.get_object(Bucket=bucket, Key=n)["Body"].read(), raw_names))
                        ok &= all(len(g) == size for g in got)
                        del got
                    else:
                        ok &= all(adapter.load(keys, bufs).result())
                    times[f"{side}_load"].append(time.perf_counter() - t0)
                ok &= all(torch.equal(b, src) for b in bufs)
                for b in bufs:
                    b.zero_()
                adapter.delete(keys).result()
                for n in raw_names:
                    raw.delete_object(Bucket=bucket, Key=n)
    finally:
        adapter.close()
    total = size * count
    rows = []
    for op in ("store", "load"):
        ours, base = _gbps(total, times[f"ours_{op}"]), _gbps(total, times[f"raw_{op}"])
        rows.append({"bench": "s3", "op": op, "ok": bool(ok), "object_bytes": size, "objects": count,
                     "concurrency": count, "repeats": repeats, "ours_gbps": ours, "raw_boto3_gbps": base,
                     "ratio": round(ours / base, 3),
                     "ours_ms_samples": [round(t * 1e3, 1) for t in times[f"ours_{op}"]],
                     "raw_ms_samples": [round(t * 1e3, 1) for t in times[f"raw_{op}"]]})
    return rows


def _raw_parallel_get(raw: Any, bucket: str, names: list[str], bufs: list[memoryview], threads: int) -> float:
    def get(pair: tuple[str, memoryview]) -> int:
        body = raw.get_object(Bucket=bucket, Key=pair[0])["Body"]
        data = body.read()
        pair[1][:len(data)] = data
        return len(data)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        sizes = list(pool.map(get, zip(names, bufs)))
    elapsed = time.perf_counter() - t0
    if sizes != [b.nbytes for b in bufs]:
        raise RuntimeError("raw GET returned short objects")
    return elapsed


def prefetch(moto: Any, layers: int, chunks: int, repeats: int, threads: int) -> dict[str, Any]:
    """A real server with the s3 L2: time LOOKUP (prefetch of ``chunks`` chunks from S3) beside raw parallel GETs."""
    bucket = "bench-prefetch"
    moto.create_bucket(bucket)
    raw = moto.client()
    kv = WorkerKVCache(layers, (2, chunks * BPC, BLOCK, HEADS, HEAD_DIM))
    obj_bytes = sum(layer[:, :BPC].numel() * layer.element_size() for layer in kv.layers)
    total = chunks * obj_bytes
    l1_gb = max(1, math.ceil(3 * total / GIB))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    adapter = moto.adapter_config(bucket, s3_num_io_threads=threads)
    row: dict[str, Any] = {"bench": "s3", "op": "prefetch", "chunks": chunks, "object_bytes": obj_bytes,
                           "prefix_bytes": total, "concurrency": threads, "repeats": repeats, "l1_size_gb": l1_gb}
    proc = None
    try:
        for i, layer in enumerate(kv.layers):
            _fill(layer, i)
        zp, hp = free_port(), free_port()
        http = f"http://127.0.0.1:{hp}"
        proc = subprocess.Popen([sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
                                 "--http-port", str(hp), "--l1-size-gb", str(l1_gb), "--log-level", "WARNING",
                                 "--l2-adapter", json.dumps(adapter)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        wait_http(f"{http}/healthcheck", proc, timeout_s=120)
        client = LMCacheClient(f"tcp://127.0.0.1:{zp}", timeout_s=300)
        try:
            client.register_kv_cache(IID, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
            tokens = [(i * 7919 + 13) % 50000 for i in range(chunks * CHUNK)]
            blocks = [list(range(chunks * BPC))]
            if not client.store(make_key(tokens, "w", model_name=MODEL, worker_id=0), IID, blocks)[1]:
                raise RuntimeError("STORE failed")
            client.end_session("w")
            wait_write_behind(http, chunks)
            names = [o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"]]
            if len(names) != chunks:
                raise RuntimeError(f"expected {chunks} objects in the bucket, found {len(names)}")
            bufs = [memoryview(bytearray(b"\x01") * obj_bytes) for _ in names]
            prefetch_s, raw_s = [], []
            ok = True
            for r in range(repeats):
                client.clear(True)
                for layer in kv.layers:
                    layer.zero_()
                t0 = time.perf_counter()
                hits = client.lookup(make_key(tokens, f"r{r}", model_name=MODEL), timeout_s=300)
                prefetch_s.append(time.perf_counter() - t0)
                ok &= hits == chunks
                ok &= client.retrieve(make_key(tokens, f"r{r}", model_name=MODEL, worker_id=0), IID, blocks)[1]
                client.end_session(f"r{r}")
                ok &= _matches(kv)
                raw_s.append(_raw_parallel_get(raw, bucket, names, bufs, threads))
            s3 = _status(http)["storage_manager"]["l2_adapters"][0]
            row.update({"ok": bool(ok), **_summary(prefetch_s, total, "prefetch"), **_summary(raw_s, total, "raw_get"),
                        "prefetch_to_raw_ratio": round(statistics.median(prefetch_s) / statistics.median(raw_s), 3),
                        "breaker": s3["breaker"]["state"], "object_names_are_lmcache": all(
                            "@" in n and n.startswith(MODEL + "@") for n in names)})
            client.unregister_kv_cache(IID)
        finally:
            client.close()
    finally:
        if proc is not None:
            stop_process_group(proc)
        kv.close()
    return row


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def outage(tmp: Path, stores: int) -> dict[str, Any]:
    """STORE latency with S3 up, stopped and hung: the write-behind must keep S3 off the STORE path."""
    from lmcache_plugin_s3.testing import HungEndpoint, MotoS3, Worker, clean_env, serve_cmd, stable_port

    moto = MotoS3(stable_port(), log=tmp / "moto-outage.log").start()
    moto.create_bucket("bench-outage")
    adapter = moto.adapter_config("bench-outage", connect_timeout_s=0.5, read_timeout_s=1.0, lookup_timeout_s=0.5,
                                  retries=0, breaker_backoff_s=0.5, breaker_max_backoff_s=2.0)
    zp, hp = free_port(), free_port()
    proc = subprocess.Popen(serve_cmd(zp, hp, adapter), env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    row: dict[str, Any] = {"bench": "s3", "op": "outage", "stores_per_phase": stores}
    try:
        wait_http(f"http://127.0.0.1:{hp}/healthcheck", proc, timeout_s=120)
        worker = Worker(f"tcp://127.0.0.1:{zp}", 777, "bench-outage/model", timeout_s=60)
        seq = iter(range(1_000_000))

        def phase() -> list[float]:
            times = []
            for _ in range(stores):
                t0 = time.perf_counter()
                if not worker.store(next(seq), 1)[0]:
                    raise RuntimeError("STORE failed")
                times.append(time.perf_counter() - t0)
            return times

        try:
            phases = {"s3_up": phase()}
            moto.stop()
            phases["s3_stopped"] = phase()
            with HungEndpoint(moto.port):
                phases["s3_hung"] = phase()
            s3 = _status(f"http://127.0.0.1:{hp}")["storage_manager"]["l2_adapters"][0]
            row["breaker_opened"] = s3["breaker"]["times_opened"]
            row["server_alive"] = proc.poll() is None
        finally:
            worker.close()
        base = _percentile(phases["s3_up"], 0.99)
        for name, times in phases.items():
            row[f"{name}_p50_ms"] = round(_percentile(times, 0.5) * 1e3, 2)
            row[f"{name}_p99_ms"] = round(_percentile(times, 0.99) * 1e3, 2)
            if name != "s3_up":
                row[f"{name}_p99_ratio"] = round(_percentile(times, 0.99) / base, 3)
    finally:
        stop_process_group(proc)
        moto.stop()
    return row


def run() -> list[dict[str, Any]]:
    """Start moto, measure the adapter against raw boto3, then the server's prefetch against raw GETs."""
    from lmcache_plugin_s3.testing import MotoS3

    size = _env_int("LMCACHE_BENCH_S3_MIB", 32) * MIB
    count = _env_int("LMCACHE_BENCH_S3_OBJECTS", 16)
    repeats = _env_int("LMCACHE_BENCH_S3_REPEATS", 3)
    layers = _env_int("LMCACHE_BENCH_LAYERS", 8)
    chunks = _env_int("LMCACHE_BENCH_L2_CHUNKS", 32)
    common = {"cpus": os.cpu_count(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2), "s3_server": "moto"}
    with tempfile.TemporaryDirectory(prefix="lmcache-bench-s3-") as tmp, \
            MotoS3(log=Path(tmp) / "moto.log") as moto:
        rows = throughput(moto, size, count, repeats)
        rows.append(prefetch(moto, layers, chunks, repeats, count))
        rows.append(outage(Path(tmp), _env_int("LMCACHE_BENCH_S3_STORES", 200)))
    return [{**common, **row} for row in rows]


if __name__ == "__main__":
    for r in run():
        print(json.dumps(r))
