"""Prometheus metrics of the L1 tier, in the default ``prometheus_client`` registry.

Names follow the Prometheus form of LMCache's OTel instruments (spec §5.2:
dots become underscores, counters get the unit and ``_total``):

* ``lmcache_mp_l1_read_chunks_total{cache_salt}``: objects handed out by ``read``;
* ``lmcache_mp_l1_write_chunks_total{cache_salt}``: objects admitted by ``finish_write``
  or ``finish_write_and_reserve_read``;
* ``lmcache_mp_l1_evicted_chunks_total{cache_salt}``: objects removed by an eviction
  (``delete(..., evicted=True)``);
* ``lmcache_mp_l1_allocation_failure_total{during}``: keys refused with OUT_OF_MEMORY,
  ``during`` is ``l1_store`` (permanent) or ``l2_prefetch`` (temporary);
* gauges ``lmcache_mp_l1_memory_usage_bytes`` and ``lmcache_mp_l1_usage_ratio``, read
  at scrape time from the most recently bound L1 manager.

Label cardinality is bounded: the first :data:`MAX_SALT_LABELS` distinct salts
get their own ``cache_salt`` label, later ones share ``_other``; the empty salt
is ``_default`` (the quota API's sentinel).

The metric objects are module globals, created once per process, because
``prometheus_client`` refuses to register a name twice and tests build many
L1 managers in one process. :func:`reset` zeroes them (``POST /metrics/reset``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Protocol

from prometheus_client import Counter, Gauge

__all__ = [
    "DEFAULT_SALT_LABEL",
    "L1_ALLOCATION_FAILURE",
    "L1_EVICTED",
    "L1_EVICTION_LOOP_TICKS",
    "L1_EVICTION_LOOP_TRIGGERED",
    "L1_MEMORY_USAGE_BYTES",
    "L1_READ",
    "L1_USAGE_RATIO",
    "L1_WRITE",
    "MAX_SALT_LABELS",
    "OTHER_SALT_LABEL",
    "bind_l1",
    "record_allocation_failure",
    "record_eviction_tick",
    "record_evicted",
    "record_read",
    "record_write",
    "reset",
    "salt_label",
    "unbind_l1",
]

MAX_SALT_LABELS = 64
DEFAULT_SALT_LABEL = "_default"
OTHER_SALT_LABEL = "_other"

L1_READ = Counter("lmcache_mp_l1_read_chunks", "L1 objects read (handed out to a retrieve)", ["cache_salt"])
L1_WRITE = Counter("lmcache_mp_l1_write_chunks", "L1 objects written (admitted after a write)", ["cache_salt"])
L1_EVICTED = Counter("lmcache_mp_l1_evicted_chunks", "L1 objects evicted", ["cache_salt"])
L1_ALLOCATION_FAILURE = Counter(
    "lmcache_mp_l1_allocation_failure", "L1 objects that could not be allocated (out of memory)", ["during"]
)
L1_EVICTION_LOOP_TICKS = Counter("lmcache_mp_l1_eviction_loop_ticks", "L1 eviction controller ticks")
L1_EVICTION_LOOP_TRIGGERED = Counter(
    "lmcache_mp_l1_eviction_loop_triggered", "L1 eviction ticks that found usage at or over the watermark"
)
L1_MEMORY_USAGE_BYTES = Gauge("lmcache_mp_l1_memory_usage_bytes", "Bytes of L1 held by live objects")
L1_USAGE_RATIO = Gauge("lmcache_mp_l1_usage_ratio", "L1 used bytes / L1 capacity")


class _UsageSource(Protocol):
    def get_memory_usage(self) -> tuple[int, int]: ...


_lock = threading.Lock()
_salt_labels: dict[str, str] = {}
# Bound children, so the hot path skips Counter.labels() (a lock and a tuple key per call).
_children: dict[tuple[int, str], object] = {}
_bound: weakref.ReferenceType[_UsageSource] | None = None


def salt_label(salt: str) -> str:
    """The ``cache_salt`` label value for ``salt`` (bounded, see module doc)."""
    label = _salt_labels.get(salt)
    if label is not None:
        return label
    if not salt:
        return DEFAULT_SALT_LABEL
    with _lock:
        label = _salt_labels.get(salt)
        if label is None:
            # Salts past the cap are not remembered either, so this map stays bounded too.
            if len(_salt_labels) >= MAX_SALT_LABELS:
                return OTHER_SALT_LABEL
            label = _salt_labels[salt] = salt
        return label


def _child(counter: Counter, label: str):  # type: ignore[no-untyped-def]
    key = (id(counter), label)
    child = _children.get(key)
    if child is None:
        # Under the lock so a concurrent reset() cannot orphan the child we cache.
        with _lock:
            child = _children.get(key)
            if child is None:
                child = _children[key] = counter.labels(label)
    return child


def _by_salt(counter: Counter, keys: Iterable[object]) -> None:
    counts: dict[str, int] = {}
    for k in keys:
        salt = k.cache_salt  # type: ignore[attr-defined]
        counts[salt] = counts.get(salt, 0) + 1
    for salt, n in counts.items():
        _child(counter, salt_label(salt)).inc(n)


def record_read(keys: Iterable[object]) -> None:
    """Count objects read, per salt."""
    _by_salt(L1_READ, keys)


def record_write(keys: Iterable[object]) -> None:
    """Count objects admitted, per salt."""
    _by_salt(L1_WRITE, keys)


def record_evicted(keys: Iterable[object]) -> None:
    """Count objects evicted, per salt."""
    _by_salt(L1_EVICTED, keys)


def record_eviction_tick(triggered: bool) -> None:
    """Count one L1 eviction tick, and whether it evicted."""
    L1_EVICTION_LOOP_TICKS.inc()
    if triggered:
        L1_EVICTION_LOOP_TRIGGERED.inc()


def record_allocation_failure(count: int, *, temporary: bool) -> None:
    """Count ``count`` keys refused for lack of memory."""
    if count > 0:
        _child(L1_ALLOCATION_FAILURE, "l2_prefetch" if temporary else "l1_store").inc(count)


def _used() -> float:
    src = _bound() if _bound is not None else None
    return float(src.get_memory_usage()[0]) if src is not None else 0.0


def _ratio() -> float:
    src = _bound() if _bound is not None else None
    if src is None:
        return 0.0
    used, total = src.get_memory_usage()
    return used / total if total else 0.0


L1_MEMORY_USAGE_BYTES.set_function(_used)
L1_USAGE_RATIO.set_function(_ratio)


def bind_l1(source: _UsageSource) -> None:
    """Make the usage gauges report ``source`` (held weakly; the latest bound wins)."""
    global _bound
    _bound = weakref.ref(source)


def unbind_l1(source: _UsageSource) -> None:
    """Stop reporting ``source`` if it is the bound one (gauges then read 0)."""
    global _bound
    if _bound is not None and _bound() is source:
        _bound = None


def reset() -> None:
    """Zero every L1 counter (drops their label children); the gauges are live reads and need nothing."""
    with _lock:
        for counter in (L1_READ, L1_WRITE, L1_EVICTED, L1_ALLOCATION_FAILURE):
            counter.clear()
        for plain in (L1_EVICTION_LOOP_TICKS, L1_EVICTION_LOOP_TRIGGERED):
            plain.reset()
        _children.clear()
        _salt_labels.clear()
