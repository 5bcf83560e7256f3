"""Acceptance: the *server* SIGKILLed mid-store leaves no partial object a lookup can hit; a restart recovers all.

A real ``python -m lmcache_core.cli`` runs with the fs L2 on ``tmp_path/l2``. This
process plays the vLLM worker: a CPU shared-memory KV cache big enough that each
chunk object is 8 MiB (8 layers of ``(2, blocks, 16, 8, 128)`` fp16), filled from
a deterministic pattern per (sequence, chunk, layer) so the expected bytes can be
recomputed after the crash. It stores sequences in a loop while the server's
write-behind copies the chunks to files; as soon as the server holds one of its
temp files open (it is inside an object write, watched through ``/proc/<pid>/fd``)
it is SIGKILLed. That kill usually truncates the temp file mid-``write``; should it
lose the race with the rename (no temp file left) the server is restarted on the
same directory and caught again, the last time stopped first to confirm the open
file, so some kill certainly interrupts an object write.

Then, with no server running: every visible ``*.data`` file is exactly one object
long and names a chunk that was stored. A new server on the same directory must
count exactly those files, remove the killed writer's temp files, answer LOOKUP
with the contiguous prefix of each sequence's present chunks (read from L2: L1
starts empty), and RETRIEVE the bytes that were stored.
"""

from __future__ import annotations

import json
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
from lmcache_core.keys import kv_rank_for_worker, try_parse_fs_file_name
from lmcache_core.testing import free_port, wait_http
from lmcache_core.transfer.client_kv import WorkerKVCache

CHUNK, BLOCK = 256, 16
BPC = CHUNK // BLOCK
LAYERS, HEADS, HEAD_DIM = 8, 8, 128
CHUNKS_PER_SEQ = 4
SEQ_BLOCKS = CHUNKS_PER_SEQ * BPC
SRC = list(range(SEQ_BLOCKS))  # the worker stores from these blocks...
DST = list(range(SEQ_BLOCKS, 2 * SEQ_BLOCKS))  # ...and retrieves into these
OBJ_BYTES = LAYERS * 2 * BPC * BLOCK * HEADS * HEAD_DIM * 2  # fp16: 8 MiB per chunk object
MAX_SEQS = 40  # per server lifetime: 40 x 4 x 8 MiB = 1.25 GiB: fits the 2 GiB L1, so nothing is evicted before it reaches L2
MODEL = "crash/server-model"
IID = 4242
TIME_LIMIT_S = 60.0
KILL_ATTEMPTS = 3

# One chunk's worth of one layer, as int16 bit patterns (fp16 NaNs would defeat torch.equal).
_BASE = (torch.arange(2 * BPC * BLOCK * HEADS * HEAD_DIM, dtype=torch.int32) % 32749).to(torch.int16) \
    .reshape(2, BPC, BLOCK, HEADS, HEAD_DIM)


def tokens_of(seq: int) -> list[int]:
    """Sequence ``seq``'s tokens: distinct across sequences, so no chunk is shared."""
    return [seq * 4096 + i for i in range(CHUNKS_PER_SEQ * CHUNK)]


def pattern(seq: int, chunk: int, layer: int) -> torch.Tensor:
    """The int16 contents of (sequence, chunk, layer): unique per triple (< 32768 offsets)."""
    return _BASE + ((seq * CHUNKS_PER_SEQ + chunk) * LAYERS + layer)


def fill_source(kv: WorkerKVCache, seq: int) -> None:
    """Write sequence ``seq``'s chunks into the SRC blocks."""
    for li, layer in enumerate(kv.layers):
        plane = layer.view(torch.int16)
        for c in range(CHUNKS_PER_SEQ):
            plane[:, SRC[c * BPC]:SRC[c * BPC] + BPC].copy_(pattern(seq, c, li))


def start_server(l2: Path, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """A server subprocess on free ports with the fs L2 on ``l2``: (process, zmq port, http port)."""
    zp, hp = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    cmd = [sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
           "--http-host", "127.0.0.1", "--http-port", str(hp), "--l1-size-gb", "2",
           "--worker-reap-timeout-seconds", "0", "--log-level", "WARNING",
           "--l2-adapter", json.dumps({"type": "fs", "base_path": str(l2)})]
    with open(log, "ab") as out:
        # Its own session: cleanup can signal the whole group without touching pytest.
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{hp}/healthcheck", proc, timeout_s=30)
    except BaseException:
        stop(proc)
        raise
    return proc, zp, hp


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a server we started (and its group), whatever state it is in."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def get_status(http_port: int) -> dict[str, Any]:
    """The server's ``GET /status`` document."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=10) as resp:
        return json.loads(resp.read())


def open_temp_files(pid: int, tmp_dir: Path) -> list[str]:
    """The server's open files inside the fs temp directory: non-empty while it is inside an object write."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except (FileNotFoundError, ProcessLookupError):
            continue  # closed meanwhile
        if target.startswith(f"{tmp_dir}/") and os.path.basename(target).startswith(".lmcs-"):
            found.append(target)
    return found


def data_files(l2: Path) -> dict[str, int]:
    """Visible object files (``*.data``) in ``l2`` and their sizes."""
    return {e.name: e.stat().st_size for e in os.scandir(l2) if e.name.endswith(".data") and e.is_file()}


def kill_inside_write(proc: subprocess.Popen[bytes], tmp_dir: Path, spin_s: float, confirm: bool) -> bool:
    """SIGKILL the server while it holds one of its temp files open; whether it was killed.

    Spins (bounded by ``spin_s``; the window is a few milliseconds inside a busy
    writer, so no sleep) until a temp file is open. Without ``confirm`` the kill
    follows at once: it usually lands inside ``write`` and leaves a truncated temp
    file, but it can lose the race with the close and rename (the caller sees no
    temp file left and tries again). With ``confirm`` the server is stopped first
    and killed only if it still holds the file: a stopped process cannot rename it,
    so the kill certainly interrupts an object write (left whole or empty, as a
    stop waits for the ``write`` call in progress to return).
    """
    until = time.monotonic() + spin_s
    while not open_temp_files(proc.pid, tmp_dir):
        if time.monotonic() > until:
            return False
    if confirm:
        os.kill(proc.pid, signal.SIGSTOP)
        os.waitpid(proc.pid, os.WUNTRACED)  # returns once it is stopped (not reaped)
        if not open_temp_files(proc.pid, tmp_dir):
            os.kill(proc.pid, signal.SIGCONT)
            return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return True


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to see the server's open files")
def test_server_sigkilled_mid_store_leaves_no_partial_object_and_restart_recovers_all(tmp_path: Path) -> None:
    t0 = time.monotonic()
    deadline = t0 + TIME_LIMIT_S - 15  # leave time for the restart and the checks
    l2, tmp_dir, log = tmp_path / "l2", tmp_path / "l2" / ".tmp", tmp_path / "server.log"
    hasher = TokenHasher(CHUNK)
    chunk_of: dict[bytes, tuple[int, int]] = {}  # chunk hash -> (sequence, chunk)
    kv = WorkerKVCache(LAYERS, (2, 2 * SEQ_BLOCKS, BLOCK, HEADS, HEAD_DIM))
    procs: list[subprocess.Popen[bytes]] = []
    clients: list[LMCacheClient] = []
    try:
        assert kv.descriptors()[0].descriptor.nbytes * LAYERS // (2 * CHUNKS_PER_SEQ) == OBJ_BYTES

        # -- phase 1: store until the write-behind is caught inside a write, then SIGKILL ----------------
        # Each attempt is one server lifetime on the same directory; one that lost the race (no temp
        # file left) is just an extra crash-and-recover. The last attempt stops the server to confirm.
        stored = 0
        leftovers: list[str] = []
        for attempt in range(KILL_ATTEMPTS):
            confirm = attempt == KILL_ATTEMPTS - 1
            proc, zp, _ = start_server(l2, log)
            procs.append(proc)
            assert tmp_dir.is_dir() and not list(tmp_dir.iterdir())
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
                # Kill only once some objects are complete (recovery must count them) and more are queued.
                if len(data_files(l2)) >= 2:
                    killed = kill_inside_write(proc, tmp_dir, 0.5, confirm)
            # Storing has stopped; the write-behind still drains the queue: keep trying while it does.
            while not killed and proc.poll() is None and time.monotonic() < deadline:
                killed = kill_inside_write(proc, tmp_dir, 0.5, confirm)
            assert killed, f"never caught the server inside an object write ({stored} sequences stored): " \
                           f"{log.read_text()[-2000:]}"
            client.close()
            clients.remove(client)
            leftovers = sorted(p.name for p in tmp_dir.iterdir())
            if leftovers:
                break
        # The write the kill interrupted left its temp file (never renamed); nothing else is in there.
        assert leftovers, f"no temp file left after {KILL_ATTEMPTS} kills"
        assert all(n.startswith(".lmcs-") and n.endswith(".tmp") for n in leftovers), leftovers
        assert all((tmp_dir / n).stat().st_size <= OBJ_BYTES for n in leftovers)

        # -- phase 2: the directory as the crash left it -------------------------------------------------
        files = data_files(l2)
        wrong = {n: s for n, s in files.items() if s != OBJ_BYTES}
        assert not wrong, f"partial objects visible under final names: {wrong}"
        present: set[tuple[int, int]] = set()
        for name in files:
            key = try_parse_fs_file_name(name)
            assert key is not None and key.model_name == MODEL and key.kv_rank == kv_rank_for_worker(1, 0), name
            assert key.chunk_hash in chunk_of, f"{name} is not a chunk this worker stored"
            present.add(chunk_of[key.chunk_hash])
        assert len(present) == len(files) >= 2

        # -- phase 3: restart on the same directory --------------------------------------------------------
        proc, zp, hp = start_server(l2, log)
        procs.append(proc)
        adapter = get_status(hp)["storage_manager"]["l2_adapters"][0]
        assert adapter["stored_object_count"] == len(files)
        assert adapter["stale_tmp_removed"] == len(leftovers)
        assert list(tmp_dir.iterdir()) == []  # the killed writer's temp files are gone
        assert data_files(l2) == files  # recovery removed no complete object
        client = LMCacheClient(f"tcp://127.0.0.1:{zp}", timeout_s=20)
        clients.append(client)
        client.register_kv_cache(IID, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})

        # Every sequence stored (and one never stored): hits are its contiguous prefix of present chunks.
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
                    assert not plane[:, DST[hits * BPC - 1] + 1:DST[-1] + 1].any()  # nothing past the hits
            client.end_session(rid)
        assert total_hits >= 1
        status = get_status(hp)
        assert status["lookup_locked_objects"] == 0
        assert status["storage_manager"]["l2_adapters"][0]["stored_object_count"] == len(files)
        assert time.monotonic() - t0 < TIME_LIMIT_S
    finally:
        for c in clients:
            c.close()
        for p in procs:
            stop(p)
        kv.close()
