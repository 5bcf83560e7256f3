"""Latency as vLLM sees it, through LMCache 0.5.6's own client library (part of ``bench datapath``).

vLLM's scheduler pays a LOOKUP and a QUERY_PREFETCH_STATUS for every new request,
through LMCache's client. ``_real_client_probe.py`` (run by the peer venv's
python) times NOOP and LOOKUP hit/miss round trips with that client; this module
starts lmcache-server and the real LMCache 0.5.6 server alternately — A B A B,
one up at a time, so neither shares the CPU with the other — and reports for each:

* NOOP p50/p99 and the floor, ``2 x NOOP p50`` (a lookup needs two requests);
* LOOKUP hit and miss p50/p99 (LOOKUP + QUERY until it answers), and the hit p50
  as a multiple of the floor;
* the same LOOKUP hit p50 while ``LMCACHE_BENCH_BACKGROUND`` (default 2) other
  worker processes STORE and RETRIEVE continuously (``loaded``), and its ratio to
  the quiet p50.

Rows: one per server (p50s are the median of the rounds' p50s; p99s are over all rounds' samples
pooled), one for a
server that answers every op at once without doing anything (:mod:`lmcache_core.bench.nullserver`:
its ``lookup_hit_p50_over_floor`` is what the client and the wire alone cost), and a comparison
row; then, with 2 and 4 worker processes transferring at once, their
aggregate STORE and RETRIEVE GB/s beside the same number of processes doing raw
torch copies of the same bytes (``datapath_real_client_workers``), each server with one
transfer lane (both servers' default) and with one lane per worker (``--max-gpu-workers N``).
The two groups of processes take turns in episodes (raw, then the server's), after an
untimed warm-up that leaves the server's L1 memory touched as the raw copies' buffers are
(steady state; first fill is the ``datapath`` rows' subject); each ratio is the median of
the per-episode ratios. Environment: ``LMCACHE_BENCH_ROUNDS`` (2), ``LMCACHE_BENCH_PROBE_LOOKUPS``
(1000), ``LMCACHE_BENCH_LAYERS`` (32), ``LMCACHE_BENCH_SCALING_CHUNKS`` (4 per STORE),
``LMCACHE_BENCH_SCALING_ROUNDS`` (2 per episode), ``LMCACHE_BENCH_SCALING_EPISODES`` (5).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from lmcache_core.bench.peer import PEER_VENV, peer_env, peer_lmcache, peer_server_cmd
from lmcache_core.testing import free_port, server_process

PROBE = Path(__file__).with_name("_real_client_probe.py")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _run_probe(*args: str) -> dict[str, Any]:
    """Run the probe script with the peer's python and ``args``; its JSON object."""
    # -P: do not put this package's folder first on sys.path (its http.py would shadow the stdlib's).
    cmd = [str(PEER_VENV / "bin" / "python"), "-P", str(PROBE), *args]
    env = peer_env({k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"probe {' '.join(args[1:])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def probe(url: str, lookups: int, layers: int, background: int = 0) -> dict[str, Any]:
    """NOOP and LOOKUP round trips against ``url`` (``background`` workers transferring meanwhile)."""
    return _run_probe(url, "--lookups", str(lookups), "--layers", str(layers), "--background", str(background))


def scaling_probe(url: str, workers: int, layers: int, chunks: int, rounds: int, episodes: int) -> dict[str, Any]:
    """``workers`` processes STORE and RETRIEVE at once through the real client, taking turns with as many
    processes doing raw copies of the same bytes (the baseline), ``episodes`` times."""
    return _run_probe(url, "--scaling", str(workers), "--layers", str(layers), "--chunks", str(chunks),
                      "--rounds", str(rounds), "--episodes", str(episodes))


def _server_cmd(name: str, zp: int, hp: int, *extra: str) -> tuple[list[str], dict[str, str]]:
    """The command of one of the two servers; ``extra`` are flags both take (``--max-gpu-workers N``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    if name == "lmcache-server":
        return ([sys.executable, "-m", "lmcache_core.cli", "--host", "127.0.0.1", "--port", str(zp),
                 "--http-port", str(hp), "--l1-size-gb", "4", "--log-level", "WARNING", *extra], env)
    peer = peer_lmcache()
    assert peer is not None
    return peer_server_cmd(peer, zp, hp, 4, "--supported-transfer-mode", "auto", *extra), peer_env(env)


def _merge(runs: list[dict[str, Any]], loaded: list[dict[str, Any]]) -> dict[str, Any]:
    def p50(rs: list[dict[str, Any]], name: str) -> float:
        return round(statistics.median(r[name]["p50_us"] for r in rs), 1)

    def p99(rs: list[dict[str, Any]], name: str) -> float:
        # over every sample of every round pooled (a p99 of 300 samples is their 3rd largest:
        # the largest of several such is a worse estimate than the pool's p99)
        pooled = sorted(v for r in rs for v in r[name]["samples_us"])
        return round(pooled[min(len(pooled) - 1, int(round(0.99 * (len(pooled) - 1))))], 1)

    noop = p50(runs, "noop")
    row: dict[str, Any] = {
        "noop_p50_us": noop, "noop_p99_us": p99(runs, "noop"), "floor_us": round(2 * noop, 1),
        "lookup_hit_p50_us": p50(runs, "lookup_hit"), "lookup_hit_p99_us": p99(runs, "lookup_hit"),
        "lookup_miss_p50_us": p50(runs, "lookup_miss"), "lookup_miss_p99_us": p99(runs, "lookup_miss"),
        "hit_chunks": min(r["hit_chunks"] for r in runs), "short_hits": sum(r.get("short_hits", 0) for r in runs),
        "rounds_lookup_hit_p50_us": [r["lookup_hit"]["p50_us"] for r in runs],
    }
    row["lookup_hit_p50_over_floor"] = round(row["lookup_hit_p50_us"] / row["floor_us"], 3)
    row["lookup_hit_p99_over_p50"] = round(row["lookup_hit_p99_us"] / row["lookup_hit_p50_us"], 3)
    if loaded:
        row["loaded_lookup_hit_p50_us"] = p50(loaded, "lookup_hit")
        row["loaded_lookup_hit_p99_us"] = p99(loaded, "lookup_hit")
        row["loaded_over_quiet_p50"] = round(row["loaded_lookup_hit_p50_us"] / row["lookup_hit_p50_us"], 3)
        row["background_cycles"] = sum(r.get("background_cycles", 0) for r in loaded)
    return row


def null_server_row(base: dict[str, Any], lookups: int) -> dict[str, Any]:
    """The same probe against :mod:`lmcache_core.bench.nullserver` (answers at once, does nothing): what a
    LOOKUP costs above two NOOPs in the client and on the wire alone, the floor under any server's ratio."""
    zp = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lmcache_core.bench.nullserver", f"tcp://127.0.0.1:{zp}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # ZMQ connects lazily: the probe's first request waits for the bind
        got = probe(f"tcp://127.0.0.1:{zp}", lookups, base["layers"])
    except RuntimeError as exc:
        return {**base, "server": "null (answers without work)", "error": str(exc)[-500:]}
    finally:
        proc.kill()
        proc.wait(timeout=30)
    row = {**base, "server": "null (answers without work)", **_merge([got], [])}
    row.pop("hit_chunks", None)
    row.pop("short_hits", None)
    return row


def run() -> list[dict[str, Any]]:
    base = {"bench": "datapath_real_client", "client": "lmcache 0.5.6 (peer venv)", "prefix_tokens": 2048,
            "layers": _env_int("LMCACHE_BENCH_LAYERS", 32), "heads": 8, "head_dim": 128, "dtype": "float16"}
    if peer_lmcache() is None:
        return [{**base, "error": f"not measured: no LMCache peer at {PEER_VENV} (make interop installs it)"}]
    rounds = _env_int("LMCACHE_BENCH_ROUNDS", 2)
    lookups = _env_int("LMCACHE_BENCH_PROBE_LOOKUPS", 1000)
    background = _env_int("LMCACHE_BENCH_BACKGROUND", 2)
    names = ["lmcache-server", "lmcache-0.5.6"]
    quiet: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    loaded: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:  # A B A B: one server up at a time
            zp, hp = free_port(), free_port()
            cmd, env = _server_cmd(name, zp, hp)
            with server_process(cmd, f"http://127.0.0.1:{hp}/healthcheck", env=env):
                url = f"tcp://127.0.0.1:{zp}"
                quiet[name].append(probe(url, lookups, base["layers"]))
                if background:
                    loaded[name].append(probe(url, lookups // 2, base["layers"], background))
    rows = [{**base, "server": name, "background_workers": background, **_merge(quiet[name], loaded[name])}
            for name in names]
    ours, theirs = rows
    rows.append(null_server_row(base, lookups))
    rows.append({"bench": "datapath_real_client", "comparison": "lmcache-server / lmcache-0.5.6",
                 "noop_p50_ratio": round(ours["noop_p50_us"] / theirs["noop_p50_us"], 3),
                 "lookup_hit_p50_ratio": round(ours["lookup_hit_p50_us"] / theirs["lookup_hit_p50_us"], 3),
                 "lookup_miss_p50_ratio": round(ours["lookup_miss_p50_us"] / theirs["lookup_miss_p50_us"], 3)})
    # Tensor parallelism: N workers storing and retrieving their shards at the same moment.
    chunks, sc_rounds = _env_int("LMCACHE_BENCH_SCALING_CHUNKS", 4), _env_int("LMCACHE_BENCH_SCALING_ROUNDS", 2)
    episodes = _env_int("LMCACHE_BENCH_SCALING_EPISODES", 5)
    # Each server once with its default single transfer lane, once with a lane per worker
    # (``--max-gpu-workers N``, a flag both take): one lane serialises the workers' copies.
    for workers in (2, 4):
        for lanes in (1, workers):
            for name in names:
                zp, hp = free_port(), free_port()
                cmd, env = _server_cmd(name, zp, hp, "--max-gpu-workers", str(lanes))
                with server_process(cmd, f"http://127.0.0.1:{hp}/healthcheck", env=env):
                    got = scaling_probe(f"tcp://127.0.0.1:{zp}", workers, base["layers"], chunks, sc_rounds,
                                        episodes)
                rows.append({"bench": "datapath_real_client_workers", "server": name, "transfer_lanes": lanes,
                             "chunks_per_round": chunks, "rounds": sc_rounds, **got})
    return rows


if __name__ == "__main__":
    for r in run():
        print(json.dumps(r))
