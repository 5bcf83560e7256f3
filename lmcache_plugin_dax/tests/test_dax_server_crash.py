"""Acceptance: a server SIGKILLed while it writes chunks to a persistent DAX L2 restarts with every complete chunk.

A real ``python -m lmcache_core.cli`` runs with a ``dax`` L2 (``persist_enabled: true``) on a
file standing in for the device. This process plays the vLLM worker (as the fs crash test):
a CPU shared-memory KV cache whose chunk objects are 4 MiB, filled from a pattern per
(sequence, chunk, layer) so the bytes can be recomputed. It stores sequences while the
server's write-behind copies chunks into DAX slots, polls ``GET /reconfigure/dax/status``
until a slot write is in flight, and SIGKILLs the server at once. Reading the device file
afterwards must show the kill inside a write: a slot with payload bytes but no valid header
(otherwise the server is restarted on the same file and caught again, a bounded number of
times).

Then the device file, as the crash left it, is read with the slot format: every valid slot
holds a whole chunk this worker stored. A new server on the same file must
count exactly those chunks, answer LOOKUP with each sequence's contiguous prefix of present
chunks (from L2: L1 starts empty) and RETRIEVE their bytes; a torn slot never hits.
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch

from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.hashing import TokenHasher
from lmcache_core.testing import free_port, wait_http
from lmcache_core.transfer.client_kv import WorkerKVCache
from lmcache_plugin_dax import layout

CHUNK, BLOCK = 256, 16
BPC = CHUNK // BLOCK
LAYERS, HEADS, HEAD_DIM = 4, 8, 128
CHUNKS_PER_SEQ = 4
SEQ_BLOCKS = CHUNKS_PER_SEQ * BPC
SRC = list(range(SEQ_BLOCKS))
DST = list(range(SEQ_BLOCKS, 2 * SEQ_BLOCKS))
OBJ_BYTES = LAYERS * 2 * BPC * BLOCK * HEADS * HEAD_DIM * 2  # fp16: 4 MiB per chunk object
SLOT_BYTES = OBJ_BYTES + layout.HEADER_BYTES
SLOTS = 96
DEVICE_BYTES = SLOTS * SLOT_BYTES  # a sparse file: only written slots take space
MAX_SEQS = 8  # per server lifetime: 32 objects
MODEL = "crash/dax-model"
IID = 4343
TIME_LIMIT_S = 90.0
KILL_ATTEMPTS = 4

_BASE = (torch.arange(2 * BPC * BLOCK * HEADS * HEAD_DIM, dtype=torch.int32) % 32749).to(torch.int16) \
    .reshape(2, BPC, BLOCK, HEADS, HEAD_DIM)


def tokens_of(seq: int) -> list[int]:
    return [seq * 4096 + i for i in range(CHUNKS_PER_SEQ * CHUNK)]


def pattern(seq: int, chunk: int, layer: int) -> torch.Tensor:
    return _BASE + ((seq * CHUNKS_PER_SEQ + chunk) * LAYERS + layer)


def fill_source(kv: WorkerKVCache, seq: int) -> None:
    for li, layer in enumerate(kv.layers):
        plane = layer.view(torch.int16)
        for c in range(CHUNKS_PER_SEQ):
            plane[:, SRC[c * BPC]:SRC[c * BPC] + BPC].copy_(pattern(seq, c, li))


def start_server(device: Path, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    zp, hp = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    adapter = {"type": "dax", "device_path": str(device), "max_dax_size_gb": DEVICE_BYTES / (1 << 30),
               "slot_bytes": SLOT_BYTES, "persist_enabled": True}
    cmd = [sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
           "--http-host", "127.0.0.1", "--http-port", str(hp), "--l1-size-gb", "1",
           "--worker-reap-timeout-seconds", "0", "--log-level", "WARNING", "--l2-adapter", json.dumps(adapter)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{hp}/healthcheck", proc, timeout_s=60)
    except BaseException:
        stop(proc)
        raise
    return proc, zp, hp


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def writing(http_port: int) -> bool:
    """Whether the server is inside a slot write right now, with at least two slots already committed.

    (Killing during the very first write would leave one valid slot or none, too few for the
    checks below to say anything.)
    """
    try:
        doc = get_json(f"http://127.0.0.1:{http_port}/reconfigure/dax/status")
    except OSError:
        return False
    devices = doc["adapters"][0]["status"]["devices"]
    return any(d["inflight_store_count"] for d in devices) and sum(d["live_slot_count"] for d in devices) >= 2


def kill_inside_write(proc: subprocess.Popen[bytes], http_port: int, spin_s: float) -> bool:
    """SIGKILL the server as soon as its status shows a slot write in flight; whether it was killed."""
    until = time.monotonic() + spin_s
    while not writing(http_port):
        if time.monotonic() > until or proc.poll() is not None:
            return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return True


def read_device(device: Path) -> tuple[list[layout.SlotRecord], list[int], mmap.mmap]:
    """(valid slots, torn slots: payload bytes but no valid header, the mapping); no server is running."""
    fd = os.open(device, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, DEVICE_BYTES, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    view = memoryview(mm)
    valid, torn = [], []
    for s in range(SLOTS):
        record = layout.read_slot(view, s, SLOT_BYTES)
        if record is not None:
            valid.append(record)
        elif any(view[s * SLOT_BYTES + layout.HEADER_BYTES:s * SLOT_BYTES + layout.HEADER_BYTES + 65536]):
            torn.append(s)
    view.release()
    return valid, torn, mm


@pytest.mark.slow
def test_server_sigkilled_mid_write_restarts_with_every_complete_chunk(tmp_path: Path) -> None:
    t0 = time.monotonic()
    deadline = t0 + TIME_LIMIT_S - 30
    device, log = tmp_path / "dax0.0", tmp_path / "server.log"
    with open(device, "wb") as f:
        f.truncate(DEVICE_BYTES)
    hasher = TokenHasher(CHUNK)
    chunk_of: dict[bytes, tuple[int, int]] = {}
    kv = WorkerKVCache(LAYERS, (2, 2 * SEQ_BLOCKS, BLOCK, HEADS, HEAD_DIM))
    procs: list[subprocess.Popen[bytes]] = []
    clients: list[LMCacheClient] = []
    try:
        assert kv.descriptors()[0].descriptor.nbytes * LAYERS // (2 * CHUNKS_PER_SEQ) == OBJ_BYTES
        stored = 0
        torn: list[int] = []
        for _ in range(KILL_ATTEMPTS):
            proc, zp, hp = start_server(device, log)
            procs.append(proc)
            client = LMCacheClient(f"tcp://127.0.0.1:{zp}", timeout_s=20)
            clients.append(client)
            client.register_kv_cache(IID, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
            killed = False
            first = stored
            while not killed and stored - first < MAX_SEQS and time.monotonic() < deadline:
                fill_source(kv, stored)
                tokens = tokens_of(stored)
                for c, h in enumerate(hasher.hash_chunks(tokens)):
                    chunk_of[h] = (stored, c)
                rid = f"w{stored}"
                assert client.store(make_key(tokens, rid, model_name=MODEL, worker_id=0), IID, [SRC]) == \
                    (b"", True)
                client.end_session(rid)
                stored += 1
                if stored - first >= 2:
                    killed = kill_inside_write(proc, hp, 0.3)
            while not killed and proc.poll() is None and time.monotonic() < deadline:
                killed = kill_inside_write(proc, hp, 0.5)
            assert killed, f"never caught the server inside a slot write: {log.read_text()[-2000:]}"
            client.close()
            clients.remove(client)
            _, torn, mm = read_device(device)
            mm.close()
            if torn:
                break
        assert torn, f"no kill of {KILL_ATTEMPTS} landed inside a slot write"

        # -- the device as the crash left it: every valid slot is a whole chunk this worker stored ----
        # (its bytes are checked end to end below: RETRIEVE after the restart)
        valid, torn, mm = read_device(device)
        mm.close()
        present: set[tuple[int, int]] = set()
        for record in valid:
            assert record.key.model_name == MODEL and record.payload_len == OBJ_BYTES
            assert record.key.chunk_hash in chunk_of
            present.add(chunk_of[record.key.chunk_hash])
        torn_chunks = len(torn)
        assert torn_chunks >= 1
        assert len(present) == len(valid) >= 2

        # -- restart on the same device -----------------------------------------------------------
        proc, zp, hp = start_server(device, log)
        procs.append(proc)
        status = get_json(f"http://127.0.0.1:{hp}/status")
        assert status["storage_manager"]["l2_adapters"][0]["stored_object_count"] == len(valid)
        client = LMCacheClient(f"tcp://127.0.0.1:{zp}", timeout_s=20)
        clients.append(client)
        client.register_kv_cache(IID, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
        total_hits = 0
        for seq in range(stored + 1):
            expected = 0
            while expected < CHUNKS_PER_SEQ and (seq, expected) in present:
                expected += 1
            tokens, rid = tokens_of(seq), f"r{seq}"
            hits = client.lookup(make_key(tokens, rid, model_name=MODEL), timeout_s=20)
            assert hits == expected, f"sequence {seq}: {hits} hits, {expected} chunks present in a row"
            total_hits += hits
            if hits:
                for layer in kv.layers:
                    layer[:, DST[0]:DST[-1] + 1].zero_()
                key = make_key(tokens, rid, model_name=MODEL, worker_id=0, end=hits * CHUNK)
                assert client.retrieve(key, IID, [DST[:hits * BPC]]) == (b"", True)
                for li, layer in enumerate(kv.layers):
                    plane = layer.view(torch.int16)
                    for c in range(hits):
                        got = plane[:, DST[c * BPC]:DST[c * BPC] + BPC]
                        assert torch.equal(got, pattern(seq, c, li)), f"sequence {seq} chunk {c} layer {li}"
            client.end_session(rid)
        assert total_hits >= 1
        assert get_json(f"http://127.0.0.1:{hp}/status")["lookup_locked_objects"] == 0
        assert time.monotonic() - t0 < TIME_LIMIT_S
    finally:
        for c in clients:
            c.close()
        for p in procs:
            stop(p)
        kv.close()
