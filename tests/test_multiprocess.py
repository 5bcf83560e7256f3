"""Acceptance: four worker processes share one real ``lmcache-server``; a SIGKILLed worker's locks are reaped.

The server is ``python -m lmcache_core.cli`` in its own process (short reap
timeout). Each worker is this file run as a script (``--worker``): its own
process, its own KV cache in POSIX shared memory, its own ``instance_id``, its
own ZMQ client (so its LOOKUPs, PINGs and transfers come from one connection).
The workers store, look up and retrieve overlapping token sequences (common
prefixes, identical shared sequences, per-worker suffixes, an extension that
hits a stored prefix and stores its tail) at the same time, and check every
retrieved block: a chunk's KV bytes are a pure function of the tokens up to the
end of that chunk (:func:`expected_chunk`), so whichever worker stored a chunk,
every reader must get exactly those bytes.

One worker (the victim) finishes a pass, then LOOKUPs three of its sequences
(read locks, ``num_kv_readers=1``, under its own request ids) and is SIGKILLed
before it can RETRIEVE, FREE_LOOKUP_LOCKS or END_SESSION. While the other three
keep working, the test polls ``GET /status`` (bounded) until the reaper has
dropped the victim, then, with the survivors paused at a request boundary (so
they hold nothing), requires ``lookup_locked_objects`` and
``storage_manager.l1_manager.read_locked_count`` to reach 0. The survivors then
resume, verify every sequence (chunks stored by the others included) and exit
cleanly; nothing they did may leak a lock or a session.

Communication with a worker: JSON event lines on its stdout (prefixed with
:data:`MARK`), one-word commands on its stdin. Every wait has a deadline; the
server, the workers and their shared-memory segments are cleaned up on failure.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.testing import free_port
from lmcache_core.transfer.client_kv import WorkerKVCache
from lmcache_core.transport.wire import Op

CHUNK = 256  # the server's default --chunk-size
BLOCK = 16
BPC = CHUNK // BLOCK
LAYERS, HEADS, HEAD_SIZE = 2, 2, 8
MAX_CHUNKS = 4  # the longest sequence
# Block 0 is the null block id; region A holds what a worker stores, region B receives retrieves.
REGION_A = BPC
REGION_B = REGION_A + MAX_CHUNKS * BPC
NUM_BLOCKS = REGION_B + MAX_CHUNKS * BPC
KV_SHAPE = (2, NUM_BLOCKS, BLOCK, HEADS, HEAD_SIZE)  # NHD
SENTINEL = 4096.0  # outside expected_chunk's value range: an unwritten block cannot pass as data
MODEL = "mp-accept-model"

NUM_WORKERS = 4
VICTIM = 2
REAP_TIMEOUT_S = 3.0
GRACE_S = 6.0
PING_INTERVAL_S = 0.2
TEST_BUDGET_S = 55.0
WORKER_LIFETIME_S = 60.0  # a worker gives up on its own after this (the parent normally ends it sooner)
MARK = "@@lmcache-mp "


class LocksNotReleased(AssertionError):
    """The reaper dropped the killed worker but the read locks its LOOKUPs took are still held."""


# -- the workload (computed identically by the parent and by every worker) ------------------------


def _tokens(tag: int, n_chunks: int) -> list[int]:
    rng = random.Random(tag)
    return [rng.randrange(1, 50_000) for _ in range(n_chunks * CHUNK)]


PREFIXES = [_tokens(101, 1), _tokens(102, 2), _tokens(103, 1)]
SHARED = [PREFIXES[0] + _tokens(201, 2), PREFIXES[1] + _tokens(202, 1)]  # identical in every worker


def worker_sequences(wid: int) -> list[list[int]]:
    """One worker's pass: own suffixes on the common prefixes, the shared sequences, and an extension."""
    own = [PREFIXES[k] + _tokens(1000 + 10 * wid + k, 1 + (k + wid) % 2) for k in range(3)]
    extension = own[0] + _tokens(1100 + wid, 1)  # after own[0]: a partial hit, then a store from start > 0
    seqs = [own[0], SHARED[0], own[1], extension, SHARED[1], own[2]]
    assert all(len(s) % CHUNK == 0 and len(s) // CHUNK <= MAX_CHUNKS for s in seqs)
    return seqs


def all_sequences() -> list[list[int]]:
    """Every distinct sequence any worker stores, in a stable order."""
    seen: dict[tuple[int, ...], list[int]] = {}
    for wid in range(NUM_WORKERS):
        for s in worker_sequences(wid):
            seen.setdefault(tuple(s), s)
    return list(seen.values())


def chunk_id(tokens: list[int], i: int) -> bytes:
    """Identity of chunk ``i`` of ``tokens``: its whole prefix (what the server's chained hash keys on)."""
    return hashlib.blake2b(array("I", tokens[:(i + 1) * CHUNK]).tobytes(), digest_size=16).digest()


def expected_chunk(tokens: list[int], i: int) -> torch.Tensor:
    """Chunk ``i``'s KV, ``(LAYERS, 2, BPC, BLOCK, HEADS, HEAD_SIZE)`` fp16: a pure function of its prefix.

    Integers in [-1024, 1024) are exact in fp16, so equality is bitwise.
    """
    seed = int.from_bytes(chunk_id(tokens, i)[:8], "little") >> 1
    g = torch.Generator().manual_seed(seed)
    shape = (LAYERS, 2, BPC, BLOCK, HEADS, HEAD_SIZE)
    return torch.randint(-1024, 1024, shape, generator=g, dtype=torch.int32).to(torch.float16)


def instance_id(wid: int) -> int:
    return 0x5EED_0000_0000_0000 + wid


# -- the worker process ----------------------------------------------------------------------------


class WorkerProcess:
    """One engine worker: registers a shared-memory KV cache and drives the data path."""

    def __init__(self, wid: int, port: int, deadline: float) -> None:
        self.wid = wid
        self.iid = instance_id(wid)
        self.deadline = deadline
        self.client = LMCacheClient(f"tcp://127.0.0.1:{port}", timeout_s=10)
        self.kv = WorkerKVCache(LAYERS, KV_SHAPE)
        self.seqs = worker_sequences(wid)
        self.stats: Counter[str] = Counter()
        self.mine: set[bytes] = set()  # chunks this worker stored itself
        self.commands: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self.heartbeat_error: BaseException | None = None
        threading.Thread(target=self._read_commands, name="commands", daemon=True).start()

    # -- plumbing ----------------------------------------------------------------------------

    @staticmethod
    def emit(kind: str, **fields: Any) -> None:
        sys.stdout.write(MARK + json.dumps({"kind": kind, **fields}) + "\n")
        sys.stdout.flush()

    def _read_commands(self) -> None:
        for line in sys.stdin:
            self.commands.put(line.strip())
        self.commands.put("eof")  # the parent is gone: stop

    def _heartbeat(self) -> None:
        # As vLLM's worker does (every 10 s there): keeps this registration alive while it idles.
        while not self._stop.wait(PING_INTERVAL_S):
            try:
                self.client.ping(self.iid)
            except BaseException as exc:  # noqa: BLE001 - reported by the main loop
                self.heartbeat_error = exc
                return

    def _check(self) -> None:
        if self.heartbeat_error is not None:
            raise RuntimeError(f"heartbeat failed: {self.heartbeat_error!r}")
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"worker {self.wid} ran past its deadline")

    def next_command(self, block: bool) -> str | None:
        try:
            if not block:
                return self.commands.get_nowait()
            return self.commands.get(timeout=max(self.deadline - time.monotonic(), 0.01))
        except queue.Empty:
            if block:
                raise TimeoutError(f"worker {self.wid}: no command before its deadline") from None
            return None

    # -- KV regions ----------------------------------------------------------------------------

    def write_chunk(self, first_block: int, chunk: torch.Tensor) -> None:
        for layer, data in zip(self.kv.layers, chunk):
            layer[:, first_block:first_block + BPC] = data

    def read_chunk(self, first_block: int) -> torch.Tensor:
        return torch.stack([layer[:, first_block:first_block + BPC] for layer in self.kv.layers])

    # -- the data path ---------------------------------------------------------------------------

    def start(self) -> None:
        self.client.register_kv_cache(self.iid, self.kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
        assert self.client.ping(self.iid) is True
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()

    def lookup(self, tokens: list[int], rid: str) -> int:
        """LOOKUP (one reader), then QUERY_PREFETCH_STATUS until it answers (bounded)."""
        self.client.call(Op.LOOKUP, make_key(tokens, rid, model_name=MODEL), 1)
        for _ in range(10_000):
            hits = self.client.call(Op.QUERY_PREFETCH_STATUS, rid)
            if hits is not None:
                self.stats["lookups"] += 1
                return int(hits)
            self._check()
        raise TimeoutError(f"lookup {rid} never answered")

    def round(self, tokens: list[int], rid: str, *, must_hit_all: bool = False) -> None:
        """Lookup; retrieve and verify the hit prefix; store the rest; end the session."""
        self._check()
        n = len(tokens) // CHUNK
        hits = self.lookup(tokens, rid)
        assert 0 <= hits <= n, f"{rid}: {hits} hits for {n} chunks"
        assert not must_hit_all or hits == n, f"{rid}: {hits} hits, expected all {n} chunks"
        if hits:
            self.kv_fill(REGION_B, hits, SENTINEL)
            key = make_key(tokens, rid, model_name=MODEL, worker_id=0, end=hits * CHUNK)
            blocks = [list(range(REGION_B, REGION_B + hits * BPC))]
            assert self.client.retrieve(key, self.iid, blocks) == (b"", True), f"{rid}: retrieve failed"
            for i in range(hits):
                got, want = self.read_chunk(REGION_B + i * BPC), expected_chunk(tokens, i)
                if not torch.equal(got, want):
                    bad = int((got != want).sum())
                    raise AssertionError(f"{rid}: chunk {i} retrieved wrong bytes ({bad} of {want.numel()} differ)")
                self.stats["chunks_verified"] += 1
                if chunk_id(tokens, i) not in self.mine:
                    self.stats["foreign_chunks_verified"] += 1  # stored by another process
        if hits < n:
            for i in range(hits, n):
                self.write_chunk(REGION_A + i * BPC, expected_chunk(tokens, i))
            key = make_key(tokens, rid, model_name=MODEL, worker_id=0, start=hits * CHUNK, end=n * CHUNK)
            blocks = [list(range(REGION_A + hits * BPC, REGION_A + n * BPC))]
            assert self.client.store(key, self.iid, blocks) == (b"", True), f"{rid}: store failed"
            self.mine.update(chunk_id(tokens, i) for i in range(hits, n))
            self.stats["chunks_stored"] += n - hits
        self.client.end_session(rid)
        self.stats["rounds"] += 1

    def kv_fill(self, first_block: int, n_chunks: int, value: float) -> None:
        for layer in self.kv.layers:
            layer[:, first_block:first_block + n_chunks * BPC] = value

    # -- roles ---------------------------------------------------------------------------------

    def run_victim(self) -> None:
        """One pass, then lookups whose locks only RETRIEVE/END_SESSION would release; then wait to be killed."""
        for idx, tokens in enumerate(self.seqs):
            self.round(tokens, f"w{self.wid}-c0-{idx}")
        leaks = []
        for idx in range(3):
            rid = f"w{self.wid}-leak-{idx}"
            hits = self.lookup(self.seqs[idx], rid)
            assert hits == len(self.seqs[idx]) // CHUNK, f"{rid}: only {hits} hits on a sequence just stored"
            leaks.append({"request_id": rid, "seq": idx, "hits": hits})
        self.emit("locked", leaks=leaks)
        while self.next_command(block=True) not in ("eof",):
            pass  # the parent SIGKILLs this process; nothing it sends makes it release anything

    def run_survivor(self) -> None:
        """Passes until told to finish (pausing at request boundaries on request), then verify everything."""
        cycle = 0
        while True:
            for idx, tokens in enumerate(self.seqs):
                self.round(tokens, f"w{self.wid}-c{cycle}-{idx}")
                cmd = self.next_command(block=False)
                while cmd == "pause":  # between requests: this worker holds no lock and no session now
                    self.emit("paused", stats=dict(self.stats))
                    cmd = self.next_command(block=True)
                if cmd == "finish":
                    self.finish()
                    return
                if cmd == "eof":
                    raise RuntimeError("parent went away")
            cycle += 1
            self.emit("cycle", n=cycle)

    def finish(self) -> None:
        for k, tokens in enumerate(all_sequences()):
            self.round(tokens, f"w{self.wid}-final-{k}", must_hit_all=True)
        self._stop.set()
        self.client.unregister_kv_cache(self.iid)
        self.emit("result", stats=dict(self.stats))

    def close(self) -> None:
        self._stop.set()
        self.client.close()
        self.kv.close()


def worker_main(wid: int, port: int, role: str) -> int:
    """Entry point of a worker process (``python test_multiprocess.py --worker WID PORT ROLE``)."""
    worker = WorkerProcess(wid, port, time.monotonic() + WORKER_LIFETIME_S)
    try:
        worker.start()
        shm = [d.descriptor.shm_name for d in worker.kv.descriptors()]
        worker.emit("ready", iid=worker.iid, pid=os.getpid(), shm=shm)
        if worker.next_command(block=True) != "go":
            return 1
        if role == "victim":
            worker.run_victim()
        else:
            worker.run_survivor()
        return 0
    except BaseException:  # noqa: BLE001 - everything goes to the parent
        worker.emit("error", traceback=traceback.format_exc())
        return 1
    finally:
        worker.close()


# -- the parent side -------------------------------------------------------------------------------


class WorkerHandle:
    """The parent's view of one worker process: its events, its commands, its segments."""

    def __init__(self, wid: int, role: str, port: int, log_dir: Path) -> None:
        self.wid = wid
        self.role = role
        self.iid = instance_id(wid)
        self.log = log_dir / f"worker{wid}.log"
        self._err = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(wid), str(port), role],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True, bufsize=1,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.cycles = 0
        self.shm: list[str] = []
        threading.Thread(target=self._read_events, name=f"events-{wid}", daemon=True).start()

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self.events.put(json.loads(line[len(MARK):]))
        self.events.put({"kind": "eof"})

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def expect(self, wanted: Callable[[dict[str, Any]], bool] | str, deadline: float) -> dict[str, Any]:
        """The next event ``wanted`` accepts (a kind, or a predicate); fails on error, exit or deadline."""
        accept = (lambda ev: ev["kind"] == wanted) if isinstance(wanted, str) else wanted
        while True:
            try:
                ev = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"worker {self.wid}: no {wanted!r} event in time\n{self.log_tail()}") from None
            if ev["kind"] == "cycle":
                self.cycles = ev["n"]
            if ev["kind"] == "error":
                raise AssertionError(f"worker {self.wid} failed:\n{ev['traceback']}")
            if ev["kind"] == "eof":
                raise AssertionError(f"worker {self.wid} exited (rc {self.proc.poll()})\n{self.log_tail()}")
            if accept(ev):
                return ev

    def log_tail(self) -> str:
        self._err.flush()
        return self.log.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL
        self.proc.wait(timeout=10)

    def cleanup(self) -> None:
        """Kill it if it still runs; unlink whatever segments it left (a SIGKILLed worker unlinks nothing)."""
        try:
            self.kill()
        finally:
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
            self._err.close()
            names = {f"/dev/shm/{n.lstrip('/')}" for n in self.shm}
            names.update(glob.glob(f"/dev/shm/lmcache_srv_{self.proc.pid}_*"))
            for path in names:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


class ServerProcess:
    """A real ``lmcache-server`` process with a short worker reap timeout."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.http_port = free_port()
        self.log = log_dir / "server.log"
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(self.port),
             "--http-host", "127.0.0.1", "--http-port", str(self.http_port),
             "--worker-reap-timeout-seconds", str(REAP_TIMEOUT_S),
             "--worker-registration-grace-seconds", str(GRACE_S),
             "--l1-size-gb", "0.5", "--l1-read-ttl-seconds", "600",  # the read TTL must not be what frees locks
             "--max-workers", "4", "--log-level", "INFO"],
            stdout=self._out, stderr=subprocess.STDOUT,
        )

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def status(self) -> dict[str, Any]:
        code, doc = self.get("/status")
        assert code == 200, f"GET /status answered {code}"
        return doc

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"lmcache-server exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                if self.get("/healthcheck", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)  # polling a process that is starting up: there is nothing to wait on
        raise AssertionError(f"lmcache-server not healthy in time\n{self.log_tail()}")

    def poll_status(self, done: Callable[[dict[str, Any]], bool], deadline: float) -> tuple[bool, dict[str, Any]]:
        """Poll ``/status`` until ``done(status)`` or the deadline; returns (done, last status)."""
        while True:
            st = self.status()
            if done(st):
                return True, st
            if time.monotonic() >= deadline:
                return False, st
            time.sleep(0.05)

    def log_tail(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            self._out.close()


@contextmanager
def cluster(tmp_path: Path, deadline: float) -> Iterator[tuple[ServerProcess, list[WorkerHandle]]]:
    """A server and ``NUM_WORKERS`` registered workers (waiting for "go"); all torn down on exit."""
    server = ServerProcess(tmp_path)
    workers: list[WorkerHandle] = []
    try:
        server.wait_ready(min(deadline, time.monotonic() + 30))
        for wid in range(NUM_WORKERS):
            workers.append(WorkerHandle(wid, "victim" if wid == VICTIM else "survivor", server.port, tmp_path))
        for w in workers:
            ready = w.expect("ready", deadline)
            assert ready["iid"] == w.iid
            w.shm = ready["shm"]
        yield server, workers
    finally:
        try:
            for w in workers:
                w.cleanup()
        finally:
            server.stop()


def leaked_objects(leaks: list[dict[str, Any]], wid: int) -> tuple[int, int]:
    """(lookup-held objects summed over requests, distinct L1 objects) the victim's leak lookups lock."""
    seqs = worker_sequences(wid)
    per_request = sum(leak["hits"] for leak in leaks)
    distinct = {chunk_id(seqs[leak["seq"]], i) for leak in leaks for i in range(leak["hits"])}
    return per_request, len(distinct)


def locks(st: dict[str, Any]) -> tuple[int, int]:
    return st["lookup_locked_objects"], st["storage_manager"]["l1_manager"]["read_locked_count"]


def pause(workers: list[WorkerHandle], deadline: float) -> None:
    for w in workers:
        w.send("pause")
    for w in workers:
        w.expect("paused", deadline)


def resume(workers: list[WorkerHandle]) -> None:
    for w in workers:
        w.send("resume")


# -- the test --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_four_worker_processes_share_chunks_and_a_killed_workers_locks_are_reaped(tmp_path: Path) -> None:
    deadline = time.monotonic() + TEST_BUDGET_S

    def soon(seconds: float) -> float:
        return min(deadline, time.monotonic() + seconds)

    with cluster(tmp_path, deadline) as (server, workers):
        victim = workers[VICTIM]
        survivors = [w for w in workers if w is not victim]
        st = server.status()
        assert st["registered_gpu_ids"] == sorted(w.iid for w in workers)
        assert locks(st) == (0, 0)

        for w in workers:
            w.send("go")
        leaks = victim.expect("locked", soon(20))["leaks"]
        held, distinct = leaked_objects(leaks, VICTIM)
        assert distinct < held  # two of the leaked lookups share a prefix chunk: both counts are checked

        # With the survivors paused between requests, every lock left is one of the victim's.
        pause(survivors, soon(10))
        before = server.status()
        assert locks(before) == (held, distinct), server.log_tail()
        resume(survivors)

        # SIGKILL mid-run: the survivors are working; the victim can never release its locks itself.
        victim.kill()
        assert victim.proc.returncode == -signal.SIGKILL
        gone, st = server.poll_status(lambda s: victim.iid not in s["registered_gpu_ids"],
                                      soon(REAP_TIMEOUT_S + 10))
        assert gone, f"the killed worker was never reaped: {st['registered_gpu_ids']}\n{server.log_tail()}"
        assert st["registered_gpu_ids"] == sorted(w.iid for w in survivors)  # pinging workers stay

        pause(survivors, soon(10))
        released, st = server.poll_status(lambda s: locks(s) == (0, 0), soon(5))
        leftover = locks(st)
        resume(survivors)

        # The survivors carry on after the reap (at least one more full pass each), then verify everything.
        for w in survivors:
            seen = w.cycles
            w.expect(lambda ev, seen=seen: ev["kind"] == "cycle" and ev["n"] > seen, soon(15))
        for w in survivors:
            w.send("finish")
        results = [w.expect("result", soon(20))["stats"] for w in survivors]
        for w in survivors:
            assert w.proc.wait(timeout=max(deadline - time.monotonic(), 1)) == 0, w.log_tail()
        for stats in results:
            assert stats["chunks_verified"] > 0 and stats["chunks_stored"] > 0
            assert stats["foreign_chunks_verified"] > 0  # chunks another process stored, byte-exact

        final = server.status()
        assert final["registered_gpu_ids"] == []
        # The survivors leaked nothing: what is left (if anything) is exactly what the reap failed to release.
        assert locks(final) == leftover
        assert final["active_sessions"] <= len(leaks)
        if not released:
            raise LocksNotReleased(
                f"victim {victim.iid} was reaped but its lookup locks survive: lookup_locked_objects, "
                f"read_locked_count = {leftover} (before the kill {(held, distinct)}; expected (0, 0))")


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "--worker":
    sys.exit(worker_main(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
