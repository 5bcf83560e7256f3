"""A ZMQ server that answers every data-path op at once and does nothing: the transport's own floor.

``bench datapath`` runs LMCache 0.5.6's client against it beside lmcache-server and LMCache's
server. Whatever a LOOKUP costs here above two NOOPs is the client's work (building and
encoding the 2048-token key) and the wire's (6 KB instead of a few bytes): no server can go
below it. It decodes only the operation frame and replies with a canned value of the op's reply
type (every chunk "hit", every transfer "done"), on one thread with a blocking receive::

    python -m lmcache_core.bench.nullserver tcp://127.0.0.1:5555
"""

from __future__ import annotations

import sys

import msgspec
import zmq

from lmcache_core.hashing import DEFAULT_CHUNK_SIZE
from lmcache_core.transport import messages as m
from lmcache_core.transport.wire import OP_SPECS, MalformedRequest, Op, decode_operation

PREFIX_CHUNKS = 8  # what the probe's 2048-token prefix hits on a real server


def canned_replies(hit_chunks: int = PREFIX_CHUNKS) -> dict[Op, bytes | None]:
    """The reply frame of each op (None: the op replies with no frame)."""
    enc = msgspec.msgpack.encode
    replies: dict[Op, bytes | None] = {op: None for op, spec in OP_SPECS.items() if spec.response_type is None}
    replies.update({
        Op.NOOP: enc("OK"), Op.GET_CHUNK_SIZE: enc(DEFAULT_CHUNK_SIZE), Op.GET_EXPERIMENTAL: enc([]),
        Op.PING: enc(True), Op.STORE: enc((b"", True)), Op.RETRIEVE: enc((b"", True)),
        Op.QUERY_PREFETCH_STATUS: enc(hit_chunks), Op.WAIT_PREFETCH_STATUS: enc(hit_chunks),
        Op.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT: enc(m.RegisterEngineDrivenContextResponse(shm_name="",
                                                                                             pool_size=0)),
    })
    return replies


def serve(url: str, max_requests: int | None = None) -> None:
    """Answer requests on ``url`` until killed (or after ``max_requests``)."""
    replies = canned_replies()
    error, unsupported = msgspec.msgpack.encode("error"), msgspec.msgpack.encode({"error": "unsupported"})
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(url)
    served = 0
    while max_requests is None or served < max_requests:
        frames = sock.recv_multipart()
        served += 1
        identity, uid, op_frame = frames[0], frames[1], frames[2]
        try:
            op: Op | None = decode_operation(op_frame)
        except MalformedRequest:  # a frame we cannot name
            op = None
        if op not in replies:  # unnamed, or a reply type it has no canned value for
            sock.send_multipart([identity, uid, error, unsupported])
            continue
        reply = replies[op]
        if reply is None:
            sock.send_multipart([identity, uid, op_frame])
        else:
            sock.send_multipart([identity, uid, op_frame, reply])


if __name__ == "__main__":
    serve(sys.argv[1])
