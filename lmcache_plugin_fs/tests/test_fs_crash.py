"""Crash safety: a writer SIGKILLed mid-object leaves no partial object, and recovery counts every whole one."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lmcache_plugin_fs.adapter import TRAILER_SIZE

from lmcache_core.keys import ObjectKey, try_parse_fs_file_name

SIZE = 16 << 20

WRITER = r"""
import sys, torch
from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l2.base import L2AdapterContext, as_bytes_view
from lmcache_plugin_fs.adapter import FSAdapterConfig, FSL2Adapter
base, size, checksum, first = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
a = FSL2Adapter(FSAdapterConfig(base_path=base, checksum=checksum, recover_on_start=False),
                L2AdapterContext(0, "fs", io_workers=1))
buf = torch.arange(size, dtype=torch.int64).remainder(251).to(torch.uint8)
for i in range(first, first + 1000):
    buf[:4] = torch.tensor(list(i.to_bytes(4, "big")), dtype=torch.uint8)  # which object this is
    print("begin", i, flush=True)
    a._put(ObjectKey(i.to_bytes(4, "big") * 8, "crash-model", 1, 0, ""), as_bytes_view(buf))
    print("done", i, flush=True)
"""


def expected(i: int) -> torch.Tensor:
    t = torch.arange(SIZE, dtype=torch.int64).remainder(251).to(torch.uint8)
    t[:4] = torch.tensor(list(i.to_bytes(4, "big")), dtype=torch.uint8)
    return t


def writing_file(pid: int, base: Path) -> bool:
    """Whether the process holds a file under ``base`` open: it is inside a write."""
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{base}/"):
                return True
        except FileNotFoundError:
            pass
    return False


def kill_mid_write(base: Path, checksum: str, first: int, max_objects: int = 12) -> tuple[set[int], int]:
    """Run a writer and SIGKILL it inside the write of one object (the first one caught there).

    Returns (objects it finished, the object it was writing when killed).
    """
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(base), str(SIZE), checksum, str(first)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    victim = -1
    try:
        fd = proc.stdout.fileno()
        pending = b""
        deadline = time.monotonic() + 120
        while victim < 0 and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            lines += [c.decode() for c in complete]
            if not lines or not lines[-1].startswith("begin"):
                continue
            current = int(lines[-1].split()[1])
            if current - first < 2:
                continue  # let a couple of objects finish first: recovery must count them
            # Catch it inside the write: wait (bounded) until it holds its temp file open, then
            # stop it and confirm; a writer stopped with the file open has not renamed it yet.
            spin_until = time.monotonic() + 10
            while not writing_file(proc.pid, base) and time.monotonic() < spin_until:
                pass
            os.kill(proc.pid, signal.SIGSTOP)
            os.waitpid(proc.pid, os.WUNTRACED)  # returns once it is stopped
            if writing_file(proc.pid, base):
                os.kill(proc.pid, signal.SIGKILL)
                victim = current
            else:
                os.kill(proc.pid, signal.SIGCONT)
                if current - first >= max_objects:
                    break
        if victim < 0:
            raise AssertionError(f"never stopped the writer inside a write: {lines} {proc.stderr.read()!r}")
        proc.wait(30)
        lines += proc.stdout.read().decode().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    return {int(line.split()[1]) for line in lines if line.startswith("done")}, victim


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to see the writer's open files")
@pytest.mark.parametrize("checksum", ["none", "crc32"])
def test_sigkilled_writer_leaves_no_partial_object(make_fs, tmp_path, checksum):
    base = tmp_path / "l2"
    base.mkdir()
    (base / ".tmp").mkdir()
    finished: set[int] = set()
    victims = []
    for attempt in range(2):
        done, victim = kill_mid_write(base, checksum, first=attempt * 1000)
        finished |= done
        victims.append(victim)

    # Every visible object is whole, and exactly the finished ones are visible.
    files = {}
    for name in os.listdir(base):
        if name.endswith(".data"):
            k = try_parse_fs_file_name(name)
            assert k is not None
            files[int.from_bytes(k.chunk_hash[:4], "big")] = k
            assert (base / name).stat().st_size == SIZE + (TRAILER_SIZE if checksum == "crc32" else 0)
    assert set(files) == finished and not set(victims) & finished and len(finished) >= 4
    assert len(os.listdir(base / ".tmp")) == len(victims)  # the killed writers' partial temp files

    a = make_fs(base, checksum=checksum)  # recovery
    status = a.report_status()
    assert status["stored_object_count"] == len(files)
    assert a.usage().total_bytes_used == len(files) * SIZE
    assert status["stale_tmp_removed"] == len(victims)
    assert os.listdir(base / ".tmp") == []
    out = torch.empty(SIZE, dtype=torch.uint8)
    for i, k in files.items():
        assert a._size(k) == SIZE
        assert a.load([k], [out]).result(30) == [True]
        assert torch.equal(out, expected(i))
    for i in victims:
        unfinished = ObjectKey(i.to_bytes(4, "big") * 8, "crash-model", 1, 0, "")
        assert a._size(unfinished) is None
        assert a.lookup_and_lock([unfinished]).result(30) == [False]
        assert a.load([unfinished], [out]).result(30) == [False]
