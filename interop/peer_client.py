"""Drive an LMCache MP server with the REAL lmcache 0.5.6 client library.

Run with the peer venv's python (it imports ``lmcache``, which lmcache-server
never does): ``<peer venv>/bin/python interop/peer_client.py tcp://127.0.0.1:PORT``.
Prints one JSON object with every check; exits non-zero if one failed.

Workload: register a CPU KV cache (migrated to shared memory by the client),
store random KV for 512 tokens, zero the destination blocks, lookup, retrieve
into other blocks and compare every byte; a partial-prefix hit; cache_salt
isolation; a freed lookup; end every session. Given the server's HTTP URL as a
second argument (a server with an L2): wait for the write-behind, POST
/clear-cache, and the same lookup must hit from L2 and retrieve equal bytes.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from lmcache.utils import EngineType
from lmcache.v1.multiprocess.custom_types import IPCCacheServerKey
from lmcache.v1.multiprocess.transport.factory import RequestClientFactory
from lmcache.v1.platform.devices.cpu.shm import migrate_to_shm_and_wrap

TIMEOUT = 30.0
MODEL = "interop-model"
IID = 424242
BLOCK, BPC = 16, 16


def key(tokens, request_id, worker_id=None, salt="", start=0, end=None):
    return IPCCacheServerKey(model_name=MODEL, world_size=1, worker_id=worker_id, token_ids=tuple(tokens),
                             start=start, end=len(tokens) if end is None else end, request_id=request_id,
                             cache_salt=salt, num_kv_readers=1)


def main(url: str, http_url: str | None = None) -> int:
    client = RequestClientFactory.create(url)
    checks: dict[str, object] = {}
    try:
        chunk = client.get_chunk_size().result(TIMEOUT)
        checks["chunk_size"] = chunk
        layers = [torch.zeros(2, 64, BLOCK, 2, 64, dtype=torch.float16) for _ in range(2)]
        wrappers = [migrate_to_shm_and_wrap(t) for t in layers]
        client.register_kv_cache(IID, wrappers, MODEL, 1, EngineType.VLLM, {"kv_layout": "NHD"}, []).result(TIMEOUT)
        gen = torch.Generator().manual_seed(7)
        for t in layers:
            t[:, :32].copy_(torch.randn(t[:, :32].shape, generator=gen).to(torch.float16))
        tokens = list(range(1000, 1512))

        def lookup(k):
            client.lookup(k, 1).result(TIMEOUT)
            while True:
                hits = client.query_prefetch_status(k.request_id).result(TIMEOUT)
                if hits is not None:
                    return hits

        checks["cold_lookup_hits"] = lookup(key(tokens, "cold"))
        handle, ok = client.store(key(tokens, "cold", worker_id=0), IID, [list(range(32))], b"stub").result(TIMEOUT)
        checks["store_ok"] = ok
        client.end_session("cold").result(TIMEOUT)
        for t in layers:
            t[:, 32:].zero_()
        # LMCache finishes a store's copy after replying: a lookup may briefly miss there.
        deadline = time.monotonic() + 10
        while True:
            hits = lookup(key(tokens, "warm"))
            if hits == 2 or time.monotonic() > deadline:
                break
            client.end_session("warm").result(TIMEOUT)
            time.sleep(0.05)
        checks["warm_lookup_hits"] = hits
        _, ok = client.retrieve(key(tokens, "warm", worker_id=0), IID, [list(range(32, 64))], b"stub", 0
                                ).result(TIMEOUT)
        checks["retrieve_ok"] = ok
        checks["bytes_equal"] = all(torch.equal(t[:, :32], t[:, 32:]) for t in layers)
        client.end_session("warm").result(TIMEOUT)
        partial = tokens[:256] + [5] * 256
        checks["partial_prefix_hits"] = lookup(key(partial, "partial"))
        client.free_lookup_locks(key(partial, "partial"), 1).result(TIMEOUT)
        client.end_session("partial").result(TIMEOUT)
        checks["salted_hits"] = lookup(key(tokens, "salted", salt="alice"))
        client.end_session("salted").result(TIMEOUT)
        checks["ping"] = client.ping(IID).result(TIMEOUT)
        if http_url:  # the server has an L2: stored chunks come back from it after L1 is cleared
            import urllib.request

            def status() -> dict:
                with urllib.request.urlopen(f"{http_url}/status", timeout=10) as r:
                    return json.loads(r.read())

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                sc = status()["storage_manager"]["store_controller"]
                if sc["pending_keys_count"] == 0 and sc["stored_keys"] >= 2:
                    break
                time.sleep(0.05)
            req = urllib.request.Request(f"{http_url}/clear-cache", method="POST")
            with urllib.request.urlopen(req, timeout=10) as r:
                checks["clear_cache_status"] = r.status
            for t in layers:
                t[:, 32:].zero_()
            checks["l2_lookup_hits"] = lookup(key(tokens, "from-l2"))
            _, ok = client.retrieve(key(tokens, "from-l2", worker_id=0), IID, [list(range(32, 64))], b"stub", 0
                                    ).result(TIMEOUT)
            checks["l2_retrieve_ok"] = ok
            checks["l2_bytes_equal"] = all(torch.equal(t[:, :32], t[:, 32:]) for t in layers)
            client.end_session("from-l2").result(TIMEOUT)
        client.unregister_kv_cache(IID).result(TIMEOUT)
    finally:
        client.close()
    expected = {"chunk_size": 256, "cold_lookup_hits": 0, "store_ok": True, "warm_lookup_hits": 2,
                "retrieve_ok": True, "bytes_equal": True, "partial_prefix_hits": 1, "salted_hits": 0, "ping": True}
    if http_url:
        expected.update({"clear_cache_status": 200, "l2_lookup_hits": 2, "l2_retrieve_ok": True,
                         "l2_bytes_equal": True})
    failed = {k: (checks.get(k), v) for k, v in expected.items() if checks.get(k) != v}
    print(json.dumps({"checks": checks, "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
