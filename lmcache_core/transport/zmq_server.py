"""The ZMQ ROUTER server: one loop thread owns the socket; handlers run inline or on pools.

* ``SYNC`` handlers (cheap, no I/O: ``noop``, ``get_chunk_size``, registration)
  run on the loop thread.
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
failure is logged once per distinct reason, counted, and the loop keeps serving.
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import zmq
from prometheus_client import Counter

from lmcache_core.transport import wire

logger = logging.getLogger(__name__)

ZMQ_REQUESTS = Counter("lmcache_mp_zmq_requests", "ZMQ requests by operation and outcome", ["op", "outcome"])


class Dispatch(enum.Enum):
    SYNC = "sync"
    AFFINITY = "affinity"
    NORMAL = "normal"


NO_FALLBACK = object()
"""``HandlerSpec.failure``: answer a failing handler with the ``"error"`` reply."""


@dataclass(frozen=True)
class HandlerSpec:
    """How one op is served: the function ``fn(args, identity) -> value``, where it runs, its failure value."""

    fn: Callable[[Any, bytes], Any]
    dispatch: Dispatch
    failure: Any = NO_FALLBACK


class _OnceLogger:
    """Logs each distinct failure reason once (a misbehaving client must not flood the log)."""

    def __init__(self, limit: int = 1024) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._lock = threading.Lock()

    def __call__(self, reason: str, exc_info: bool = False) -> None:
        with self._lock:
            if reason in self._seen or len(self._seen) >= self._limit:
                return
            self._seen.add(reason)
        logger.warning("%s", reason, exc_info=exc_info)


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


class ZmqServer:
    """Serves ``handlers`` on a ROUTER socket bound to ``url`` until :meth:`stop`."""

    def __init__(
        self,
        url: str,
        handlers: Mapping[wire.Op, HandlerSpec],
        *,
        gpu_workers: int = 1,
        cpu_workers: int = 1,
        context: zmq.Context | None = None,
    ) -> None:
        self.url = url
        self.handlers = dict(handlers)
        self._ctx = context or zmq.Context.instance()
        self._affinity = AffinityPool(max(1, gpu_workers))
        self._normal = ThreadPoolExecutor(max(1, cpu_workers), thread_name_prefix="lmcache-normal")
        self._outbox: collections.deque[list[bytes]] = collections.deque()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lmcache-zmq-loop", daemon=True)
        self._log_once = _OnceLogger()
        self._wake_url = f"inproc://lmcache-zmq-wake-{id(self)}"
        self._wake_lock = threading.Lock()
        self._wake_send: zmq.Socket | None = None
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

    # -- loop ----------------------------------------------------------------

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        wake_recv = self._ctx.socket(zmq.PULL)
        wake_recv.bind(self._wake_url)
        send = self._ctx.socket(zmq.PUSH)
        send.setsockopt(zmq.LINGER, 0)
        send.connect(self._wake_url)
        self._wake_send = send
        try:
            sock.bind(self.url)
            endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self.bound_port = int(endpoint.rsplit(":", 1)[1]) if endpoint.startswith("tcp://") else None
        except zmq.ZMQError as exc:
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
                events = dict(poller.poll(500))
                if wake_recv in events:
                    while True:
                        try:
                            wake_recv.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                if sock in events:
                    for _ in range(64):  # bounded burst, then flush replies
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(frames)
                self._flush(sock)
        finally:
            self._flush(sock)
            with self._wake_lock:
                self._wake_send = None
                send.close()
            wake_recv.close()
            sock.close()

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_send is not None:
                try:
                    self._wake_send.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    def _flush(self, sock: zmq.Socket) -> None:
        while self._outbox:
            frames = self._outbox.popleft()
            try:
                sock.send_multipart(frames)
            except zmq.ZMQError as exc:  # EHOSTUNREACH: the client went away
                self._log_once(f"reply dropped: {exc}")

    # -- dispatch ------------------------------------------------------------

    def _handle(self, frames: list[bytes]) -> None:
        identity, rest = frames[0], frames[1:]
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
            ZMQ_REQUESTS.labels(op, "failed").inc()
            self._log_once(f"{op} failed: {type(exc).__name__}: {exc}", exc_info=True)
            if spec.failure is NO_FALLBACK:
                return wire.encode_error_reply(request.uid_frame, f"{op} failed: {type(exc).__name__}")
            return wire.encode_reply(request, spec.failure)
        ZMQ_REQUESTS.labels(op, "ok").inc()
        return reply
