"""Benchmark: chunk hashing of a 128k-token prompt (target: ≤ 2 ms).

Each row compares one operation with a baseline measured in the same run on
the same bytes: one blake3 call over all the packed tokens, which is the
fastest anything can touch that data (blake3 hashes a long input in parallel
SIMD lanes; the prefix chain forces 512 sequential 1 KiB hashes instead).

Rows:

* ``hash_128k_tokens``: :meth:`TokenHasher.hash_chunks` from a Python list of
  ints as the wire decoder delivers them (packing included). The target row.
* ``hash_128k_tokens_prepacked``: the same from already packed bytes (the
  chain alone).
* ``session_rehash_128k_cached``: a session that already holds the prompt's
  hashes gets the same tokens again (a fresh list, as a RETRIEVE delivers
  them) and returns all hashes: pack + compare, no hashing.
* ``session_extend_one_chunk``: a 128k session gets 256 more tokens and
  returns the new chunk's hash.

``python -m lmcache_core.bench.hashing`` prints one JSON object per row.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import msgspec
from blake3 import blake3

from lmcache_core.hashing import TokenHasher, pack_tokens
from lmcache_core.sessions import Session

NUM_TOKENS = 131072
CHUNK_SIZE = 256
TARGET_MS = 2.0
BASELINE = "blake3 of the same bytes in one call"


def _fresh_tokens(encoded: bytes) -> list[int]:
    # Decoding msgpack gives distinct int objects laid out like a real request's token_ids.
    return msgspec.msgpack.decode(encoded)


def _time_ms(fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None) -> list[float]:
    """Wall times of ``fn`` in ms, ``setup`` (untimed) before each call; one untimed warm-up."""
    if setup is not None:
        setup()
    fn()
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _row(name: str, times: list[float], baseline_ms: float, **extra: Any) -> dict[str, Any]:
    times = sorted(times)
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    return {
        "bench": name,
        "ms_p50": round(p50, 4),
        "ms_p99": round(p99, 4),
        "baseline": BASELINE,
        "baseline_ms": round(baseline_ms, 4),
        "ratio": round(p50 / baseline_ms, 2) if baseline_ms > 0 else None,
        "tokens": NUM_TOKENS,
        "chunk_size": CHUNK_SIZE,
        **extra,
    }


def run(repeat: int = 50, seed: int = 0) -> list[dict[str, Any]]:
    """Run every row ``repeat`` times; returns JSON-able rows (see the module docstring)."""
    rng = random.Random(seed)
    encoded = msgspec.msgpack.encode([rng.randrange(0, 152_000) for _ in range(NUM_TOKENS)])
    tokens = _fresh_tokens(encoded)
    hasher = TokenHasher(CHUNK_SIZE)
    packed = pack_tokens(tokens)

    baseline_ms = statistics.median(_time_ms(lambda: blake3(packed).digest(), repeat))
    rows = [
        _row("hash_128k_tokens", _time_ms(lambda: hasher.hash_chunks(tokens), repeat), baseline_ms,
             input="list[int]", target_ms=TARGET_MS),
        _row("hash_128k_tokens_prepacked", _time_ms(lambda: hasher.hash_packed(packed), repeat), baseline_ms,
             input="packed bytes"),
    ]

    session = Session("bench", hasher)
    session.hashes_for(tokens, 0, NUM_TOKENS)
    again: list[list[int]] = []
    rows.append(_row(
        "session_rehash_128k_cached",
        _time_ms(lambda: session.hashes_for(again[-1], 0, NUM_TOKENS), repeat,
                 setup=lambda: again.append(_fresh_tokens(encoded))),
        baseline_ms, input="list[int]",
    ))
    again.clear()

    longer = tokens + [rng.randrange(0, 152_000) for _ in range(CHUNK_SIZE)]
    state: dict[str, Session] = {}

    def fresh_session() -> None:
        s = Session("bench-extend", hasher)
        s.hashes_for(tokens, 0, NUM_TOKENS)
        state["s"] = s

    rows.append(_row(
        "session_extend_one_chunk",
        _time_ms(lambda: state["s"].hashes_for(longer, NUM_TOKENS, NUM_TOKENS + CHUNK_SIZE), repeat,
                 setup=fresh_session),
        baseline_ms, input="list[int]",
    ))
    return rows


def main() -> None:
    """Print :func:`run`'s rows as JSON lines."""
    for row in run():
        print(json.dumps(row))


if __name__ == "__main__":
    main()
