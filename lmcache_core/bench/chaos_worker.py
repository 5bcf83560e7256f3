"""One chaos worker process: ``python -m lmcache_core.bench.chaos_worker WID URL SEED``.

Registers three models (two lmcache-driven over shared memory, one engine-driven)
and runs requests (:meth:`KVWorker.round`) until told to stop, pinging its ids
from a heartbeat thread. A server that stops answering (killed, restarting) is
waited for: the worker reconnects and registers again.

Talks to the harness in JSON lines on stdout (prefixed with :data:`MARK`):
``ready`` (pid, shared-memory names), ``stats`` (cumulative counters, every
second and at once after a wrong byte), ``final``; and reads one-word commands on
stdin: ``stop`` (finish the request, unregister, exit 0), ``die_in_store`` (send
a STORE and SIGKILL itself before the answer: a worker killed mid-STORE),
``shrink`` (truncate one of its own KV segments to a page, then STORE and
RETRIEVE from it: the server must answer in-band, not crash; then exit).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import sys
import threading
import time
import traceback
from typing import Any

import zmq

from lmcache_core.bench.chaos_kv import MODELS, KVWorker, ServerGone, pick_request, tokens_for
from lmcache_core.transport import wire
from lmcache_core.transport.wire import ErrorReply, Op

MARK = "@@chaos "
PING_INTERVAL_S = 0.5
STATS_INTERVAL_S = 1.0
CALL_TIMEOUT_S = 6.0
RECONNECT_BUDGET_S = 120.0


def emit(kind: str, **fields: Any) -> None:
    sys.stdout.write(MARK + json.dumps({"kind": kind, **fields}) + "\n")
    sys.stdout.flush()


def base_iid(wid: int) -> int:
    return 0xC4A0_0000_0000 + wid * 16


class ChaosWorker:
    def __init__(self, wid: int, url: str, seed: int) -> None:
        self.wid = wid
        self.url = url
        self.rng = random.Random(seed)
        self.kv = KVWorker(url, base_iid(wid), timeout_s=CALL_TIMEOUT_S)
        self.commands: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._last_stats = 0.0
        self._wrong_seen = 0
        threading.Thread(target=self._read_commands, daemon=True).start()

    def _read_commands(self) -> None:
        for line in sys.stdin:
            self.commands.put(line.strip())
        self.commands.put("stop")  # the harness is gone

    def _heartbeat(self) -> None:
        while not self._stop.wait(PING_INTERVAL_S):
            try:
                self.kv.ping_all()
            except (ServerGone, ErrorReply, zmq.ZMQError):
                pass  # the main loop notices and reconnects

    def connect(self) -> None:
        deadline = time.monotonic() + RECONNECT_BUDGET_S
        while True:
            try:
                self.kv.reconnect() if self.kv.stats["registrations"] else self.kv.register()
                return
            except ServerGone:
                if time.monotonic() > deadline:
                    raise
                self.kv.stats["reconnect_attempts"] += 1

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        while self.kv.wrong:  # which chunks, on which path: what a failed run must tell
            emit("wrong_chunk", **self.kv.wrong.pop(0))
        wrong = self.kv.stats["wrong_bytes"]
        if force or wrong != self._wrong_seen or now - self._last_stats >= STATS_INTERVAL_S:
            self._last_stats, self._wrong_seen = now, wrong
            emit("stats", stats=dict(self.kv.stats))

    def run(self) -> None:
        self.connect()
        emit("ready", pid=os.getpid(), shm=self.kv.shm_names(), iids=list(self.kv.iids.values()))
        threading.Thread(target=self._heartbeat, daemon=True).start()
        n = 0
        while True:
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                cmd = None
            if cmd == "stop":
                break
            if cmd == "die_in_store":
                self.die_in_store()
            if cmd == "shrink":
                self.shrink()
            mdl, salt, tokens = pick_request(self.rng)
            try:
                self.kv.round(mdl, salt, tokens, f"w{self.wid}-{n}")
            except ServerGone:
                self.kv.stats["server_gone"] += 1
                self.connect()
            except ErrorReply as exc:
                self.kv.stats["error_replies"] += 1
                emit("error_reply", message=str(exc)[:300])
            n += 1
            self.report()
        self._stop.set()
        try:
            self.kv.unregister()
        except ServerGone:
            self.kv.stats["unregister_failed"] += 1
        self.report(force=True)
        emit("final", stats=dict(self.kv.stats))

    def _raw_send(self, op: Op, *args: Any) -> zmq.Socket:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(self.url)
        sock.send_multipart(wire.encode_request(1, op, *args))
        return sock

    def die_in_store(self) -> None:
        """A STORE on the wire, then SIGKILL before its answer (the server copies from a dead worker's memory)."""
        mdl = MODELS[self.rng.randrange(2)]  # an lmcache-driven model
        tokens = tokens_for(self.rng.randrange(1000, 2000), 0, 4)
        blocks = self.kv.prepare_store(mdl, "", tokens, 0, 4)
        key = self.kv.store_key(mdl, "", tokens, "dying", 0, 4)
        sock = self._raw_send(Op.STORE, key, self.kv.iids[mdl.name], blocks, b"")
        sock.poll(5)  # let the frames leave
        emit("dying")
        os.kill(os.getpid(), signal.SIGKILL)

    def shrink(self) -> None:
        """Truncate a registered segment under the server, then ask it to copy from there; report; exit."""
        mdl = MODELS[0]
        name = self.kv.kv[mdl.name].descriptors()[0].descriptor.shm_name
        tokens = tokens_for(2000 + self.wid, 0, 4)
        blocks = self.kv.prepare_store(mdl, "", tokens, 0, 4)  # written before the cut: nothing touches it after
        os.truncate(f"/dev/shm/{name.lstrip('/')}", 4096)
        replies: dict[str, Any] = {}
        for op, args in ((Op.STORE, (self.kv.store_key(mdl, "", tokens, "shrunk", 0, 4), self.kv.iids[mdl.name],
                                     blocks, b"")),
                         (Op.RETRIEVE, (self.kv.store_key(mdl, "", tokens, "shrunk", 0, 4), self.kv.iids[mdl.name],
                                        blocks, b"", 0))):
            sock = self._raw_send(op, *args)
            if sock.poll(int(CALL_TIMEOUT_S * 1000)):
                try:
                    replies[op.name] = repr(wire.decode_reply(op, sock.recv_multipart()))
                except ErrorReply as exc:
                    replies[op.name] = f"error reply: {exc}"
            else:
                replies[op.name] = "no answer"
            sock.close()
        emit("shrunk", replies=replies)
        sys.stdout.flush()
        os._exit(0)  # never touch the truncated mapping again (SIGBUS)


def main(argv: list[str]) -> int:
    wid, url, seed = int(argv[0]), argv[1], int(argv[2])
    worker = ChaosWorker(wid, url, seed)
    try:
        worker.run()
        return 0
    except BaseException:  # noqa: BLE001 - everything goes to the harness
        emit("error", traceback=traceback.format_exc())
        return 1
    finally:
        worker.kv.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
