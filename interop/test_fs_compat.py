"""The fs L2 directory is interchangeable with LMCache 0.5.6's (``make interop``): compatibility both ways.

Each writer -- the real LMCache server and lmcache-server -- is started once per
module with an fs L2 on its own directory, given the same deterministic KV for
the same tokens through our client (it speaks the real wire protocol, so it
drives either server), and stopped once every object is on disk. Then:

* the other server is started on that directory with an empty L1 and a fresh
  KV cache of zeros: LOOKUP hits every chunk (from the L2 alone) and RETRIEVE
  gives back exactly the stored bytes;
* the two directories hold the same file names with the same sizes (and bytes).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lmcache_core.bench.peer import PEER_ENV, peer_server_cmd
from lmcache_core.client import LMCacheClient, make_key
from lmcache_core.testing import free_port, server_process
from lmcache_core.transfer.client_kv import WorkerKVCache

CHUNK = 256
BLOCK = 16
BPC = CHUNK // BLOCK
N_CHUNKS = 3
NUM_BLOCKS = 64
SHAPE = (2, NUM_BLOCKS, BLOCK, 2, 8)  # NHD: (K/V, blocks, block size, heads, head size)
NUM_LAYERS = 2
MODEL = "org/fs-compat-model"  # a "/" exercises the file-name escaping both servers must agree on
TOKENS = list(range(5000, 5000 + N_CHUNKS * CHUNK))
SEED = 20240611
WRITE_DEADLINE_S = 60.0
CLIENT_TIMEOUT_S = 30.0


@dataclass
class Served:
    """A server process and its endpoints."""

    zmq_url: str
    http_url: str
    proc: subprocess.Popen


@dataclass
class Written:
    """A directory one server wrote, the KV bytes stored into it, and its listing right after the writer stopped."""

    base_path: Path
    stored: list[torch.Tensor]
    listing: dict[str, int]
    contents: dict[str, bytes]


def _clean_env(**extra: str) -> dict[str, str]:
    # LMCACHE_* variables configure both servers: a developer's shell must not change what is tested.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env.update(extra)
    return env


def _adapter(base_path: Path) -> str:
    return json.dumps({"type": "fs", "base_path": str(base_path)})


@contextlib.contextmanager
def _serve(cmd: list[str], env: dict[str, str], zp: int, hp: int, log: Path) -> Iterator[Served]:
    with server_process(cmd, f"http://127.0.0.1:{hp}/healthcheck", env=env, log=log) as proc:
        yield Served(f"tcp://127.0.0.1:{zp}", f"http://127.0.0.1:{hp}", proc)


def serve_ours(base_path: Path, log: Path) -> contextlib.AbstractContextManager[Served]:
    """lmcache-server with an fs L2 on ``base_path``."""
    zp, hp = free_port(), free_port()
    return _serve([sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
                   "--http-port", str(hp), "--l1-size-gb", "1", "--log-level", "WARNING",
                   "--l2-adapter", _adapter(base_path)], _clean_env(), zp, hp, log)


def serve_theirs(peer_python: Path, base_path: Path, log: Path) -> contextlib.AbstractContextManager[Served]:
    """The real LMCache 0.5.6 server with an fs L2 on ``base_path`` (the arguments of ``run-peer.sh``)."""
    zp, hp = free_port(), free_port()
    return _serve(peer_server_cmd(peer_python.parent / "lmcache", zp, hp, 1, "--supported-transfer-mode", "auto",
                                  "--l2-adapter", _adapter(base_path)), _clean_env(**PEER_ENV), zp, hp, log)


def data_files(base_path: Path) -> dict[str, int]:
    """Finished objects in ``base_path``: ``{file name: size}`` (temp files are not ``*.data``)."""
    return {p.name: p.stat().st_size for p in base_path.iterdir() if p.is_file() and p.name.endswith(".data")}


def wait_for_files(base_path: Path, count: int, proc: subprocess.Popen) -> dict[str, int]:
    """Poll until ``count`` objects are on disk (both servers write behind); bounded by a deadline."""
    deadline = time.monotonic() + WRITE_DEADLINE_S
    while True:
        files = data_files(base_path)
        if len(files) >= count:
            return files
        assert proc.poll() is None, f"writer exited with {proc.returncode} before its files appeared"
        assert time.monotonic() < deadline, f"only {sorted(files)} of {count} objects after {WRITE_DEADLINE_S}s"
        time.sleep(0.02)


def wait_for_write_behind(http_url: str, count: int) -> dict:
    """Poll our /status until the store controller has nothing pending and ``count`` keys stored."""
    deadline = time.monotonic() + WRITE_DEADLINE_S
    while True:
        with urllib.request.urlopen(f"{http_url}/status", timeout=10) as resp:  # noqa: S310 (loopback)
            controller = json.loads(resp.read())["storage_manager"]["store_controller"]
        if controller["pending_keys_count"] == 0 and controller["stored_keys"] >= count:
            return controller
        assert time.monotonic() < deadline, f"write-behind not done after {WRITE_DEADLINE_S}s: {controller}"
        time.sleep(0.02)


def chunk_blocks(first: int) -> list[list[int]]:
    return [list(range(first, first + N_CHUNKS * BPC))]


def store_known_kv(served: Served, instance_id: int) -> list[torch.Tensor]:
    """Register a KV cache, fill blocks ``[0, N_CHUNKS*BPC)`` with seeded random KV, store them; return the bytes."""
    kv = WorkerKVCache(NUM_LAYERS, SHAPE)
    client = LMCacheClient(served.zmq_url, timeout_s=CLIENT_TIMEOUT_S)
    try:
        assert client.get_chunk_size() == CHUNK
        client.register_kv_cache(instance_id, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
        gen = torch.Generator().manual_seed(SEED)
        for layer in kv.layers:
            layer.copy_(torch.randn(layer.shape, generator=gen, dtype=torch.float32).to(layer.dtype))
        stored = [layer[:, :N_CHUNKS * BPC].clone() for layer in kv.layers]
        # Only the flag: the event handle differs by server and is no part of this acceptance.
        _, ok = client.store(make_key(TOKENS, "write", model_name=MODEL, worker_id=0), instance_id, chunk_blocks(0))
        assert ok is True
        client.end_session("write")
        client.unregister_kv_cache(instance_id)
        return stored
    finally:
        client.close()
        kv.close()


def lookup_and_retrieve(served: Served, instance_id: int) -> tuple[int, bool, list[torch.Tensor]]:
    """A fresh KV cache of zeros: (LOOKUP hits, RETRIEVE ok, the retrieved blocks)."""
    kv = WorkerKVCache(NUM_LAYERS, SHAPE)
    client = LMCacheClient(served.zmq_url, timeout_s=CLIENT_TIMEOUT_S)
    try:
        assert all(not layer.any() for layer in kv.layers)
        client.register_kv_cache(instance_id, kv.descriptors(), MODEL, 1, {"kv_layout": "NHD"})
        hits = client.lookup(make_key(TOKENS, "read", model_name=MODEL))
        _, ok = client.retrieve(make_key(TOKENS, "read", model_name=MODEL, worker_id=0), instance_id,
                                chunk_blocks(0))
        got = [layer[:, :N_CHUNKS * BPC].clone() for layer in kv.layers]
        client.end_session("read")
        client.unregister_kv_cache(instance_id)
        return hits, ok, got
    finally:
        client.close()
        kv.close()


def _snapshot(base_path: Path, stored: list[torch.Tensor]) -> Written:
    listing = data_files(base_path)
    return Written(base_path, stored, listing, {name: (base_path / name).read_bytes() for name in listing})


@pytest.fixture(scope="module")
def written_by_theirs(tmp_path_factory: pytest.TempPathFactory, peer_python: Path) -> Written:
    """A directory the real LMCache server wrote: the known KV for ``TOKENS`` as ``N_CHUNKS`` objects."""
    root = tmp_path_factory.mktemp("theirs")
    base = root / "l2"
    base.mkdir()
    with serve_theirs(peer_python, base, root / "writer.log") as served:
        stored = store_known_kv(served, 1001)
        wait_for_files(base, N_CHUNKS, served.proc)
    return _snapshot(base, stored)


@pytest.fixture(scope="module")
def written_by_ours(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """A directory lmcache-server wrote: the known KV for ``TOKENS`` as ``N_CHUNKS`` objects."""
    root = tmp_path_factory.mktemp("ours")
    base = root / "l2"
    base.mkdir()
    with serve_ours(base, root / "writer.log") as served:
        stored = store_known_kv(served, 2002)
        wait_for_write_behind(served.http_url, N_CHUNKS)
        wait_for_files(base, N_CHUNKS, served.proc)
    return _snapshot(base, stored)


def test_lmcache_writes_lmcache_server_serves(written_by_theirs: Written, tmp_path: Path) -> None:
    assert len(written_by_theirs.listing) == N_CHUNKS
    with serve_ours(written_by_theirs.base_path, tmp_path / "reader.log") as served:
        hits, ok, got = lookup_and_retrieve(served, 3003)
    assert (hits, ok) == (N_CHUNKS, True)
    for before, after in zip(written_by_theirs.stored, got, strict=True):
        assert torch.equal(before, after)
    assert data_files(written_by_theirs.base_path) == written_by_theirs.listing  # a reader rewrites nothing


def test_lmcache_server_writes_lmcache_serves(written_by_ours: Written, peer_python: Path, tmp_path: Path) -> None:
    assert len(written_by_ours.listing) == N_CHUNKS
    with serve_theirs(peer_python, written_by_ours.base_path, tmp_path / "reader.log") as served:
        hits, ok, got = lookup_and_retrieve(served, 4004)
    assert (hits, ok) == (N_CHUNKS, True)
    for before, after in zip(written_by_ours.stored, got, strict=True):
        assert torch.equal(before, after)
    assert data_files(written_by_ours.base_path) == written_by_ours.listing


def test_both_servers_write_the_same_file_names_and_sizes(written_by_theirs: Written,
                                                          written_by_ours: Written) -> None:
    assert len(written_by_theirs.listing) == N_CHUNKS
    assert written_by_ours.listing == written_by_theirs.listing
    # The same KV for the same tokens: the objects are byte-for-byte the same, too.
    assert written_by_ours.contents == written_by_theirs.contents
    for a, b in zip(written_by_theirs.stored, written_by_ours.stored, strict=True):
        assert torch.equal(a, b)
