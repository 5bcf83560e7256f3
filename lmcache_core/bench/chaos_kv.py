"""The chaos harness's worker side: models, the bytes every chunk must hold, and a verifying engine client.

A chunk's KV bytes are a pure function of ``(model, cache_salt, token prefix up
to the end of the chunk)`` (:func:`chunk_seed`), so whichever worker stored a
chunk, and whatever the server did with it since (eviction, L2 write-behind,
prefetch, a restart from the FS L2), every byte a reader gets back can be
checked against what it must be. Values are integers in [-1024, 1024), exact in
fp16, so equality is bitwise.

Three models with different object sizes (mixed slab classes in L1):

* ``chaos-a``: lmcache-driven (CPU shared-memory KV cache), 2 layers x 2 heads x 8: 32 KiB per chunk;
* ``chaos-b``: lmcache-driven, 2 layers x 4 heads x 8: 64 KiB per chunk;
* ``chaos-e``: engine-driven (pickled tensors over the wire), 2 layers, hidden 24: 48 KiB per chunk.
"""

from __future__ import annotations

import hashlib
import random
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmcache_core.client import ClientTimeout, LMCacheClient, make_key
from lmcache_core.transfer.client_kv import WorkerKVCache
from lmcache_core.transfer.tensor_pickle import dumps_tensors, loads_tensors
from lmcache_core.transport import messages as m
from lmcache_core.transport.wire import ErrorReply, Op

CHUNK = 256  # the server's --chunk-size
BLOCK = 16
BPC = CHUNK // BLOCK
MAX_CHUNKS = 4
REGION_A = BPC  # block 0 is the null block; region A holds what is stored, region B receives retrieves
REGION_B = REGION_A + MAX_CHUNKS * BPC
NUM_BLOCKS = REGION_B + MAX_CHUNKS * BPC
SENTINEL = 4096.0  # outside the value range: an unwritten block cannot pass as data
SALTS = ("", "tenant-1", "tenant-2")
FAMILIES = 24  # prefix families: sequences overlap within a family


@dataclass(frozen=True)
class Model:
    name: str
    engine_driven: bool
    layers: int
    heads: int
    head_size: int

    @property
    def hidden(self) -> int:
        return self.heads * self.head_size

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """The shape of one chunk as the worker holds it."""
        if self.engine_driven:
            return (2, self.layers, CHUNK, self.hidden)
        return (self.layers, 2, BPC, BLOCK, self.heads, self.head_size)

    @property
    def chunk_nbytes(self) -> int:
        n = 2
        for d in self.chunk_shape:
            n *= d
        return n


MODELS = (Model("chaos-a", False, 2, 2, 8), Model("chaos-b", False, 2, 4, 8), Model("chaos-e", True, 2, 3, 8))


def tokens_for(family: int, variant: int, n_chunks: int) -> list[int]:
    """A sequence of ``n_chunks`` chunks: the first chunk is the family's, the rest depend on ``variant``
    at the chunk boundary where it diverges, so sequences share prefixes of 1..n chunks."""
    out: list[int] = []
    for c in range(n_chunks):
        tag = family * 1000 + (0 if c == 0 else (variant % (c + 1)) * 10 + c)
        rng = random.Random(tag)
        out.extend(rng.randrange(1, 50_000) for _ in range(CHUNK))
    return out


def chunk_seed(model: str, salt: str, tokens: Sequence[int], i: int) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update(model.encode())
    h.update(b"\0")
    h.update(salt.encode())
    h.update(b"\0")
    h.update(array("I", tokens[:(i + 1) * CHUNK]).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def expected_chunk(model: Model, salt: str, tokens: Sequence[int], i: int) -> torch.Tensor:
    """Chunk ``i``'s bytes (fp16 integers) for ``model``/``salt``: a pure function of its prefix."""
    g = torch.Generator().manual_seed(chunk_seed(model.name, salt, tokens, i))
    return torch.randint(-1024, 1024, model.chunk_shape, generator=g, dtype=torch.int32).to(torch.float16)


def wrong_bytes(got: torch.Tensor, want: torch.Tensor) -> int:
    """How many bytes of ``got`` differ from ``want`` (all of them when the shapes differ)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return want.numel() * want.element_size()
    return int((got.contiguous().view(torch.uint8) != want.contiguous().view(torch.uint8)).sum())


class ServerGone(ConnectionError):
    """The server did not answer in time (killed, restarting): reconnect and register again."""


class KVWorker:
    """One engine worker: a KV cache per lmcache-driven model, an engine-driven context, one client.

    ``round`` does what vLLM does for one request: LOOKUP, RETRIEVE the hit prefix (every
    byte verified), STORE the rest, END_SESSION. Counters are in :attr:`stats`.
    """

    def __init__(self, url: str, base_iid: int, *, timeout_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.iids = {mdl.name: base_iid + k for k, mdl in enumerate(MODELS)}
        self.kv = {mdl.name: WorkerKVCache(mdl.layers, (2, NUM_BLOCKS, BLOCK, mdl.heads, mdl.head_size))
                   for mdl in MODELS if not mdl.engine_driven}
        self.client = LMCacheClient(url, timeout_s=timeout_s)
        self.stats: Counter[str] = Counter()
        self.wrong: list[dict[str, Any]] = []  # each wrong chunk, for the harness to report (then emptied)

    def shm_names(self) -> list[str]:
        return [d.descriptor.shm_name for kv in self.kv.values() for d in kv.descriptors()]

    # -- connection ------------------------------------------------------------------------

    def register(self) -> None:
        for mdl in MODELS:
            iid = self.iids[mdl.name]
            if mdl.engine_driven:
                payload = m.RegisterEngineDrivenContextPayload(iid, mdl.name, 1, BLOCK, mdl.layers, mdl.hidden,
                                                               "float16", False, CHUNK)
                self._call(Op.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT, payload)
            else:
                self._call(Op.REGISTER_KV_CACHE, iid, self.kv[mdl.name].descriptors(), mdl.name, 1,
                           m.EngineType.VLLM, {"kv_layout": "NHD"}, [])
        self.stats["registrations"] += 1

    def reconnect(self) -> None:
        """A fresh socket (whatever was queued on the old one is dropped), then register again."""
        self.client.close()
        self.client = LMCacheClient(self.url, timeout_s=self.timeout_s)
        self.register()
        self.stats["reconnects"] += 1

    def ping_all(self) -> None:
        for iid in self.iids.values():
            self._call(Op.PING, iid)

    def unregister(self) -> None:
        for mdl in MODELS:
            op = Op.UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT if mdl.engine_driven else Op.UNREGISTER_KV_CACHE
            self._call(op, self.iids[mdl.name])

    def close(self) -> None:
        self.client.close()
        for kv in self.kv.values():
            kv.close()

    def _call(self, op: Op, *args: object) -> object:
        try:
            return self.client.call(op, *args)
        except ClientTimeout as exc:
            raise ServerGone(str(exc)) from None

    # -- one request -----------------------------------------------------------------------

    def lookup(self, mdl: Model, salt: str, tokens: list[int], rid: str) -> int:
        self._call(Op.LOOKUP, make_key(tokens, rid, model_name=mdl.name, cache_salt=salt), 1)
        self.stats["op_lookup"] += 1
        deadline = time.monotonic() + self.timeout_s
        while True:
            hits = self._call(Op.QUERY_PREFETCH_STATUS, rid)
            self.stats["op_query"] += 1
            if hits is not None:
                return int(hits)  # type: ignore[call-overload]
            if time.monotonic() > deadline:
                raise ServerGone(f"prefetch of {rid} still pending after {self.timeout_s} s")
            time.sleep(0.002)  # polling a pending L2 prefetch, as the vLLM scheduler does

    def round(self, mdl: Model, salt: str, tokens: list[int], rid: str) -> None:
        n = len(tokens) // CHUNK
        hits = self.lookup(mdl, salt, tokens, rid)
        if not 0 <= hits <= n:
            self.stats["bad_hit_counts"] += 1
            hits = 0
        self.stats["chunks_hit"] += hits
        self.stats["chunks_missed"] += n - hits
        if hits:
            self.retrieve(mdl, salt, tokens, rid, hits)
        if hits < n:
            self.store(mdl, salt, tokens, rid, hits, n)
        self._call(Op.END_SESSION, rid)
        self.stats["op_end_session"] += 1
        self.stats["rounds"] += 1

    def retrieve(self, mdl: Model, salt: str, tokens: list[int], rid: str, hits: int) -> None:
        key = make_key(tokens, rid, model_name=mdl.name, worker_id=0, end=hits * CHUNK, cache_salt=salt)
        iid = self.iids[mdl.name]
        self.stats["op_retrieve"] += 1
        if mdl.engine_driven:
            reply = self._call(Op.PREPARE_RETRIEVE, key, iid)
            if not reply.success:  # type: ignore[attr-defined]
                self.stats["retrieve_failed"] += 1
                return
            got = loads_tensors(reply.data)  # type: ignore[attr-defined]
            if len(got) != hits:
                self.stats["retrieve_wrong_count"] += 1
                return
        else:
            kv = self.kv[mdl.name]
            for layer in kv.layers:
                layer[:, REGION_B:REGION_B + hits * BPC] = SENTINEL
            blocks = [list(range(REGION_B, REGION_B + hits * BPC))]
            if tuple(self._call(Op.RETRIEVE, key, iid, blocks, b"", 0)) != (b"", True):  # type: ignore[arg-type]
                self.stats["retrieve_failed"] += 1
                return
            got = [torch.stack([layer[:, REGION_B + i * BPC:REGION_B + (i + 1) * BPC] for layer in kv.layers])
                   for i in range(hits)]
        for i in range(hits):
            want = expected_chunk(mdl, salt, tokens, i)
            bad = wrong_bytes(got[i], want)
            self.stats["bytes_verified"] += want.numel() * want.element_size()
            self.stats["chunks_verified"] += 1
            if bad:
                self.stats["wrong_bytes"] += bad
                self.stats["wrong_chunks"] += 1
                self.wrong.append({"model": mdl.name, "engine_driven": mdl.engine_driven, "salt": salt, "rid": rid,
                                   "chunk": i, "hits": hits, "wrong_bytes": bad, "at": time.time()})

    def store_key(self, mdl: Model, salt: str, tokens: list[int], rid: str, first: int, n: int) -> m.IPCCacheServerKey:
        return make_key(tokens, rid, model_name=mdl.name, worker_id=0, start=first * CHUNK, end=n * CHUNK,
                        cache_salt=salt)

    def prepare_store(self, mdl: Model, salt: str, tokens: list[int], first: int, n: int) -> list[list[int]]:
        """Write chunks ``first..n-1`` into region A; the block ids a STORE names."""
        kv = self.kv[mdl.name]
        for i in range(first, n):
            chunk = expected_chunk(mdl, salt, tokens, i)
            for layer, data in zip(kv.layers, chunk):
                layer[:, REGION_A + i * BPC:REGION_A + (i + 1) * BPC] = data
        return [list(range(REGION_A + first * BPC, REGION_A + n * BPC))]

    def store(self, mdl: Model, salt: str, tokens: list[int], rid: str, first: int, n: int) -> bool:
        key = self.store_key(mdl, salt, tokens, rid, first, n)
        iid = self.iids[mdl.name]
        self.stats["op_store"] += 1
        if mdl.engine_driven:
            data = dumps_tensors([expected_chunk(mdl, salt, tokens, i) for i in range(first, n)])
            ok = self._call(Op.COMMIT_STORE, key, iid, data) is True
        else:
            blocks = self.prepare_store(mdl, salt, tokens, first, n)
            ok = tuple(self._call(Op.STORE, key, iid, blocks, b"")) == (b"", True)  # type: ignore[arg-type]
        if ok:
            self.stats["chunks_stored"] += n - first
        else:
            self.stats["store_failed"] += 1
        return ok


def pick_request(rng: random.Random) -> tuple[Model, str, list[int]]:
    """A random request: a model, a salt and an overlapping-prefix token sequence of 1..MAX_CHUNKS chunks."""
    mdl = rng.choice(MODELS)
    salt = rng.choice(SALTS)
    n = rng.randint(1, MAX_CHUNKS)
    return mdl, salt, tokens_for(rng.randrange(FAMILIES), rng.randrange(6), n)


__all__ = ["CHUNK", "MODELS", "ErrorReply", "KVWorker", "Model", "ServerGone", "expected_chunk", "pick_request",
           "tokens_for", "wrong_bytes"]
