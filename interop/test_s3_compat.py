"""The s3 L2 against the real LMCache 0.5.6 (``make interop``): its client end to end, and one bucket shared
with its own ``s3`` adapter both ways.

One moto S3 server (server mode, a subprocess on 127.0.0.1) serves every bucket.
LMCache's adapter addresses buckets virtual-hosted only (``<bucket>.<host>``), so
its server runs in a private mount namespace whose ``/etc/hosts`` maps
``<bucket>.localhost`` to 127.0.0.1 (``unshare -m``; root). Ours reads the same
buckets path-style, so both addressing styles meet the same objects.

* LMCache's real client library (``peer_client.py``) stores through lmcache-server
  with an s3 L2, POSTs ``/clear-cache``, and its lookup hits from S3 with equal
  bytes, with ``--l2-store-policy`` ``default`` and ``skip_l1``;
* a bucket LMCache's server wrote is served by lmcache-server (hits, equal bytes)
  and one lmcache-server wrote is served by LMCache's server;
* for the same KV, both write the same object names with the same bytes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from lmcache_plugin_s3.testing import MotoS3, Worker, clean_env, hosts_namespace_cmd, serve_cmd

from lmcache_core.bench.peer import PEER_ENV, peer_server_cmd
from lmcache_core.testing import free_port, server_process

HERE = Path(__file__).parent
MODEL = "org/s3-compat-model"  # the "/" stays verbatim in S3 names (unlike the fs tier's -SEP-)
SEQ, CHUNKS = 7, 3
DEADLINE_S = 60.0


@dataclass
class Written:
    bucket: str
    stored: list[torch.Tensor]
    objects: dict[str, bytes]


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with MotoS3(log=tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


def _objects(moto: MotoS3, bucket: str) -> dict[str, bytes]:
    raw = moto.client()
    names = [o["Key"] for o in raw.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {n: raw.get_object(Bucket=bucket, Key=n)["Body"].read() for n in names}


def _wait_objects(moto: MotoS3, bucket: str, count: int, proc: subprocess.Popen) -> None:
    """Both servers write behind: poll the bucket (bounded) until ``count`` objects are there."""
    deadline = time.monotonic() + DEADLINE_S
    while len(moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])) < count:
        assert proc.poll() is None, f"the writer exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"fewer than {count} objects in {bucket} after {DEADLINE_S}s"
        time.sleep(0.05)


@contextlib.contextmanager
def serve_theirs(peer_python: Path, moto: MotoS3, bucket: str, tmp: Path) -> Iterator[tuple[str, Any]]:
    """LMCache's server with its s3 adapter on ``bucket`` (virtual-hosted, through the private hosts file)."""
    zp, hp = free_port(), free_port()
    adapter = json.dumps(moto.adapter_config(bucket, style="virtual"))
    cmd = peer_server_cmd(peer_python.parent / "lmcache", zp, hp, 1, "--supported-transfer-mode", "auto",
                          "--l2-adapter", adapter)
    cmd = hosts_namespace_cmd(cmd, tmp / f"hosts-{bucket}", [f"{bucket}.localhost"])
    with server_process(cmd, f"http://127.0.0.1:{hp}/healthcheck", env=clean_env(**PEER_ENV),
                        log=tmp / f"theirs-{bucket}.log") as proc:
        yield f"tcp://127.0.0.1:{zp}", proc


@contextlib.contextmanager
def serve_ours(moto: MotoS3, bucket: str, tmp: Path, *extra: str) -> Iterator[tuple[str, str, Any]]:
    """lmcache-server with the s3 L2 on ``bucket`` (path style)."""
    zp, hp = free_port(), free_port()
    with server_process(serve_cmd(zp, hp, moto.adapter_config(bucket), *extra), f"http://127.0.0.1:{hp}/healthcheck",
                        env=clean_env(), log=tmp / f"ours-{bucket}.log") as proc:
        yield f"tcp://127.0.0.1:{zp}", f"http://127.0.0.1:{hp}", proc


def _store(zmq_url: str, instance_id: int) -> list[torch.Tensor]:
    worker = Worker(zmq_url, instance_id, MODEL)
    try:
        ok, stored = worker.store(SEQ, CHUNKS)
        assert ok
        return stored
    finally:
        worker.close()


def _read(zmq_url: str, instance_id: int) -> tuple[int, bool, list[torch.Tensor]]:
    worker = Worker(zmq_url, instance_id, MODEL)
    try:
        return worker.lookup_retrieve(SEQ, CHUNKS)
    finally:
        worker.close()


@pytest.fixture(scope="module")
def written_by_theirs(moto: MotoS3, peer_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Written:
    bucket, tmp = "written-by-lmcache", tmp_path_factory.mktemp("theirs")
    moto.create_bucket(bucket)
    with serve_theirs(peer_python, moto, bucket, tmp) as (zmq_url, proc):
        stored = _store(zmq_url, 1001)
        _wait_objects(moto, bucket, CHUNKS, proc)
    return Written(bucket, stored, _objects(moto, bucket))


@pytest.fixture(scope="module")
def written_by_ours(moto: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Written:
    bucket, tmp = "written-by-lmcache-server", tmp_path_factory.mktemp("ours")
    moto.create_bucket(bucket)
    with serve_ours(moto, bucket, tmp) as (zmq_url, _, proc):
        stored = _store(zmq_url, 2002)
        _wait_objects(moto, bucket, CHUNKS, proc)
    return Written(bucket, stored, _objects(moto, bucket))


@pytest.mark.parametrize("policy", ["default", "skip_l1"])
def test_real_client_hits_from_s3_after_clear_cache(moto: MotoS3, peer_python: Path, tmp_path: Path,
                                                    policy: str) -> None:
    bucket = f"real-client-{policy.replace('_', '-')}"
    moto.create_bucket(bucket)
    with serve_ours(moto, bucket, tmp_path, "--l2-store-policy", policy) as (zmq_url, http_url, _):
        proc = subprocess.run([str(peer_python), str(HERE / "peer_client.py"), zmq_url, http_url],
                              capture_output=True, text=True, timeout=300, env=clean_env(**PEER_ENV))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["failed"] == {} and proc.returncode == 0, result
    assert result["checks"]["l2_lookup_hits"] == 2 and result["checks"]["l2_bytes_equal"] is True
    assert len(_objects(moto, bucket)) >= 2  # the hits came from objects in the bucket


def test_lmcache_writes_lmcache_server_serves(moto: MotoS3, written_by_theirs: Written, tmp_path: Path) -> None:
    assert len(written_by_theirs.objects) == CHUNKS
    with serve_ours(moto, written_by_theirs.bucket, tmp_path) as (zmq_url, _, _):
        hits, ok, got = _read(zmq_url, 3003)
    assert (hits, ok) == (CHUNKS, True)
    assert all(torch.equal(a, b) for a, b in zip(written_by_theirs.stored, got, strict=True))
    assert _objects(moto, written_by_theirs.bucket) == written_by_theirs.objects  # a reader rewrites nothing


def test_lmcache_server_writes_lmcache_serves(moto: MotoS3, written_by_ours: Written, peer_python: Path,
                                              tmp_path: Path) -> None:
    assert len(written_by_ours.objects) == CHUNKS
    with serve_theirs(peer_python, moto, written_by_ours.bucket, tmp_path) as (zmq_url, _):
        hits, ok, got = _read(zmq_url, 4004)
    assert (hits, ok) == (CHUNKS, True)
    assert all(torch.equal(a, b) for a, b in zip(written_by_ours.stored, got, strict=True))
    assert _objects(moto, written_by_ours.bucket) == written_by_ours.objects


def test_both_write_the_same_object_names_and_bytes(written_by_theirs: Written, written_by_ours: Written) -> None:
    assert len(written_by_theirs.objects) == CHUNKS
    assert sorted(written_by_ours.objects) == sorted(written_by_theirs.objects)
    assert all(name.startswith(MODEL + "@") for name in written_by_ours.objects)
    assert written_by_ours.objects == written_by_theirs.objects
