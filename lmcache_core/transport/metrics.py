"""Prometheus metrics of the data path: lookups by tier, and STORE/RETRIEVE traffic.

Names are the Prometheus form of LMCache's instruments (spec §5.2), with one
deliberate change: LMCache exports ``lookup_hit_l1`` and ``lookup_hit_l2`` as
separate names; we export one name with a ``tier`` label (``l1``, ``l2``), so
``sum without (tier)`` is the total hit and a new tier needs no new name.

* ``lmcache_mp_lookups_total{model_name,cache_salt}``: LOOKUP requests;
* ``lmcache_mp_lookup_requested_tokens_total{model_name,cache_salt}``: tokens asked for
  (the chunk-aligned prefix the lookup considered);
* ``lmcache_mp_lookup_hit_tokens_total{model_name,cache_salt,tier}``: tokens found, by the
  tier they were found in (``l2`` counts chunks loaded into L1 by the lookup's prefetch);
* ``lmcache_mp_lookup_hit_keys_total{model_name,cache_salt,tier}``: the same in objects
  (one per chunk and KV rank);
* ``lmcache_mp_lookup_early_exit_total{reason}``: lookups answered 0 without looking:
  ``no_gpu_context`` (no KV layout registered for the model and world size),
  ``empty_chunk_hashes`` (shorter than one chunk), ``rejected`` (invalid request);
* ``lmcache_mp_store_chunks_total`` / ``lmcache_mp_retrieve_chunks_total``
  ``{model_name,cache_salt}``: chunk objects copied in (STORE) and out (RETRIEVE);
* ``lmcache_mp_store_bytes_total`` / ``lmcache_mp_retrieve_bytes_total``: their bytes;
* ``lmcache_mp_store_throughput_GB_per_second`` / ``lmcache_mp_retrieve_throughput_GB_per_second``:
  histograms of one request's copy bandwidth (LMCache's ``l0_l1_store_throughput``
  and ``l0_l1_load_throughput``), ``{device}``;
* gauge ``lmcache_mp_active_prefetch_jobs``: lookups still loading from L2 (``/status``'s
  ``active_prefetch_jobs``), read at scrape time from the most recently started server.

``cache_salt`` labels are bounded as for L1 (:func:`lmcache_core.storage.metrics.salt_label`).
"""

from __future__ import annotations

import weakref
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from lmcache_core.observability.metrics import Children
from lmcache_core.storage.metrics import salt_label

_LABELS = ["model_name", "cache_salt"]
_GBPS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 12, 16, 24, 32, 64)

LOOKUPS = Counter("lmcache_mp_lookups", "LOOKUP requests", _LABELS)
LOOKUP_REQUESTED_TOKENS = Counter("lmcache_mp_lookup_requested_tokens", "Tokens a lookup considered", _LABELS)
LOOKUP_HIT_TOKENS = Counter("lmcache_mp_lookup_hit_tokens", "Tokens a lookup found, by tier", [*_LABELS, "tier"])
LOOKUP_HIT_KEYS = Counter("lmcache_mp_lookup_hit_keys", "Objects a lookup found, by tier", [*_LABELS, "tier"])
LOOKUP_EARLY_EXIT = Counter("lmcache_mp_lookup_early_exit", "Lookups answered 0 without looking", ["reason"])
STORE_CHUNKS = Counter("lmcache_mp_store_chunks", "Chunk objects copied into L1 by STORE", _LABELS)
STORE_BYTES = Counter("lmcache_mp_store_bytes", "Bytes copied into L1 by STORE", _LABELS)
RETRIEVE_CHUNKS = Counter("lmcache_mp_retrieve_chunks", "Chunk objects copied out of L1 by RETRIEVE", _LABELS)
RETRIEVE_BYTES = Counter("lmcache_mp_retrieve_bytes", "Bytes copied out of L1 by RETRIEVE", _LABELS)
STORE_GBPS = Histogram("lmcache_mp_store_throughput_GB_per_second", "Copy bandwidth of one STORE",
                       ["device"], buckets=_GBPS_BUCKETS)
RETRIEVE_GBPS = Histogram("lmcache_mp_retrieve_throughput_GB_per_second", "Copy bandwidth of one RETRIEVE",
                          ["device"], buckets=_GBPS_BUCKETS)

ACTIVE_PREFETCH_JOBS = Gauge("lmcache_mp_active_prefetch_jobs", "Lookups still loading from L2")
_bound: list[Any] = [None]


def bind_datapath(datapath: Any) -> None:
    """Read ``active_prefetch_jobs`` from ``datapath`` (held weakly) at scrape time."""
    _bound[0] = weakref.ref(datapath)


def _active_prefetch_jobs() -> float:
    ref = _bound[0]
    datapath = ref() if ref is not None else None
    return float(datapath.lookups.pending_results()) if datapath is not None else 0.0


ACTIVE_PREFETCH_JOBS.set_function(_active_prefetch_jobs)

# Children caches for the per-request updates (labels() costs as much as a small lookup's own work).
_LOOKUPS, _LOOKUP_REQUESTED_TOKENS = Children(LOOKUPS), Children(LOOKUP_REQUESTED_TOKENS)
_LOOKUP_HIT_TOKENS, _LOOKUP_HIT_KEYS = Children(LOOKUP_HIT_TOKENS), Children(LOOKUP_HIT_KEYS)
_STORE_CHUNKS, _STORE_BYTES = Children(STORE_CHUNKS), Children(STORE_BYTES)
_RETRIEVE_CHUNKS, _RETRIEVE_BYTES = Children(RETRIEVE_CHUNKS), Children(RETRIEVE_BYTES)
_CHILDREN = (_LOOKUPS, _LOOKUP_REQUESTED_TOKENS, _LOOKUP_HIT_TOKENS, _LOOKUP_HIT_KEYS, _STORE_CHUNKS, _STORE_BYTES,
             _RETRIEVE_CHUNKS, _RETRIEVE_BYTES)

_ALL = (LOOKUPS, LOOKUP_REQUESTED_TOKENS, LOOKUP_HIT_TOKENS, LOOKUP_HIT_KEYS, LOOKUP_EARLY_EXIT,
        STORE_CHUNKS, STORE_BYTES, RETRIEVE_CHUNKS, RETRIEVE_BYTES, STORE_GBPS, RETRIEVE_GBPS)


def record_lookup(model_name: str, cache_salt: str, requested_tokens: int) -> None:
    labels = (model_name, salt_label(cache_salt))
    _LOOKUPS(*labels).inc()
    _LOOKUP_REQUESTED_TOKENS(*labels).inc(requested_tokens)


def record_lookup_hits(model_name: str, cache_salt: str, tier: str, chunks: int, chunk_size: int,
                       keys_per_chunk: int) -> None:
    if chunks <= 0:
        return
    labels = (model_name, salt_label(cache_salt), tier)
    _LOOKUP_HIT_TOKENS(*labels).inc(chunks * chunk_size)
    _LOOKUP_HIT_KEYS(*labels).inc(chunks * keys_per_chunk)


def record_early_exit(reason: str) -> None:
    LOOKUP_EARLY_EXIT.labels(reason).inc()


def record_transfer(op: str, model_name: str, cache_salt: str, device: str, chunks: int, nbytes: int,
                    seconds: float) -> None:
    """One finished STORE (``op="store"``) or RETRIEVE (``"retrieve"``) of ``chunks`` objects."""
    labels = (model_name, salt_label(cache_salt))
    if op == "store":
        _STORE_CHUNKS(*labels).inc(chunks)
        _STORE_BYTES(*labels).inc(nbytes)
        if seconds > 0:
            STORE_GBPS.labels(device).observe(nbytes / seconds / 1e9)
    else:
        _RETRIEVE_CHUNKS(*labels).inc(chunks)
        _RETRIEVE_BYTES(*labels).inc(nbytes)
        if seconds > 0:
            RETRIEVE_GBPS.labels(device).observe(nbytes / seconds / 1e9)


def reset() -> None:
    """Zero the data-path metrics (``POST /metrics/reset``)."""
    for children in _CHILDREN:
        children.clear()
    for metric in _ALL:
        metric.clear()
