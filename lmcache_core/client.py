"""Our own engine-side client of the LMCache 0.5.6 wire protocol (tests, benchmarks, tools).

One DEALER socket, one request in flight at a time (calls are serialised by a
lock); replies are matched by uid. Every op of the protocol is reachable with
:meth:`LMCacheClient.call`; the common ones have typed helpers. A reply that
is the server's ``"error"`` reply raises :class:`~lmcache_core.transport.wire.ErrorReply`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq

from lmcache_core.transport import messages as m
from lmcache_core.transport import wire
from lmcache_core.transport.wire import Op


class ClientTimeout(TimeoutError):
    """No reply within the client's timeout."""


class LMCacheClient:
    """A synchronous client; ``url`` like ``tcp://127.0.0.1:5555``."""

    def __init__(self, url: str, timeout_s: float = 30.0, context: zmq.Context | None = None) -> None:
        self.url = url
        self.timeout_ms = int(timeout_s * 1000)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(url)
        self._uids = itertools.count()
        self._lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> LMCacheClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def send_raw(self, frames: Sequence[bytes]) -> list[bytes]:
        """Send arbitrary frames; return the next reply's frames (tests of malformed input)."""
        with self._lock:
            self._sock.send_multipart(list(frames))
            return self._recv()

    def _recv(self) -> list[bytes]:
        if not self._sock.poll(self.timeout_ms, zmq.POLLIN):
            raise ClientTimeout(f"no reply from {self.url} within {self.timeout_ms} ms")
        return self._sock.recv_multipart()

    def call(self, op: Op, *args: Any) -> Any:
        """Send ``op`` with ``args`` (defaults filled as the real client does); return the decoded reply."""
        with self._lock:
            uid = next(self._uids)
            self._sock.send_multipart(wire.encode_request(uid, op, *args))
            while True:
                frames = self._recv()
                if wire.reply_uid(frames) == uid:
                    return wire.decode_reply(op, frames)

    # -- typed helpers -------------------------------------------------------------------

    def noop(self) -> str:
        return self.call(Op.NOOP)

    def get_chunk_size(self) -> int:
        return self.call(Op.GET_CHUNK_SIZE)

    def ping(self, instance_id: int | None = None) -> bool:
        return self.call(Op.PING, instance_id)

    def register_kv_cache(self, instance_id: int, descriptors: Sequence[Any], model_name: str, world_size: int,
                          layout_hints: dict[str, Any] | None = None,
                          engine_group_infos: Sequence[m.EngineGroupInfo] = ()) -> None:
        return self.call(Op.REGISTER_KV_CACHE, instance_id, list(descriptors), model_name, world_size,
                         m.EngineType.VLLM, dict(layout_hints or {}), list(engine_group_infos))

    def unregister_kv_cache(self, instance_id: int) -> None:
        return self.call(Op.UNREGISTER_KV_CACHE, instance_id)

    def store(self, key: m.IPCCacheServerKey, instance_id: int, block_ids: Sequence[Sequence[int]],
              event: bytes = b"") -> tuple[bytes, bool]:
        return tuple(self.call(Op.STORE, key, instance_id, [list(b) for b in block_ids], event))  # type: ignore

    def retrieve(self, key: m.IPCCacheServerKey, instance_id: int, block_ids: Sequence[Sequence[int]],
                 skip_first_n_tokens: int = 0, event: bytes = b"") -> tuple[bytes, bool]:
        return tuple(self.call(Op.RETRIEVE, key, instance_id, [list(b) for b in block_ids], event,  # type: ignore
                               skip_first_n_tokens))

    def lookup(self, key: m.IPCCacheServerKey, timeout_s: float | None = None) -> int:
        """LOOKUP, then QUERY_PREFETCH_STATUS until it answers: the hit chunk count.

        Raises :class:`ClientTimeout` when the prefetch is still pending after
        ``timeout_s`` (default: the client's timeout).
        """
        self.call(Op.LOOKUP, key, 1)
        deadline = time.monotonic() + (self.timeout_ms / 1000 if timeout_s is None else timeout_s)
        while True:
            hits = self.call(Op.QUERY_PREFETCH_STATUS, key.request_id)
            if hits is not None:
                return hits
            if time.monotonic() > deadline:
                raise ClientTimeout(f"prefetch of {key.request_id!r} still pending")
            time.sleep(0.001)  # pending L2 loads: poll as the vLLM scheduler does, without spinning

    def free_lookup_locks(self, key: m.IPCCacheServerKey) -> None:
        return self.call(Op.FREE_LOOKUP_LOCKS, key, 1)

    def end_session(self, request_id: str) -> None:
        return self.call(Op.END_SESSION, request_id)

    def clear(self, force: bool = True) -> None:
        return self.call(Op.CLEAR, force)


def make_key(tokens: Sequence[int], request_id: str, *, model_name: str = "test-model", world_size: int = 1,
             worker_id: int | None = None, start: int = 0, end: int | None = None, cache_salt: str = "",
             num_kv_readers: int = 1) -> m.IPCCacheServerKey:
    """An ``IPCCacheServerKey`` as the vLLM connector builds it (``end`` defaults to all tokens)."""
    return m.IPCCacheServerKey(
        model_name=model_name, world_size=world_size, worker_id=worker_id, token_ids=list(tokens), start=start,
        end=len(tokens) if end is None else end, request_id=request_id, cache_salt=cache_salt,
        num_kv_readers=num_kv_readers,
    )
