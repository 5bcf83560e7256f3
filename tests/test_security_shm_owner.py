"""Confused deputy on /dev/shm (issue 13, finding 4): the server (root here) must not map files for an
unprivileged client that the client could not open itself, nor the client's own files unless allowed.
The attacker really is another user: tests/security_attacker.py under ``runuser -u nobody``."""

from __future__ import annotations

import logging
import os
import pwd
import secrets

import pytest

from lmcache_core.config import MPConfig
from lmcache_core.testing import free_port
from lmcache_core.transport import messages as m
from lmcache_core.transport import wire
from lmcache_core.transport.limits import SecurityConfig
from lmcache_core.transport.wire import Op
from security_support import healthy_client, hexed, run_as_nobody

NBYTES = 2 * 4 * 16 * 2 * 8 * 2  # one layer (2, 4, 16, 2, 8) of fp16
NOBODY = pwd.getpwnam("nobody").pw_uid


def _descriptor(name: str) -> m.DeviceIPCWrapper:
    meta = m.TensorMetadata(dtype="float16", shape=(2, 4, 16, 2, 8), stride=(1024, 256, 16, 8, 1),
                            storage_offset=0, device_uuid="cpu")
    return m.DeviceIPCWrapper(m.CpuShmIPCData(shm_name=f"/{name}", nbytes=NBYTES, version=1, metadata=meta))


def _register(uid: int, iid: int, name: str) -> list[str]:
    return hexed(wire.encode_request(uid, Op.REGISTER_KV_CACHE, iid, [_descriptor(name)], "m", 1,
                                     m.EngineType.VLLM, {"kv_layout": "NHD"}, []))


def _reply(op: Op, hex_frames: list[str]):
    try:
        return wire.decode_reply(op, [bytes.fromhex(h) for h in hex_frames])
    except wire.ErrorReply as exc:
        return exc


@pytest.fixture
def root_secret():
    """A root-only (0600) file in /dev/shm, as another root process would leave it."""
    paths = []

    def make(name: str) -> str:
        path = f"/dev/shm/{name}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"S" * NBYTES)
        os.close(fd)
        paths.append(path)
        return name

    yield make
    for path in paths:
        os.unlink(path)


@pytest.fixture
def nobody_files():
    names: list[str] = []
    yield names
    for name in names:
        try:
            os.unlink(f"/dev/shm/{name}")
        except FileNotFoundError:
            pass


def test_an_unprivileged_client_cannot_make_the_server_map_files(lmcache_server_factory, root_secret,
                                                                 nobody_files, caplog):
    port = free_port()
    server = lmcache_server_factory(configs={"mp": MPConfig(host="127.0.0.1", port=port)})
    secret = root_secret(f"secret_{secrets.token_hex(4)}")  # not a KV segment name
    own = f"lmcache_kv_evil_{secrets.token_hex(4)}"
    nobody_files.append(own)
    caplog.set_level(logging.WARNING, logger="lmcache_core.transfer.shm")
    out = run_as_nobody(port, [
        {"send": _register(1, 501, secret)}, {"recv": 20},
        {"create": own, "size": NBYTES},
        {"send": _register(2, 502, own)}, {"recv": 20},
    ])
    assert out["uid"] == NOBODY
    first, second = _reply(Op.REGISTER_KV_CACHE, out["results"][1]), _reply(Op.REGISTER_KV_CACHE, out["results"][4])
    assert isinstance(first, wire.ErrorReply) and "register_kv_cache failed" in first.reason
    assert isinstance(second, wire.ErrorReply) and "register_kv_cache failed" in second.reason
    assert server.status()["registered_gpu_ids"] == []
    assert server.datapath.segments.segments() == []
    assert "not named like a KV segment" in caplog.text or "does not map" in caplog.text
    assert f"belongs to uid {NOBODY}" in caplog.text
    assert healthy_client(f"tcp://127.0.0.1:{port}")


def test_operator_allowed_uids_are_mapped(lmcache_server_factory, nobody_files):
    port = free_port()
    server = lmcache_server_factory(configs={"mp": MPConfig(host="127.0.0.1", port=port),
                                             "security": SecurityConfig(shm_allowed_uids=[NOBODY])})
    own = f"lmcache_kv_worker_{secrets.token_hex(4)}"
    nobody_files.append(own)
    out = run_as_nobody(port, [{"create": own, "size": NBYTES}, {"send": _register(1, 601, own)}, {"recv": 20}])
    assert _reply(Op.REGISTER_KV_CACHE, out["results"][2]) is None
    assert server.status()["registered_gpu_ids"] == [601]


def test_an_ipc_endpoint_admits_only_processes_that_may_open_its_file(lmcache_server_factory):
    import shutil
    import tempfile

    from lmcache_core.client import LMCacheClient

    base = tempfile.mkdtemp(prefix="lmcache-ipc-", dir="/tmp")
    try:
        os.chmod(base, 0o755)  # everyone may reach the socket: its own mode decides
        path = os.path.join(base, "mp.sock")
        server = lmcache_server_factory(configs={"security": SecurityConfig(zmq_endpoint=f"ipc://{path}",
                                                                            zmq_ipc_permissions="0600")})
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        with LMCacheClient(f"ipc://{path}", timeout_s=20) as owner:
            assert owner.noop() == "OK"
        steps = [{"send": hexed(wire.encode_request(1, Op.NOOP))}, {"recv": 10}]
        assert run_as_nobody(path, steps) == {"uid": NOBODY, "connect_error": "PermissionError"}
        os.chmod(path, 0o666)  # the control: with the mode opened up, the same attacker gets in
        out = run_as_nobody(path, steps)
        assert _reply(Op.NOOP, out["results"][1]) == "OK"
        assert server.zmq.url == f"ipc://{path}"
    finally:
        shutil.rmtree(base, ignore_errors=True)
