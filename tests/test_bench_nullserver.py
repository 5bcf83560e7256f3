"""The benchmark's null server answers each op with a value of its reply type, so the real client accepts it."""

from __future__ import annotations

import threading

import pytest

from lmcache_core.bench import nullserver
from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.testing import free_port
from lmcache_core.transport import wire
from lmcache_core.transport.wire import Op


def test_it_answers_every_op_the_probe_sends_and_refuses_the_rest():
    url = f"tcp://127.0.0.1:{free_port()}"
    thread = threading.Thread(target=nullserver.serve, args=(url, 6), daemon=True)
    thread.start()
    client = LMCacheClient(url, timeout_s=10)
    try:
        assert client.noop() == "OK"
        assert client.get_chunk_size() == 256
        key = make_key(list(range(2048)), "r")
        assert client.lookup(key) == nullserver.PREFIX_CHUNKS  # LOOKUP (no reply frame), then QUERY
        assert client.store(make_key(list(range(256)), "r", worker_id=0), 1, [list(range(16))]) == (b"", True)
        with pytest.raises(wire.ErrorReply):
            client.call(Op.P2P_QUERY_LOOKUP_RESULTS, 1)  # a reply type it has no canned value for
    finally:
        client.close()
    thread.join(timeout=10)
    assert not thread.is_alive()  # it stopped after its 6 requests


def test_every_canned_reply_decodes_as_its_ops_reply_type():
    for op, frame in nullserver.canned_replies().items():
        if frame is not None:
            wire.decode_reply(op, [b"\x01", wire.encode_operation(op), frame])
