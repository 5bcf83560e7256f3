"""The chaos campaign's short profile (issue 18), part of ``make test``: about a minute of load and faults.

A real server process, four real worker processes over shared memory and ZMQ,
HTTP operators, and every fault kind the schedule has (worker SIGKILL, a worker
killed mid-STORE, the L2 failing / stalling / hanging / truncating, a client that
never reads, a server SIGKILL and restart on the same FS L2). It fails on any wrong
byte, any 5xx, any leak left once the workers are gone (locks, sessions,
registrations, mapped segments), unbounded fds or threads, or RSS growth past the
bound. ``lmcache-server bench chaos --duration 600`` (``make soak``) is the long run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lmcache_core.bench.chaos import FAULT_KINDS, run_chaos


@pytest.mark.slow
def test_a_minute_of_chaos_keeps_every_byte_and_leaks_nothing(tmp_path: Path) -> None:
    report = run_chaos(duration=60, workers=4, seed=18, work_dir=tmp_path, keep=True,
                       fault_interval=2.5, restart_every=30)
    assert report["wrong_bytes"] == 0, report["failures"]
    assert report["chunks_verified"] > 0 and report["bytes_verified"] > 0
    assert report["http_5xx"] == 0, report["http_5xx_samples"]
    leaks = report["leaks_after_all_workers_gone"]
    assert {k: leaks[k] for k in ("lookup_locked_objects", "l1_read_locked", "l1_write_locked", "active_sessions",
                                  "registered_workers", "connections", "mapped_worker_segments")} == dict.fromkeys(
        ("lookup_locked_objects", "l1_read_locked", "l1_write_locked", "active_sessions", "registered_workers",
         "connections", "mapped_worker_segments"), 0)
    assert leaks["periodic_threads_health"]["healthy"] is True
    # The faults really happened: the server was killed and came back, workers died, the L2 misbehaved.
    assert report["server_restarts"] >= 1 and report["worker_kills"] >= 1, report
    kinds = {k for k in FAULT_KINDS if report["faults_injected"].get(k)}
    assert len(kinds) >= 4, report["faults_injected"]
    assert report["ok"], report["failures"]
