"""L2 prefetch benchmark: LOOKUP of a 32-chunk prefix that is only in the FS L2, beside the raw file reads.

A real server runs as a subprocess with an FS L2 (``lmcache_plugin_fs``) in a
fresh temp directory (``tempfile``'s, i.e. on /tmp's file system). This process
plays a vLLM worker with a CPU shared-memory KV cache (default 32 layers of
``(2, NB, 16, 8, 128)`` fp16: 32 MiB chunk objects, so 32 chunks = 1 GiB). It

1. stores 32 chunks (8192 tokens) and waits, via ``GET /status``, until the
   write-behind has put every chunk into the L2 directory;
2. per repeat: clears L1, then times LOOKUP + QUERY_PREFETCH_STATUS polling
   until the hit count comes back (= the prefetch of every chunk from L2 into
   L1), then the RETRIEVE of the prefetched chunks into the worker's blocks
   (verified byte-equal afterwards, outside the timings);
3. per repeat, the baseline: reading the same files with plain
   ``open`` / ``readinto`` into preallocated, pre-touched buffers, one after
   another -- as the adapter does (one load task per request, sequential reads).

Each measurement runs twice per repeat: once with the page cache dropped first
(``sync`` + ``/proc/sys/vm/drop_caches``, needs root; the row says when it was
not possible) and once warm (files in the page cache). Rows give medians and
minima in ms, the ratio ours / raw, and GB/s (1e9 bytes).

Environment: ``LMCACHE_BENCH_LAYERS`` (32; object size = layers x 1 MiB),
``LMCACHE_BENCH_L2_CHUNKS`` (32), ``LMCACHE_BENCH_L2_REPEATS`` (3).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmcache_core.bench.datapath import (
    BLOCK,
    BPC,
    CHUNK,
    HEAD_DIM,
    HEADS,
)
from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.testing import free_port, stop_process_group, wait_http
from lmcache_core.transfer.client_kv import WorkerKVCache

MODEL = "bench-l2-model"
IID = 31338
SEED = 20240
GIB = 1 << 30
FLUSH_TIMEOUT_S = 120.0


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _fill(layer: torch.Tensor, index: int) -> None:
    """Deterministic random bits per layer, so the expected bytes can be regenerated instead of kept."""
    gen = torch.Generator().manual_seed(SEED + index)
    layer.view(torch.int16).random_(generator=gen)


def _matches(kv: WorkerKVCache) -> bool:
    """Every layer holds exactly what :func:`_fill` wrote (compared as integers: random bits may be NaNs)."""
    for i, layer in enumerate(kv.layers):
        expected = torch.empty_like(layer)
        _fill(expected, i)
        if not torch.equal(layer.view(torch.int16), expected.view(torch.int16)):
            return False
    return True


def drop_page_cache() -> str | None:
    """Write back dirty pages and drop the clean page cache; an error message when not permitted."""
    os.sync()  # dirty pages are never dropped: the write-behind's files must reach the disk first
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def fs_type(path: str) -> str:
    """The file-system type of the mount holding ``path`` (longest mount-point prefix in /proc/mounts)."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            inside = len(parts) >= 3 and (real == parts[1] or real.startswith(parts[1].rstrip("/") + "/"))
            if inside and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def raw_read(paths: list[str], bufs: list[memoryview]) -> float:
    """Seconds to read each file fully into its preallocated buffer with ``open`` / ``readinto``."""
    t0 = time.perf_counter()
    for path, buf in zip(paths, bufs):
        with open(path, "rb", buffering=0) as f:
            done = 0
            while done < buf.nbytes:
                n = f.readinto(buf[done:])
                if not n:
                    raise OSError(f"short read of {path}: {done} of {buf.nbytes} bytes")
                done += n
    return time.perf_counter() - t0


def _status(http: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{http}/status", timeout=10) as resp:
        return json.loads(resp.read())


def wait_write_behind(http: str, objects: int) -> dict[str, Any]:
    """Poll ``/status`` until ``objects`` keys are stored in L2 and nothing is queued or in flight.

    Polling (bounded in time) is the only way to observe another process; the
    write-behind thread drains every ~20 ms.
    """
    deadline = time.monotonic() + FLUSH_TIMEOUT_S
    while True:
        sc = _status(http)["storage_manager"]["store_controller"]
        if sc["stored_keys"] >= objects and sc["pending_keys_count"] == 0 and sc["in_flight_key_count"] == 0:
            return sc
        if sc["failed_keys"] or time.monotonic() > deadline:
            raise RuntimeError(f"write-behind did not finish: {sc}")
        time.sleep(0.02)


def _summary(times_s: list[float], nbytes: int, prefix: str) -> dict[str, Any]:
    med = statistics.median(times_s)
    return {f"{prefix}_ms": round(med * 1e3, 1), f"{prefix}_ms_min": round(min(times_s) * 1e3, 1),
            f"{prefix}_gbps": round(nbytes / med / 1e9, 3),
            f"{prefix}_ms_samples": [round(t * 1e3, 1) for t in times_s]}


def measure(client: LMCacheClient, http: str, kv: WorkerKVCache, tokens: list[int], paths: list[str],
            bufs: list[memoryview], chunks: int, repeats: int, cold: bool) -> dict[str, Any]:
    """``repeats`` x (clear L1, [drop cache], prefetch by LOOKUP, RETRIEVE, verify; [drop cache], raw read)."""
    blocks = [list(range(chunks * BPC))]
    prefetch_s: list[float] = []
    retrieve_s: list[float] = []
    raw_s: list[float] = []
    ok = True
    prep: Callable[[], str | None] = drop_page_cache if cold else (lambda: None)
    for r in range(repeats):
        rid = f"{'cold' if cold else 'warm'}-{r}"
        client.clear(True)
        l1 = _status(http)["storage_manager"]["l1_manager"]
        ok &= l1["total_object_count"] == 0  # nothing left in L1: the lookup must load every chunk from L2
        for layer in kv.layers:
            layer.zero_()  # the retrieve must write every byte back
        if (err := prep()) is not None:
            raise RuntimeError(err)
        t0 = time.perf_counter()
        hits = client.lookup(make_key(tokens, rid, model_name=MODEL), timeout_s=FLUSH_TIMEOUT_S)
        prefetch_s.append(time.perf_counter() - t0)
        ok &= hits == chunks
        t0 = time.perf_counter()
        ok &= client.retrieve(make_key(tokens, rid, model_name=MODEL, worker_id=0), IID, blocks)[1]
        retrieve_s.append(time.perf_counter() - t0)
        client.end_session(rid)
        ok &= _matches(kv)
        if (err := prep()) is not None:
            raise RuntimeError(err)
        raw_s.append(raw_read(paths, bufs))
    nbytes = sum(b.nbytes for b in bufs)
    ours = _summary(prefetch_s, nbytes, "prefetch")
    raw = _summary(raw_s, nbytes, "raw_read")
    return {"ok": bool(ok), "page_cache": "cold (sync + drop_caches before each)" if cold else "warm",
            **ours, **raw, "prefetch_to_raw_ratio": round(ours["prefetch_ms"] / raw["raw_read_ms"], 3),
            **_summary(retrieve_s, nbytes, "retrieve_after_prefetch")}


def run() -> list[dict[str, Any]]:
    """Start a server with an FS L2 in a temp dir, store, flush, then time prefetches beside raw reads."""
    layers = _env_int("LMCACHE_BENCH_LAYERS", 32)
    chunks = _env_int("LMCACHE_BENCH_L2_CHUNKS", 32)
    repeats = _env_int("LMCACHE_BENCH_L2_REPEATS", 3)
    kv = WorkerKVCache(layers, (2, chunks * BPC, BLOCK, HEADS, HEAD_DIM))
    obj_bytes = sum(layer[:, :BPC].numel() * layer.element_size() for layer in kv.layers)
    total = chunks * obj_bytes
    # L1 holds the stored copy, then the prefetched temporaries: 3x the prefix (3 GiB at the defaults).
    l1_gb = max(1, math.ceil(3 * total / GIB))
    tmp = tempfile.mkdtemp(prefix="lmcache-bench-l2-")
    base_path = os.path.join(tmp, "l2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    base = {"bench": "l2_prefetch", "server": "lmcache-server", "l2": "fs", "fs_type": fs_type(tmp),
            "layers": layers, "heads": HEADS, "head_dim": HEAD_DIM, "dtype": "float16", "block_size": BLOCK,
            "chunk_tokens": CHUNK, "chunks": chunks, "tokens": chunks * CHUNK, "object_bytes": obj_bytes,
            "prefix_bytes": total, "l1_size_gb": l1_gb, "repeats": repeats, "cpus": os.cpu_count(),
            # Other load on the host skews the server's OpenMP copies (RETRIEVE) most: record it.
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
    rows: list[dict[str, Any]] = []
    proc = None
    try:
        for i, layer in enumerate(kv.layers):
            _fill(layer, i)
        zp, hp = free_port(), free_port()
        http = f"http://127.0.0.1:{hp}"
        proc = subprocess.Popen([sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
                                 "--http-port", str(hp), "--l1-size-gb", str(l1_gb), "--log-level", "WARNING",
                                 "--l2-adapter", json.dumps({"type": "fs", "base_path": base_path})],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        wait_http(f"{http}/healthcheck", proc, timeout_s=120)
        client = LMCacheClient(f"tcp://127.0.0.1:{zp}", timeout_s=300)
        try:
            client.register_kv_cache(IID, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
            tokens = [(i * 7919 + 13) % 50000 for i in range(chunks * CHUNK)]
            t0 = time.perf_counter()
            stored = client.store(make_key(tokens, "w", model_name=MODEL, worker_id=0), IID,
                                  [list(range(chunks * BPC))])[1]
            client.end_session("w")
            store_s = time.perf_counter() - t0
            sc = wait_write_behind(http, chunks)
            flush_s = time.perf_counter() - t0
            paths = sorted(str(p) for p in Path(base_path).glob("*.data"))
            if not stored or len(paths) != chunks or any(os.path.getsize(p) != obj_bytes for p in paths):
                raise RuntimeError(f"expected {chunks} files of {obj_bytes} B in {base_path}, found {len(paths)}")
            # Preallocated and touched, so the baseline pays no page faults (L1 reuses touched memory too).
            bufs = [memoryview(bytearray(b"\x01") * obj_bytes) for _ in paths]  # written: every page touched
            drop_err = drop_page_cache()
            common = {**base, "store_ms": round(store_s * 1e3, 1),
                      "write_behind_done_ms": round(flush_s * 1e3, 1), "l2_stored_keys": sc["stored_keys"]}
            if drop_err is None:
                rows.append({**common, **measure(client, http, kv, tokens, paths, bufs, chunks, repeats, True)})
            else:
                rows.append({**common, "page_cache": "cold", "error": f"cannot drop the page cache: {drop_err}"})
            rows.append({**common, **measure(client, http, kv, tokens, paths, bufs, chunks, repeats, False)})
            for row in rows:
                row["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
            pc = _status(http)["storage_manager"]["prefetch_controller"]
            for row in rows:
                row["prefetch_controller_loaded_chunks"] = pc["loaded_chunks"]
            client.unregister_kv_cache(IID)
        finally:
            client.close()
    finally:
        if proc is not None:
            stop_process_group(proc)
        kv.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for r in run():
        print(json.dumps(r))
