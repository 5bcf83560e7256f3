"""vLLM's own patterns through the real LMCache 0.5.6 client, against both servers (``make interop``).

``vllm_patterns.py`` runs one process per tensor-parallel rank, each with the real
client and its own transfer context, and forms keys exactly as vLLM's MP connector
does. Every configuration (TP 2 and 4, both transfer modes, MLA or not) runs against
the real LMCache server and against ours, and the answers must be the same.

Where the two differ by design, the test says so:

* lock and session hygiene is checked on ours only: LMCache 0.5.6 keeps MLA read
  locks past END_SESSION until its read-lock TTL, where we release them at
  END_SESSION;
* ``FREE_LOOKUP_LOCKS`` before any worker registered the model is answered by us at
  once; LMCache 0.5.6 leaves it unanswered on a fresh server (the client times out),
  so that case is asserted on ours only.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from lmcache_core.bench.peer import PEER_ENV, PEER_VENV

HERE = Path(__file__).parent
CONFIGS = [(tp, mode, mla) for mla in (False, True) for mode in ("lmcache_driven", "engine_driven") for tp in (2, 4)]


def run_patterns(served, tp: int, mode: str, mla: bool) -> dict:
    model = f"vllm-{tp}-{mode}-{'mla' if mla else 'mha'}"
    cmd = [str(PEER_VENV / "bin" / "python"), str(HERE / "vllm_patterns.py"), served.zmq_url, "--tp", str(tp),
           "--mode", mode, "--model", model, *(["--mla"] if mla else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_clean_env(**PEER_ENV))
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"cases"')]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(lines[-1])["cases"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env.update(extra)
    return env


def hygiene(http_url: str) -> dict:
    status = httpx.get(f"{http_url}/status", timeout=10).json()
    return {"read_locked": status["storage_manager"]["l1_manager"]["read_locked_count"],
            "write_locked": status["storage_manager"]["l1_manager"]["write_locked_count"],
            "lookup_locked": status["lookup_locked_objects"], "sessions": status["active_sessions"]}


@pytest.mark.parametrize(("tp", "mode", "mla"), CONFIGS,
                         ids=[f"tp{tp}-{mode}-{'mla' if mla else 'mha'}" for tp, mode, mla in CONFIGS])
def test_vllm_patterns_answer_as_lmcache_does(ours_module, theirs_module, tp, mode, mla):
    ours = run_patterns(ours_module, tp, mode, mla)
    theirs = run_patterns(theirs_module, tp, mode, mla)
    assert ours.pop("free_before_registration_answered") is True
    theirs.pop("free_before_registration_answered")
    assert ours == theirs, {"ours": ours, "theirs": theirs}
    # and those answers are the right ones
    full = {"stored": True, "hits": 2, "retrieved": True, "bytes_equal": True}
    assert ours["full"] == full
    assert ours["prefix_overlap"] == {"hits": 2, "retrieved": True, "bytes_equal": True, "skipped_untouched": True}
    if not mla:
        assert ours["rank_never_stored"] == {"hits": 0}
        assert ours["late_fill"] == {"hits": 2, "retrieved": True, "bytes_equal": True}
        assert ours["missing_tail_chunk"] == {"hits": 1, "retrieved": True, "bytes_equal": True}
    assert hygiene(ours_module.http_url) == {"read_locked": 0, "write_locked": 0, "lookup_locked": 0, "sessions": 0}
