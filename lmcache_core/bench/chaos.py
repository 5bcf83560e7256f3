"""``lmcache-server bench chaos [--duration S] [--workers N] ...``: the reliability campaign (issue 18).

One command that starts a real ``lmcache-server`` (a small L1 under IsolatedLRU,
so eviction always churns; an FS L2 behind the ``fault_inject`` adapter, with
eviction) and drives it for ``--duration`` seconds:

* ``--workers`` worker processes (:mod:`.chaos_worker`) speak the wire protocol
  with CPU shared-memory KV caches and an engine-driven context: LOOKUP/QUERY,
  RETRIEVE, STORE, END_SESSION over overlapping prefixes, three models (three
  object sizes), three salts. Every retrieved byte is checked (:mod:`.chaos_kv`);
* HTTP operators at the same time: pollers on ``/status``, ``/metrics``,
  ``/l2/keys``, ``/quota``, ``/healthcheck``, ``/periodic-threads-health``; a
  mutator doing quota PUT/DELETE, ``DELETE /l2``, ``POST /clear-cache`` and warm
  prefetches (``POST /l2/prefetch`` then polling it);
* faults on a schedule (after a fault-free first fifth, the baseline): SIGKILL of
  a random worker, a worker killed mid-STORE, the L2 failing / stalling / hanging /
  truncating loads (switched through ``/reconfigure/fault_inject``), a SIGKILL and
  restart of the server with the FS L2 kept, a client that never reads its
  replies, and a worker truncating its registered segment under the server
  (``--no-shrink-shm`` leaves that one out).

It ends by itself and prints one JSON report (``run()`` returns it as its one
row): operations by kind, bytes verified, wrong bytes, faults injected, worker
kills, server restarts, 5xx answers, health-check failures outside restarts, the
leak checks once every worker is gone (lookup/read/write locks, sessions,
registered workers, mapped worker segments: 0; open fds and threads bounded; RSS
growth between 25 % and 100 % of the run), ``/periodic-threads-health``, L1
stranding (memory carved into slabs but unused), and the sustained load:
operations per second in the fault-free baseline phase and in the fault phase
of the same run, and their ratio. ``ok`` is the verdict; ``failures`` says why not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq

from lmcache_core.bench.chaos_kv import FAMILIES, MODELS, SALTS, tokens_for
from lmcache_core.bench.chaos_server import ServerProc
from lmcache_core.bench.chaos_worker import MARK
from lmcache_core.transport import wire
from lmcache_core.transport.wire import Op

RSS_GROWTH_BOUND = 0.05
RSS_SETTLE_S = 20.0  # the first RSS sample waits this long after a restart (a fresh process warms up)
# Sessions a dead connection created without a LOOKUP (a worker killed mid-STORE) are not the reaper's:
# they expire with the session TTL, as in LMCache. The leak check waits for that (LEAK_CHECK_S > TTL).
SESSION_TTL_S = 20
LEAK_CHECK_S = 90
FD_BOUND = 512
THREAD_BOUND = 256
L1_GB = 0.03
L2_GB = 0.08
QUOTA_GB = 0.012  # per salt; three salts together exceed L1: the global backstop must act
FAULT_KINDS = ("kill_worker", "kill_mid_store", "l2_fail", "l2_stall", "l2_hang", "l2_truncate", "nonreading_client",
               "clear_cache_burst", "server_restart")
CLEAR_BURST = 60  # POST /clear-cache this many times, 0.05 s apart: some land while copies are in flight
TIMELINE_WINDOW_S = 5.0  # a wrong chunk is reported with the harness's actions this long before it


# -- workers -------------------------------------------------------------------------------


class WorkerHandle:
    """One worker process and its latest counters."""

    def __init__(self, wid: int, url: str, seed: int, log_dir: Path) -> None:
        self.wid = wid
        self.log = log_dir / f"worker{wid}.log"
        self._err = self.log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "lmcache_core.bench.chaos_worker", str(wid), url,
                                      str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     text=True, bufsize=1)
        self.stats: dict[str, int] = {}
        self.shm: list[str] = []
        self.ready = threading.Event()
        self.finished = threading.Event()
        self.events: list[dict[str, Any]] = []  # notable events (errors, shrink results)
        threading.Thread(target=self._read, daemon=True, name=f"chaos-w{wid}").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.startswith(MARK):
                continue
            ev = json.loads(line[len(MARK):])
            kind = ev["kind"]
            if kind in ("stats", "final"):
                self.stats = ev["stats"]
            if kind == "ready":
                self.shm = ev["shm"]
                self.ready.set()
            if kind in ("error", "error_reply", "shrunk", "dying", "wrong_chunk"):
                self.events.append(ev)
            if kind in ("final", "error"):
                self.finished.set()
        self.finished.set()

    def send(self, command: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def cleanup(self) -> None:
        """Kill it if it runs; unlink the segments a killed worker leaves behind."""
        self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._err.close()
        for name in self.shm:
            try:
                os.unlink(f"/dev/shm/{name.lstrip('/')}")
            except FileNotFoundError:
                pass


# -- the campaign --------------------------------------------------------------------------


class Chaos:
    def __init__(self, *, duration: float, workers: int, seed: int, faults: bool, shrink_shm: bool,
                 work_dir: Path, fault_interval: float | None = None, restart_every: float | None = None) -> None:
        self.duration = duration
        self.n_workers = workers
        self.rng = random.Random(seed)
        self.seed = seed
        self.faults_enabled = faults
        self.shrink_shm = shrink_shm
        self.dir = work_dir
        self.fault_interval = fault_interval or max(3.0, min(8.0, duration / 40))
        # One restart by default, early in the fault phase, so that one server process lives from before
        # the 25 % mark to the end and its RSS can be compared across the run.
        self.restart_every = restart_every or duration
        l2 = {"type": "fault_inject", "inner": {"type": "fs", "base_path": str(work_dir / "l2")}, "seed": seed,
              "hang_seconds": 1.0, "max_capacity_gb": L2_GB,
              "eviction": {"eviction_policy": "LRU", "trigger_watermark": 0.8, "eviction_ratio": 0.2}}
        self.server = ServerProc(
            ["--l1-size-gb", str(L1_GB), "--l1-prefault-ahead-gb", str(L1_GB), "--eviction-policy", "IsolatedLRU", "--max-workers", "4",
             "--worker-reap-timeout-seconds", "8", "--worker-registration-grace-seconds", "30",
             "--session-ttl-seconds", str(SESSION_TTL_S), "--shutdown-drain-seconds", "10", "--log-level", "WARNING",
             "--l2-adapter", json.dumps(l2)], work_dir / "server.log")
        self.lock = threading.Lock()
        self.workers: list[WorkerHandle] = []
        self.retired: list[WorkerHandle] = []
        self.next_wid = 0
        self.http = Counter[str]()
        self.http_5xx: list[str] = []
        self.faults = Counter[str]()
        self.timeline: list[tuple[float, str]] = []  # (unix time, what the harness did): faults, clears, restarts
        self.worker_kills = 0
        self.server_restarts = 0
        self.unexpected_server_deaths = 0
        self.health_failures: list[str] = []
        self.restarting = threading.Event()
        self.stop = threading.Event()
        self.samples: list[dict[str, Any]] = []
        self.shrink_results: list[dict[str, Any]] = []
        self.t0 = 0.0
        self.phase_ops: dict[str, tuple[float, int]] = {}
        self.last_restart_t = float("-inf")
        self.restarts: list[threading.Thread] = []

    # -- helpers ---------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def total_stats(self) -> Counter[str]:
        total: Counter[str] = Counter()
        with self.lock:
            handles = self.workers + self.retired
        for w in handles:
            total.update(w.stats)
        return total

    def ops(self) -> int:
        s = self.total_stats()
        return sum(v for k, v in s.items() if k.startswith("op_"))

    def call(self, method: str, path: str, body: Any = None, label: str | None = None) -> tuple[int, bytes]:
        label = label or f"{method} {path.split('?')[0]}"
        try:
            code, raw = self.server.request(method, path, body, timeout=15.0)
        except OSError as exc:
            self.http[f"{label} unavailable"] += 1
            if not self.restarting.is_set():
                self.health_failures.append(f"{self.elapsed():.1f}s {label}: {type(exc).__name__}: {exc}")
            return 0, b""
        self.http[f"{label} {code}"] += 1
        if code >= 500:
            self.http_5xx.append(f"{self.elapsed():.1f}s {label} -> {code}: {raw[:300]!r}")
        return code, raw

    def spawn_worker(self) -> WorkerHandle:
        with self.lock:
            wid = self.next_wid
            self.next_wid += 1
        w = WorkerHandle(wid, self.server.url, self.seed * 1000 + wid, self.dir)
        with self.lock:
            self.workers.append(w)
        return w

    def retire(self, w: WorkerHandle) -> None:
        with self.lock:
            if w in self.workers:
                self.workers.remove(w)
                self.retired.append(w)

    # -- threads ---------------------------------------------------------------------------

    def keep_workers(self) -> None:
        """Replace workers that died (killed by a fault, or exited after a shrink)."""
        while not self.stop.wait(0.2):
            with self.lock:
                dead = [w for w in self.workers if w.proc.poll() is not None]
            for w in dead:
                w.cleanup()
                for ev in w.events:
                    if ev["kind"] == "shrunk":
                        self.shrink_results.append(ev["replies"])
                self.retire(w)
                self.spawn_worker()

    def poll_readers(self, offset: int) -> None:
        paths = ["/status", "/metrics", "/l2/keys?page_size=50", "/quota/", "/healthcheck",
                 "/periodic-threads-health", "/reconfigure/fault_inject/status"]
        k = offset
        while not self.stop.wait(0.05):
            self.call("GET", paths[k % len(paths)])
            k += 1

    def mutate(self) -> None:
        k = 0
        while not self.stop.wait(0.4):
            k += 1
            salt = self.rng.choice(SALTS) or "_default"
            action = k % 10
            if action in (0, 5):
                self.call("PUT", f"/quota/{salt}", {"limit_gb": QUOTA_GB * self.rng.choice((0.5, 1, 1.5))})
            elif action == 3:
                self.call("DELETE", f"/quota/{salt}")
                self.call("PUT", f"/quota/{salt}", {"limit_gb": QUOTA_GB})
            elif action in (1, 6, 8):
                self.warm_prefetch()
            elif action == 2:
                self.delete_some_l2()
            elif action == 7 and k % 50 == 7:
                self.mark("clear-cache (operator)")
                self.call("POST", "/clear-cache", {})

    def warm_prefetch(self) -> None:
        mdl = self.rng.choice(MODELS)
        salt = self.rng.choice(SALTS)
        tokens = tokens_for(self.rng.randrange(FAMILIES), self.rng.randrange(6), self.rng.randint(1, 4))
        code, raw = self.call("POST", "/l2/prefetch", {"model_name": mdl.name, "world_size": 1, "token_ids": tokens,
                                                        "cache_salt": salt})
        if code == 202:
            rid = json.loads(raw).get("request_id")
            if rid:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and not self.stop.is_set():
                    code, raw = self.call("GET", f"/l2/prefetch/{urllib.parse.quote(rid)}", label="GET /l2/prefetch/{id}")
                    if code != 200 or json.loads(raw).get("status") != "pending":
                        break
                    time.sleep(0.05)  # polling a job whose completion we cannot wait on otherwise

    def delete_some_l2(self) -> None:
        code, raw = self.call("GET", "/l2/keys?page_size=20")
        if code != 200:
            return
        entries = json.loads(raw).get("entries", [])
        if entries:
            self.call("DELETE", "/l2/", {"keys": [e["key"] for e in entries[: self.rng.randint(1, 5)]]},
                      label="DELETE /l2")

    def sample(self) -> None:
        while not self.stop.wait(1.0):
            if self.restarting.is_set() or not self.server.alive():
                continue
            try:
                rss, fds, threads = self.server.rss_bytes(), self.server.open_fds(), self.server.threads()
            except OSError:
                continue
            code, raw = self.call("GET", "/status", label="GET /status (sampler)")
            alloc: dict[str, Any] = {}
            if code == 200:
                l1 = json.loads(raw)["storage_manager"]["l1_manager"]
                alloc = {**l1.get("allocator", {}), "memory_total_bytes": l1.get("memory_total_bytes", 0),
                         "total_object_count": l1.get("total_object_count", 0)}
            self.samples.append({"t": round(self.elapsed(), 1), "rss": rss, "fds": fds, "threads": threads,
                                 "server_start": self.server.starts, "alloc": alloc, "ops": self.ops()})
            if not self.server.alive() and not self.restarting.is_set():
                self.unexpected_server_deaths += 1
                self.restart_server(kill=False)

    # -- faults ----------------------------------------------------------------------------

    def l2_faults(self, faults: dict[str, Any], hold_s: float = 0.0,
                  meanwhile: Callable[[], None] | None = None) -> None:
        """Switch the L2 faults on, hold them ``hold_s`` (or while ``meanwhile`` runs), switch them off."""
        code, raw = self.call("POST", "/reconfigure/fault_inject/set", {"faults": faults})
        if code != 200 and code != 0:  # 0: the server is restarting (counted as unavailable)
            self.health_failures.append(f"reconfigure set answered {code}: {raw[:200]!r}")
        if meanwhile is not None:
            meanwhile()
        else:
            self.stop.wait(hold_s)
        self.call("POST", "/reconfigure/fault_inject/clear", {})

    def clear_burst(self) -> None:
        for _ in range(CLEAR_BURST):
            self.call("POST", "/clear-cache", {})
            if self.stop.wait(0.05):
                return

    def nonreading_client(self, hold_s: float) -> None:
        """A DEALER that sends requests and never reads a reply, then goes away."""
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 10)
        sock.setsockopt(zmq.SNDTIMEO, 100)
        sock.connect(self.server.url)
        sent = 0
        deadline = time.monotonic() + hold_s
        try:
            while time.monotonic() < deadline and not self.stop.is_set():
                try:
                    sock.send_multipart(wire.encode_request(sent, Op.GET_CHUNK_SIZE))
                    sent += 1
                except zmq.Again:
                    time.sleep(0.01)
                if sent % 200 == 0:
                    time.sleep(0.01)
        finally:
            sock.close()
        self.faults["nonreading_client_requests"] += sent

    def mark(self, what: str) -> None:
        self.timeline.append((round(time.time(), 3), what))

    def restart_server(self, kill: bool = True) -> None:
        self.restarting.set()
        try:
            if kill:
                self.server.kill()
                self.mark("server killed")
            self.server.start(timeout_s=120)
            self.mark("server up")
            self.server_restarts += 1
            self.last_restart_t = self.elapsed()
            self.set_quotas()
        finally:
            self.restarting.clear()

    def kill_worker(self) -> None:
        with self.lock:
            live = [w for w in self.workers if w.ready.is_set() and w.proc.poll() is None]
        if live:
            self.rng.choice(live).kill()
            self.worker_kills += 1

    def inject(self, kind: str) -> None:
        self.faults[kind] += 1
        self.mark(kind)
        if kind == "kill_worker":
            self.kill_worker()
        elif kind == "kill_mid_store":
            with self.lock:
                live = [w for w in self.workers if w.ready.is_set() and w.proc.poll() is None]
            if live:
                self.rng.choice(live).send("die_in_store")
                self.worker_kills += 1
        elif kind == "l2_fail":
            self.l2_faults({"store": {"fail_rate": 0.5}, "load": {"fail_rate": 0.3}, "lookup": {"fail_rate": 0.1},
                            "delete": {"fail_rate": 0.3}}, 3.0)
        elif kind == "l2_stall":
            self.l2_faults({"store": {"latency_ms": 20}, "load": {"latency_ms": 30}, "lookup": {"latency_ms": 5}}, 3.0)
        elif kind == "l2_hang":
            self.l2_faults({"store": {"hang_rate": 0.2}, "load": {"hang_rate": 0.05}}, 3.0)
        elif kind == "l2_truncate":
            self.l2_faults({"load": {"truncate_rate": 0.5}}, 3.0)
        elif kind == "nonreading_client":
            self.nonreading_client(2.0)
        elif kind == "clear_cache_burst":
            # Forced clears while workers copy and a slow L2 keeps the write-behind holding objects: a
            # removed object's memory must not be reused under a RETRIEVE, a STORE or the write-behind
            # that still holds it (wrong bytes otherwise).
            self.l2_faults({"store": {"latency_ms": 20}}, meanwhile=self.clear_burst)
        elif kind == "server_restart":
            # In its own thread: the other faults go on while the server is down and coming back.
            restart = threading.Thread(target=self.restart_server, daemon=True, name="chaos-restart")
            self.restarts.append(restart)
            restart.start()
        elif kind == "shrink_shm":
            with self.lock:
                live = [w for w in self.workers if w.ready.is_set() and w.proc.poll() is None]
            if live:
                self.rng.choice(live).send("shrink")

    def schedule_faults(self, start: float, end: float) -> None:
        kinds = [k for k in FAULT_KINDS if k != "server_restart"] + (["shrink_shm"] if self.shrink_shm else [])
        next_restart = start + min(self.restart_every / 2, 2.0)
        deck: list[str] = []
        while not self.stop.is_set():
            now = self.elapsed()
            if now >= end:
                return
            if now < start:
                self.stop.wait(min(0.5, start - now))
                continue
            if now >= next_restart and end - now > 20:
                self.inject("server_restart")
                next_restart += self.restart_every
            else:
                if not deck:  # every kind once per round, in a random order
                    deck = self.rng.sample(kinds, len(kinds))
                self.inject(deck.pop())
            self.stop.wait(self.fault_interval * self.rng.uniform(0.5, 1.5))

    # -- the run ---------------------------------------------------------------------------

    def set_quotas(self) -> None:
        for salt in SALTS:
            self.call("PUT", f"/quota/{salt or '_default'}", {"limit_gb": QUOTA_GB})

    def run(self) -> dict[str, Any]:
        (self.dir / "l2").mkdir(parents=True, exist_ok=True)
        self.server.start(timeout_s=120)
        self.set_quotas()
        for _ in range(self.n_workers):
            self.spawn_worker()
        for w in list(self.workers):
            if not w.ready.wait(120):
                raise RuntimeError(f"worker {w.wid} never became ready\n{w.log.read_text(errors='replace')[-2000:]}")
        self.t0 = time.monotonic()
        baseline_end = self.duration * 0.2
        threads = [threading.Thread(target=self.keep_workers, daemon=True),
                   threading.Thread(target=self.poll_readers, args=(0,), daemon=True),
                   threading.Thread(target=self.poll_readers, args=(3,), daemon=True),
                   threading.Thread(target=self.mutate, daemon=True),
                   threading.Thread(target=self.sample, daemon=True)]
        if self.faults_enabled:
            threads.append(threading.Thread(target=self.schedule_faults, args=(baseline_end, self.duration - 5),
                                            daemon=True))
        for t in threads:
            t.start()
        rss_25 = None
        marks = {"baseline_start": (0.0, self.ops())}
        while self.elapsed() < self.duration:
            time.sleep(0.2)  # the run's clock: nothing to wait on
            if "baseline_end" not in marks and self.elapsed() >= baseline_end:
                marks["baseline_end"] = (self.elapsed(), self.ops())
            now = self.elapsed()
            if (rss_25 is None and now >= self.duration * 0.25 and now >= self.last_restart_t + RSS_SETTLE_S
                    and not self.restarting.is_set()):
                rss_25 = self.rss_point()
                self.rss_25_t = now
        marks["end"] = (self.elapsed(), self.ops())
        rss_100 = self.rss_point()
        self.stop.set()
        for t in threads + self.restarts:
            t.join(150)
        self.call("POST", "/reconfigure/fault_inject/clear", {})
        return self.finish(marks, rss_25, rss_100)

    def rss_point(self) -> tuple[int, int, int]:
        """(RSS, which server process, bytes of L1 arena touched so far: the allocator's high-water mark)."""
        code, raw = self.call("GET", "/status", label="GET /status (rss)")
        high_water = 0
        if code == 200:
            high_water = json.loads(raw)["storage_manager"]["l1_manager"]["allocator"]["high_water_bytes"]
        return self.server.rss_bytes(), self.server.starts, high_water

    def finish(self, marks: dict[str, tuple[float, int]], rss_25: tuple[int, int, int] | None,
               rss_100: tuple[int, int, int]) -> dict[str, Any]:
        with self.lock:
            live = list(self.workers)
        for w in live:
            w.send("stop")
        for w in live:
            if not w.finished.wait(60):
                w.kill()
            try:
                w.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
            w.cleanup()
            self.retire(w)
        leaks = self.leak_checks()
        return self.report(marks, rss_25, rss_100, leaks)

    def leak_checks(self) -> dict[str, Any]:
        """Once every worker is gone: poll (bounded) until the reaper has dropped the killed ones and
        sessions only a STORE created have expired; then read every counter once more."""
        deadline = time.monotonic() + LEAK_CHECK_S
        st: dict[str, Any] = {}
        while time.monotonic() < deadline:
            code, raw = self.call("GET", "/status", label="GET /status (leak check)")
            if code == 200:
                st = json.loads(raw)
                if self._leak_counts(st) == self._zero() and not self.server.mapped_worker_segments():
                    break
            time.sleep(0.25)  # waiting for the reaper's next pass
        counts = self._leak_counts(st) if st else {}
        code, raw = self.call("GET", "/periodic-threads-health", label="GET /periodic-threads-health (final)")
        health = json.loads(raw) if code == 200 else {"status": code}
        return {**counts, "mapped_worker_segments": len(self.server.mapped_worker_segments()),
                "open_fds": self.server.open_fds(), "threads": self.server.threads(),
                "periodic_threads_health": health, "store_controller": st.get("storage_manager", {}).get(
                    "store_controller"), "l1_memcheck_alloc": st.get("storage_manager", {}).get("l1_manager", {}).get(
                    "allocator")}

    @staticmethod
    def _zero() -> dict[str, int]:
        return {"lookup_locked_objects": 0, "l1_read_locked": 0, "l1_write_locked": 0, "active_sessions": 0,
                "registered_workers": 0, "connections": 0}

    @staticmethod
    def _leak_counts(st: dict[str, Any]) -> dict[str, int]:
        l1 = st.get("storage_manager", {}).get("l1_manager", {})
        return {"lookup_locked_objects": st.get("lookup_locked_objects", -1),
                "l1_read_locked": l1.get("read_locked_count", -1),
                "l1_write_locked": l1.get("write_locked_count", -1),
                "active_sessions": st.get("active_sessions", -1),
                "registered_workers": len(st.get("registered_gpu_ids", [0])) + len(
                    st.get("registered_non_cuda_instance_ids", [0])),
                "connections": st.get("connections", -1)}

    def stranding(self) -> dict[str, Any]:
        """L1 memory carved into slabs but holding no object, as a fraction of L1, over the samples."""
        fracs = [(s["alloc"]["carved_bytes"] - s["alloc"]["used_bytes"]) / s["alloc"]["memory_total_bytes"]
                 for s in self.samples if s["alloc"].get("memory_total_bytes")]
        failed = [s["alloc"].get("failed_allocations", 0) for s in self.samples if s["alloc"]]
        return {"samples": len(fracs), "carved_unused_fraction_max": round(max(fracs), 4) if fracs else None,
                "carved_unused_fraction_mean": round(sum(fracs) / len(fracs), 4) if fracs else None,
                "failed_allocations_last": failed[-1] if failed else None}

    def report(self, marks: dict[str, tuple[float, int]], rss_25: tuple[int, int, int] | None,
               rss_100: tuple[int, int, int], leaks: dict[str, Any]) -> dict[str, Any]:
        stats = self.total_stats()
        (t0, o0), (t1, o1), (t2, o2) = marks["baseline_start"], marks["baseline_end"], marks["end"]
        base_rate = (o1 - o0) / (t1 - t0) if t1 > t0 else 0.0
        fault_rate = (o2 - o1) / (t2 - t1) if t2 > t1 else 0.0
        rss_growth = rss_growth_ex_l1 = None
        if rss_25 is not None and rss_25[1] == rss_100[1]:  # the same server process at both points
            rss_growth = (rss_100[0] - rss_25[0]) / rss_25[0]
            # The server populates all of L1 ahead of the allocator (--l1-prefault-ahead-gb): L1's pages are
            # resident from the start, so RSS growth is everything else. Shown too: the growth less the
            # arena's high-water growth, the figure for a server that touches L1 lazily.
            rss_growth_ex_l1 = ((rss_100[0] - rss_100[2]) - (rss_25[0] - rss_25[2])) / (rss_25[0] - rss_25[2])
        failures = []
        if stats["wrong_bytes"]:
            wrong = sorted((ev for w in self.retired for ev in w.events if ev["kind"] == "wrong_chunk"),
                           key=lambda ev: ev["at"])
            shown = [{**ev, "harness_before": [f"{round(ev['at'] - t, 2)} s before: {what}" for t, what in self.timeline
                                              if 0 <= ev["at"] - t <= TIMELINE_WINDOW_S]} for ev in wrong[:8]]
            failures.append(f"{stats['wrong_bytes']} wrong bytes in {stats['wrong_chunks']} chunks; the first ones "
                            f"(unix time, with the harness's actions in the {TIMELINE_WINDOW_S:.0f} s before; "
                            f"server.log times the server's side): {shown}")
        if stats["chunks_verified"] == 0:
            failures.append("no chunk was ever verified")
        if self.http_5xx:
            failures.append(f"{len(self.http_5xx)} 5xx answers")
        zero = self._zero()
        for k in zero:
            if leaks.get(k) != 0:
                failures.append(f"leak: {k} = {leaks.get(k)}")
        if leaks["mapped_worker_segments"]:
            failures.append(f"leak: {leaks['mapped_worker_segments']} worker segments still mapped")
        if leaks["open_fds"] > FD_BOUND or leaks["threads"] > THREAD_BOUND:
            failures.append(f"fds {leaks['open_fds']} / threads {leaks['threads']} past their bounds")
        if rss_growth is not None and rss_growth > RSS_GROWTH_BOUND:
            failures.append(f"RSS grew {rss_growth:.1%} (bound {RSS_GROWTH_BOUND:.0%})")
        if not leaks["periodic_threads_health"].get("healthy"):
            failures.append("periodic threads unhealthy at the end")
        if self.health_failures:
            failures.append(f"{len(self.health_failures)} HTTP failures outside server restarts")
        if self.unexpected_server_deaths:
            failures.append(f"the server died {self.unexpected_server_deaths} times on its own")
        errors = [ev for w in self.retired for ev in w.events if ev["kind"] in ("error", "error_reply")]
        if errors:
            failures.append(f"{len(errors)} worker errors")
        ops = {k.removeprefix("op_"): v for k, v in sorted(stats.items()) if k.startswith("op_")}
        return {
            "bench": "chaos",
            "ok": not failures,
            "failures": failures,
            "duration_s": round(t2, 1),
            "workers": self.n_workers,
            "faults_enabled": self.faults_enabled,
            "ops_by_kind": ops,
            "ops_total": sum(ops.values()),
            "rounds": stats["rounds"],
            "chunks_verified": stats["chunks_verified"],
            "bytes_verified": stats["bytes_verified"],
            "wrong_bytes": stats["wrong_bytes"],
            "wrong_chunks": stats["wrong_chunks"],
            "chunks_stored": stats["chunks_stored"],
            "chunks_hit": stats["chunks_hit"],
            "chunks_missed": stats["chunks_missed"],
            "retrieve_failed": stats["retrieve_failed"],
            "store_failed": stats["store_failed"],
            "worker_server_gone": stats["server_gone"],
            "worker_reconnects": stats["reconnects"],
            "faults_injected": dict(self.faults),
            "timeline": [f"{t:.3f} {what}" for t, what in self.timeline],
            "worker_kills": self.worker_kills,
            "workers_started": self.next_wid,
            "server_restarts": self.server_restarts,
            "unexpected_server_deaths": self.unexpected_server_deaths,
            "http_requests": sum(v for k, v in self.http.items()),
            "http_by_route_status": dict(sorted(self.http.items())),
            "http_5xx": len(self.http_5xx),
            "http_5xx_samples": self.http_5xx[:10],
            "health_failures_outside_restarts": len(self.health_failures),
            "health_failure_samples": self.health_failures[:10],
            "worker_errors": [e.get("traceback", e.get("message", ""))[-600:] for e in errors[:5]],
            "shrink_shm_results": self.shrink_results,
            "leaks_after_all_workers_gone": leaks,
            "rss_bytes_at_25pct": rss_25[0] if rss_25 else None,
            "rss_first_sample_s": getattr(self, "rss_25_t", None),
            "rss_bytes_at_100pct": rss_100[0],
            "rss_growth_25_to_100pct": None if rss_growth is None else round(rss_growth, 4),
            "l1_arena_touched_bytes_at_25pct": rss_25[2] if rss_25 else None,
            "l1_arena_touched_bytes_at_100pct": rss_100[2],
            "rss_growth_outside_l1_arena_25_to_100pct": None if rss_growth_ex_l1 is None else round(rss_growth_ex_l1, 4),
            "rss_growth_bound": RSS_GROWTH_BOUND,
            "max_open_fds": max((s["fds"] for s in self.samples), default=None),
            "max_threads": max((s["threads"] for s in self.samples), default=None),
            "l1_stranding": self.stranding(),
            "sustained_load": {"baseline_ops_per_s_no_faults": round(base_rate, 1),
                               "ops_per_s_with_faults": round(fault_rate, 1),
                               "ratio_faults_over_baseline": round(fault_rate / base_rate, 3) if base_rate else None,
                               "baseline_phase_s": round(t1 - t0, 1), "fault_phase_s": round(t2 - t1, 1)},
        }


def run_chaos(duration: float = 60.0, workers: int = 4, seed: int = 1, faults: bool = True,
              shrink_shm: bool = True, work_dir: Path | None = None, keep: bool = False, **kw: Any) -> dict[str, Any]:
    """One campaign; the JSON report (see the module docstring)."""
    own = work_dir is None
    base = Path(tempfile.mkdtemp(prefix="lmcache-chaos-")) if own else work_dir
    assert base is not None
    chaos = Chaos(duration=duration, workers=workers, seed=seed, faults=faults, shrink_shm=shrink_shm,
                  work_dir=base, **kw)
    try:
        report = chaos.run()
        report["work_dir"] = str(base)
        return report
    finally:
        chaos.stop.set()
        with chaos.lock:
            handles = list(chaos.workers)
        for w in handles:
            w.cleanup()
        if chaos.server.alive():
            chaos.server.terminate(timeout_s=60)
        if own and not keep:
            shutil.rmtree(base, ignore_errors=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lmcache-server bench chaos", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (the first fifth without faults)")
    p.add_argument("--workers", type=int, default=4, help="worker processes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-faults", action="store_true", help="no faults at all (a baseline run)")
    p.add_argument("--no-shrink-shm", dest="shrink_shm", action="store_false",
                   help="leave out the fault where a worker truncates its registered segment under the server "
                        "(a server without the segment-size check dies of SIGBUS there)")
    p.add_argument("--work-dir", type=Path, default=None, help="keep logs and the L2 here (default: a temp dir)")
    return p.parse_args(argv)


def run(argv: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``lmcache-server bench chaos [options]``: one row, the report."""
    args = parse_args(argv)
    return [run_chaos(args.duration, args.workers, args.seed, not args.no_faults, args.shrink_shm,
                      args.work_dir, keep=args.work_dir is not None)]


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:])[0], indent=2))
