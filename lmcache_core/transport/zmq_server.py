"""The ZMQ ROUTER server: one loop thread owns the socket; handlers run inline or on pools.

* ``SYNC`` handlers (cheap, no I/O: ``noop``, ``get_chunk_size``, registration)
  run on the loop thread.
* ``SYNC_AFTER_REPLY`` handlers (``lookup``: its reply is None whatever happens)
  run on the loop thread right after their reply is sent, so the client's
  turnaround overlaps the work; the loop reads the next request only after it.
* ``AFFINITY`` handlers (STORE/RETRIEVE and the engine-driven transfer ops) run
  on ``--max-gpu-workers`` single-thread lanes; each client identity is pinned
  to one lane, so one worker's transfers stay in order on one thread.
* ``NORMAL`` handlers run on a pool of ``--max-cpu-workers`` threads.

Pools hand finished replies back through a queue and wake the loop through an
inproc socket pair, because only the loop thread may touch the ROUTER socket.

Errors: a frame no well-behaved client sends (undecodable, unknown op, wrong
arity) gets the ``"error"`` reply that makes a 0.5.6 client fail fast instead
of waiting for its timeout; a well-formed request whose handler fails gets the
op's in-band failure value (what vLLM's connector handles). Either way the
failure is logged (rate-limited, client text escaped), counted, and the loop
keeps serving.

Hostile peers: every send is non-blocking, so a peer that never reads costs
the loop nothing (its replies wait in a bounded backlog, then are dropped);
messages over ``max_message_bytes`` make libzmq drop the connection before
buffering them (``ZMQ_MAXMSGSIZE``); a uid frame over
:data:`MAX_UID_FRAME_BYTES` is dropped unanswered. :meth:`ZmqServer.stalled_for`
is the loop's heartbeat, read by ``GET /healthcheck``. See ``docs/security.md``.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zmq
from prometheus_client import Counter

from lmcache_core.observability.metrics import Children
from lmcache_core.transport import wire

logger = logging.getLogger(__name__)

ZMQ_REQUESTS = Counter("lmcache_mp_zmq_requests", "ZMQ requests by operation and outcome", ["op", "outcome"])
ZMQ_REQUEST_CHILDREN = Children(ZMQ_REQUESTS)  # the per-request counter, without labels() on the loop thread


Dispatch = wire.Dispatch
NO_FALLBACK = wire.NO_FALLBACK
"""``HandlerSpec.failure``: answer a failing handler with the ``"error"`` reply."""


@dataclass(frozen=True)
class HandlerSpec:
    """How one op is served: the function ``fn(args, identity) -> value``, where it runs, its failure value.

    Built from the op's row in :data:`lmcache_core.transport.wire.OP_SPECS` (dispatch, failure)
    and the handler the data path binds to it; tests may build their own.
    """

    fn: Callable[[Any, bytes], Any]
    dispatch: Dispatch
    failure: Any = NO_FALLBACK


def safe_text(value: object, limit: int = 200) -> str:
    """``value`` as one printable log-safe line: control characters escaped, at most ``limit`` chars.

    Client-chosen strings (model names, request ids, error reasons that quote
    them) go through this before they reach a log line, so a newline in a
    ``model_name`` cannot forge a second log record.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and len(text) <= limit:
        return text
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text[:limit])
    return out if len(text) <= limit else out + f"...(+{len(text) - limit} chars)"


class RateLimitedLogger:
    """Logs failure reasons at most ``burst`` lines per ``period`` seconds; counts the rest.

    A misbehaving client must not flood the log, and must not be able to
    silence it either: the old once-per-reason logger went quiet for good after
    1024 attacker-chosen reasons. Here a quiet period ends with one line saying
    how many were suppressed, and every reason is escaped (:func:`safe_text`).
    """

    def __init__(self, burst: int = 20, period: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = burst
        self._period = period
        self._clock = clock
        self._window = clock()
        self._count = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(self, reason: str, exc_info: bool = False) -> None:
        with self._lock:
            now = self._clock()
            suppressed = 0
            if now - self._window >= self._period:
                suppressed, self._suppressed = self._suppressed, 0
                self._window, self._count = now, 0
            if self._count >= self._burst:
                self._suppressed += 1
                return
            self._count += 1
        if suppressed:
            logger.warning("%d more data-path failures were not logged", suppressed)
        logger.warning("%s", safe_text(reason, 500), exc_info=exc_info)

    @property
    def suppressed(self) -> int:
        """Failures not logged in the current window."""
        return self._suppressed


class AffinityPool:
    """``n`` single-thread lanes; each key (a client identity) is pinned to one lane, round-robin."""

    def __init__(self, n: int, name: str = "lmcache-transfer") -> None:
        self._lanes = [ThreadPoolExecutor(1, thread_name_prefix=f"{name}-{i}") for i in range(n)]
        self._slots: dict[bytes, int] = {}
        self._next = itertools.count()
        self._lock = threading.Lock()

    def submit(self, key: bytes, fn: Callable[[], None]) -> None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = next(self._next) % len(self._lanes)
        self._lanes[slot].submit(fn)

    def forget(self, key: bytes) -> None:
        with self._lock:
            self._slots.pop(key, None)

    def shutdown(self) -> None:
        for lane in self._lanes:
            lane.shutdown(wait=True, cancel_futures=True)


MAX_UID_FRAME_BYTES = 256
"""A request whose uid frame is longer is dropped unanswered (the 0.5.6 client sends a small int;
echoing an attacker's 64 KiB uid would let it fill our send pipes)."""

DEFAULT_MAX_MESSAGE_BYTES = 1 << 30
"""``ZMQ_MAXMSGSIZE``: a peer sending a larger message is disconnected by libzmq before we buffer it."""

PEER_BACKLOG_LIMIT = 64
"""Replies kept for a peer whose ZMQ pipe is full (it stopped reading); further ones are dropped."""

SEND_HWM = 1000
"""``ZMQ_SNDHWM``: replies libzmq queues per peer before a non-blocking send says ``Again``."""

_IDLE_POLL_MS = 500
_BACKLOG_POLL_MS = 10


class _Peer:
    """Replies waiting for one peer whose pipe was full."""

    __slots__ = ("backlog", "dropped")

    def __init__(self) -> None:
        self.backlog: collections.deque[list[bytes]] = collections.deque()
        self.dropped = 0


class ZmqServer:
    """Serves ``handlers`` on a ROUTER socket bound to ``url`` until :meth:`stop`.

    The loop never blocks on a peer: every send is non-blocking. A peer that does
    not read its replies fills its libzmq pipe (``SNDHWM`` messages); then up to
    :data:`PEER_BACKLOG_LIMIT` more replies wait in its own backlog, retried every
    few milliseconds, and any further reply to it is dropped (counted as
    ``outcome="dropped"``, logged rate-limited). Other peers are never delayed.
    :meth:`stalled_for` is how long ago the loop last went round, for health checks.
    """

    def __init__(
        self,
        url: str,
        handlers: Mapping[wire.Op, HandlerSpec],
        *,
        gpu_workers: int = 1,
        cpu_workers: int = 1,
        context: zmq.Context | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        peer_backlog_limit: int = PEER_BACKLOG_LIMIT,
        ipc_mode: int | None = None,
    ) -> None:
        """``ipc_mode``: for an ``ipc://`` url, the socket file's mode (it is created with umask 077 and then
        given this mode, so there is no moment at which others may connect)."""
        self.url = url
        self._ipc_mode = ipc_mode
        self.handlers = dict(handlers)
        self._ctx = context or zmq.Context.instance()
        self._affinity = AffinityPool(max(1, gpu_workers))
        self._normal = ThreadPoolExecutor(max(1, cpu_workers), thread_name_prefix="lmcache-normal")
        self._outbox: collections.deque[list[bytes]] = collections.deque()
        self._peers: dict[bytes, _Peer] = {}
        self._max_message_bytes = max_message_bytes
        self._peer_backlog_limit = max(1, peer_backlog_limit)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lmcache-zmq-loop", daemon=True)
        self._log_once = RateLimitedLogger()
        self._wake_url = f"inproc://lmcache-zmq-wake-{id(self)}"
        self._wake_lock = threading.Lock()
        self._wake_send: zmq.Socket | None = None
        self._heartbeat = time.monotonic()
        self.replies_dropped = 0
        self.bound_port: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Bind and start the loop; raises if the socket cannot be bound."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("ZMQ loop did not start")
        if self._error is not None:
            raise self._error

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake()
        self._thread.join(timeout)
        self._affinity.shutdown()
        self._normal.shutdown(wait=True, cancel_futures=True)

    def stalled_for(self) -> float:
        """Seconds since the loop thread last went round (0 when it is not running).

        The loop wakes at least every 0.5 s, so a value of seconds means it is stuck
        in a handler (or was blocked): ``GET /healthcheck`` turns unhealthy on it.
        """
        if not self._thread.is_alive() or self._stop.is_set():
            return 0.0
        return max(0.0, time.monotonic() - self._heartbeat)

    def backlog(self) -> dict[str, int]:
        """Peers with replies waiting and the replies waiting/dropped (status and tests)."""
        peers = dict(self._peers)
        return {"peers": len(peers), "replies": sum(len(p.backlog) for p in peers.values()),
                "dropped": self.replies_dropped}

    # -- loop ----------------------------------------------------------------

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        wake_recv = self._ctx.socket(zmq.PULL)
        wake_recv.bind(self._wake_url)
        send = self._ctx.socket(zmq.PUSH)
        send.setsockopt(zmq.LINGER, 0)
        send.connect(self._wake_url)
        self._wake_send = send
        try:
            self._bind(sock)
            endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self.bound_port = int(endpoint.rsplit(":", 1)[1]) if endpoint.startswith("tcp://") else None
        except (zmq.ZMQError, OSError) as exc:
            self._error = OSError(f"cannot bind ZMQ socket to {self.url}: {exc}")
            self._ready.set()
            sock.close()
            wake_recv.close()
            send.close()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(wake_recv, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                self._heartbeat = time.monotonic()
                events = dict(poller.poll(_BACKLOG_POLL_MS if self._peers else _IDLE_POLL_MS))
                self._heartbeat = time.monotonic()
                if wake_recv in events:
                    while True:
                        try:
                            wake_recv.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                if sock in events:
                    # One request per round: a poll that finds the socket ready again costs less than
                    # the failed receive (a raised zmq.Again) that would end a burst.
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                    else:
                        self._handle(sock, frames)
                self._flush(sock)
        finally:
            self._flush(sock)
            with self._wake_lock:
                self._wake_send = None
                send.close()
            wake_recv.close()
            sock.close()

    def _bind(self, sock: zmq.Socket) -> None:
        if not self.url.startswith("ipc://"):
            sock.bind(self.url)
            return
        path = self.url[len("ipc://"):]
        old = os.umask(0o077)  # the socket file is born owner-only
        try:
            sock.bind(self.url)
        finally:
            os.umask(old)
        if self._ipc_mode is not None:
            os.chmod(path, self._ipc_mode)

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_send is not None:
                try:
                    self._wake_send.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    def _flush(self, sock: zmq.Socket) -> None:
        """Send what can be sent without blocking; park the rest per peer (bounded)."""
        for identity in list(self._peers):  # older replies first, in order
            peer = self._peers[identity]
            while peer.backlog and self._send(sock, peer.backlog[0]):
                peer.backlog.popleft()
            if not peer.backlog:
                del self._peers[identity]
        while self._outbox:
            frames = self._outbox.popleft()
            peer = self._peers.get(frames[0])
            if peer is None and self._send(sock, frames):
                continue
            if peer is None:
                peer = self._peers[frames[0]] = _Peer()
            if len(peer.backlog) < self._peer_backlog_limit:
                peer.backlog.append(frames)
                continue
            peer.dropped += 1
            self.replies_dropped += 1
            ZMQ_REQUESTS.labels("reply", "dropped").inc()
            self._log_once(f"reply dropped: peer {frames[0].hex()[:16]} does not read its replies "
                           f"({peer.dropped} dropped so far)")

    def _send(self, sock: zmq.Socket, frames: list[bytes]) -> bool:
        """One non-blocking send: True when sent or undeliverable (peer gone), False when its pipe is full."""
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the client went away
            self._log_once(f"reply dropped: {exc}")
        return True

    # -- dispatch ------------------------------------------------------------

    def _handle(self, sock: zmq.Socket, frames: list[bytes]) -> None:
        identity, rest = frames[0], frames[1:]
        if rest and len(rest[0]) > MAX_UID_FRAME_BYTES:
            ZMQ_REQUESTS.labels("unknown", "malformed").inc()
            self._log_once(f"request dropped: uid frame of {len(rest[0])} bytes (at most {MAX_UID_FRAME_BYTES})")
            return
        try:
            request = wire.decode_request(rest)
        except wire.MalformedRequest as exc:
            ZMQ_REQUESTS.labels(exc.op_name or "unknown", "malformed").inc()
            self._log_once(f"malformed request: {exc}")
            if exc.uid_frame is not None:  # no frames at all: nothing to answer to
                self._outbox.append([identity, *wire.encode_error_reply(exc.uid_frame, str(exc))])
            return
        if isinstance(request, wire.StreamControl):  # we serve no streams (get_experimental lists none)
            ZMQ_REQUESTS.labels("stream_control", "unsupported").inc()
            self._outbox.append([identity, *wire.encode_error_reply(request.uid_frame, "no stream is open")])
            return
        spec = self.handlers.get(request.op)
        if spec is None:
            ZMQ_REQUESTS.labels(request.op.name.lower(), "unsupported").inc()
            self._log_once(f"unsupported operation {request.op.name}")
            self._outbox.append([identity, *wire.encode_error_reply(request.uid_frame,
                                                                   f"unsupported operation {request.op.name}")])
            return
        if spec.dispatch is Dispatch.SYNC:
            self._outbox.append([identity, *self._call(spec, request, identity)])
        elif spec.dispatch is Dispatch.SYNC_AFTER_REPLY:
            self._outbox.append([identity, *wire.encode_reply(request, spec.failure)])
            self._flush(sock)  # the reply (and any before it) leaves now
            self._call(spec, request, identity)  # counted and logged as any call; its value is not sent
        elif spec.dispatch is Dispatch.AFFINITY:
            self._affinity.submit(identity, lambda: self._pooled(spec, request, identity))
        else:
            self._normal.submit(self._pooled, spec, request, identity)

    def _pooled(self, spec: HandlerSpec, request: Any, identity: bytes) -> None:
        reply = self._call(spec, request, identity)
        self._outbox.append([identity, *reply])
        self._wake()

    def _call(self, spec: HandlerSpec, request: Any, identity: bytes) -> list[bytes]:
        op = request.op.name.lower()
        try:
            value = spec.fn(request.args, identity)
            reply = wire.encode_reply(request, value)
        except Exception as exc:
            ZMQ_REQUEST_CHILDREN(op, "failed").inc()
            self._log_once(f"{op} failed: {type(exc).__name__}: {exc}", exc_info=True)
            if spec.failure is NO_FALLBACK:
                return wire.encode_error_reply(request.uid_frame, f"{op} failed: {type(exc).__name__}")
            return wire.encode_reply(request, spec.failure)
        ZMQ_REQUEST_CHILDREN(op, "ok").inc()
        return reply
