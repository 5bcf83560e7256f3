"""Eviction policies (LRU, IsolatedLRU, noop) and the per-tick eviction decision.

A policy only orders keys; it never frees anything. The storage tiers tell it
what happened (created / touched / removed) and, once per tick, an eviction
controller asks :func:`plan_eviction` which keys to delete, deletes them, and
the tier's delete notification calls :meth:`EvictionPolicy.on_keys_removed`.
A key the tier refused to delete (locked meanwhile) therefore stays tracked.

Ordering rules shared by the LRU policies:

* keys of one call arrive in request (prefix) order and are inserted in
  *reverse*, so the last chunk of a request is the first to go and the prefix
  (which every longer request needs) survives longest;
* a key that is already tracked is treated as touched (moved to the MRU end);
* a key skipped during selection because it is not evictable (locked: being
  read or written right now) is moved to the MRU end, so a long run of locked
  keys at the LRU end is examined once, not on every tick.

Memory: the LRU order is a plain ``dict`` mapping key -> None, used in
insertion order (touch = pop and reinsert). That costs one dict entry per key
(~40 bytes amortised on CPython 3.11) against ~100+ for ``OrderedDict``, whose
linked-list nodes come on top of the same hash table.

Thread safety: every policy has its own lock. ``is_evictable`` is called
*without* the policy lock held (candidates are snapshotted first), so it may
take the tier's own locks without risking a lock-order inversion with tier
listeners that call into the policy while holding those locks.
"""

from __future__ import annotations

import abc
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice, repeat
from operator import length_hint
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmcache_core.keys import ObjectKey

__all__ = [
    "BUILTIN_POLICIES",
    "EvictionPolicy",
    "IsolatedLRUPolicy",
    "IsolationRequiredError",
    "LRUPolicy",
    "NoopPolicy",
    "SCAN_FACTOR",
    "SCAN_SLACK",
    "plan_eviction",
    "scan_limit",
]

SCAN_FACTOR = 2
"""A selection of ``count`` victims examines at most ``count * SCAN_FACTOR + SCAN_SLACK`` keys."""
SCAN_SLACK = 1024
"""See :data:`SCAN_FACTOR`; lets a small selection step over a few locked keys."""


def scan_limit(count: int) -> int:
    """The most keys one selection of ``count`` victims will examine.

    Bounds a tick's cost when many keys at the LRU end are locked: such keys are
    rotated to the MRU end as they are examined, so later ticks move past them.
    """
    return count * SCAN_FACTOR + SCAN_SLACK


IsEvictable = Callable[["ObjectKey"], bool]


class IsolationRequiredError(ValueError):
    """An isolation policy was asked to select victims without a ``cache_salt``."""


class EvictionPolicy(abc.ABC):
    """Orders tracked keys for eviction. Subclasses must be constructible with no arguments."""

    name: str = ""
    """The name users select it by (``--eviction-policy``, L2 ``eviction_policy``)."""
    supports_isolation: bool = False
    """True when victims are chosen per ``cache_salt`` against that salt's quota."""

    @abc.abstractmethod
    def on_keys_created(self, keys: Sequence[ObjectKey]) -> None:
        """Track new keys given in request order (last one evicted first); tracked keys count as touched."""

    @abc.abstractmethod
    def on_keys_touched(self, keys: Sequence[ObjectKey]) -> None:
        """Mark tracked keys as just used (request order, like ``on_keys_created``); untracked keys are ignored."""

    @abc.abstractmethod
    def on_keys_removed(self, keys: Iterable[ObjectKey]) -> None:
        """Stop tracking keys; untracked keys are ignored."""

    @abc.abstractmethod
    def select_victims(
        self, count: int, is_evictable: IsEvictable, cache_salt: str | None = None
    ) -> list[ObjectKey]:
        """Up to ``count`` evictable keys, first-to-evict first; examines at most ``scan_limit(count)`` keys.

        Selected keys stay tracked until ``on_keys_removed``. ``is_evictable`` is
        called without the policy's lock held.
        """

    @abc.abstractmethod
    def tracked_count(self, cache_salt: str | None = None) -> int:
        """How many keys are tracked, in all or of one salt."""

    def tracked_salts(self) -> list[str]:
        """Salts with tracked keys, sorted; empty for policies that do not track salts apart."""
        return []

    @abc.abstractmethod
    def clear(self) -> None:
        """Forget every key."""


class _LruOrder:
    """One insertion-ordered dict used as an LRU: first key = least recently used."""

    __slots__ = ("d",)

    def __init__(self) -> None:
        self.d: dict[object, None] = {}

    def push_mru(self, keys_mru_last: Sequence[object]) -> None:
        """Move or add ``keys`` to the MRU end; the last one ends up most recent."""
        d = self.d
        # Both steps run at C speed: drop existing entries, then append in order.
        deque(map(d.pop, keys_mru_last, repeat(None)), maxlen=0)
        d.update(dict.fromkeys(keys_mru_last))

    def touch(self, keys_mru_last: Iterable[object]) -> None:
        """Move tracked keys to the MRU end; untracked ones are ignored."""
        d = self.d
        for k in keys_mru_last:
            if k in d:
                del d[k]
                d[k] = None

    def remove(self, keys: Iterable[object]) -> None:
        """Drop keys if present."""
        deque(map(self.d.pop, keys, repeat(None)), maxlen=0)

    def snapshot(self, start: int, stop: int) -> list:
        """Copy of the keys at LRU positions ``[start, stop)`` (0 = least recently used)."""
        return list(islice(self.d, start, stop))

    def rotate_to_mru(self, keys: Iterable[object]) -> None:
        """Move still-tracked keys to the MRU end (same as touch)."""
        self.touch(keys)


def _filter_prefix(candidates: list, count: int, is_evictable: IsEvictable) -> tuple[list, list]:
    """Walk ``candidates`` until ``count`` are evictable: (victims, examined keys that were not)."""
    it = iter(candidates)
    # filter + islice keep the per-key loop in C; islice stops pulling right after the last victim.
    victims = list(islice(filter(is_evictable, it), count))
    examined = len(candidates) - length_hint(it)
    if examined == len(victims):
        return victims, []
    chosen = set(victims)
    return victims, [k for k in islice(candidates, examined) if k not in chosen]


def _select_from(order: _LruOrder, lock: threading.Lock, count: int, is_evictable: IsEvictable) -> list:
    """Victim selection over one LRU order, shared by LRU and IsolatedLRU.

    Snapshots keys from the LRU end under the lock, filters them with
    ``is_evictable`` outside it, then rotates the keys that were examined and
    found locked to the MRU end. The first snapshot covers ``count +
    SCAN_SLACK`` keys (enough when few are locked); only if that falls short is
    the rest of ``scan_limit(count)`` taken. Keys that move between the two
    snapshots may be examined twice (never returned twice) or not at all this
    tick: selection is best effort, and the tier rechecks locks when it deletes.
    """
    if count <= 0:
        return []
    limit = scan_limit(count)
    first = min(limit, count + SCAN_SLACK)
    with lock:
        candidates = order.snapshot(0, first)
    victims, skipped = _filter_prefix(candidates, count, is_evictable)
    if len(victims) < count and len(candidates) == first < limit:
        with lock:
            more = order.snapshot(first, limit)
        extra, extra_skipped = _filter_prefix(more, count - len(victims), is_evictable)
        # A key touched between the snapshots can appear in both; keep its first occurrence.
        victims = list(dict.fromkeys(victims + extra))
        skipped.extend(extra_skipped)
    if skipped:
        with lock:
            order.rotate_to_mru(skipped)
    return victims


class LRUPolicy(EvictionPolicy):
    """Least recently used across all keys, tail chunk of a request first."""

    name = "LRU"
    supports_isolation = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order = _LruOrder()

    def on_keys_created(self, keys: Sequence[ObjectKey]) -> None:
        """See :meth:`EvictionPolicy.on_keys_created`."""
        rev = list(reversed(keys))
        with self._lock:
            self._order.push_mru(rev)

    def on_keys_touched(self, keys: Sequence[ObjectKey]) -> None:
        """See :meth:`EvictionPolicy.on_keys_touched`."""
        rev = list(reversed(keys))
        with self._lock:
            self._order.touch(rev)

    def on_keys_removed(self, keys: Iterable[ObjectKey]) -> None:
        """See :meth:`EvictionPolicy.on_keys_removed`."""
        with self._lock:
            self._order.remove(keys)

    def select_victims(
        self, count: int, is_evictable: IsEvictable, cache_salt: str | None = None
    ) -> list[ObjectKey]:
        """See :meth:`EvictionPolicy.select_victims`; ``cache_salt`` is ignored (one global order)."""
        return _select_from(self._order, self._lock, count, is_evictable)

    def tracked_count(self, cache_salt: str | None = None) -> int:
        """Tracked keys; with a salt this scans every key (O(n), diagnostics only)."""
        with self._lock:
            if cache_salt is None:
                return len(self._order.d)
            keys = list(self._order.d)
        return sum(1 for k in keys if k.cache_salt == cache_salt)  # type: ignore[attr-defined]

    def clear(self) -> None:
        """See :meth:`EvictionPolicy.clear`."""
        with self._lock:
            self._order = _LruOrder()


class IsolatedLRUPolicy(EvictionPolicy):
    """One LRU per ``cache_salt``; victims are always chosen within one named salt."""

    name = "IsolatedLRU"
    supports_isolation = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, _LruOrder] = {}

    @staticmethod
    def _group(keys: Iterable[ObjectKey]) -> dict[str, list]:
        """Keys grouped by salt, each group keeping the order given.

        A plain loop over a dict of lists: cheap whatever the mix of salts (an
        ``itertools.groupby`` is faster only when salts come in long runs and
        allocates a list per run when they alternate).
        """
        groups: dict[str, list] = {}
        for k in keys:
            salt = k.cache_salt
            group = groups.get(salt)
            if group is None:
                groups[salt] = [k]
            else:
                group.append(k)
        return groups

    def on_keys_created(self, keys: Sequence[ObjectKey]) -> None:
        """See :meth:`EvictionPolicy.on_keys_created`."""
        groups = self._group(reversed(keys))
        with self._lock:
            for salt, group in groups.items():
                bucket = self._buckets.get(salt)
                if bucket is None:
                    bucket = self._buckets[salt] = _LruOrder()
                bucket.push_mru(group)

    def on_keys_touched(self, keys: Sequence[ObjectKey]) -> None:
        """See :meth:`EvictionPolicy.on_keys_touched`."""
        groups = self._group(reversed(keys))
        with self._lock:
            for salt, group in groups.items():
                bucket = self._buckets.get(salt)
                if bucket is not None:
                    bucket.touch(group)

    def on_keys_removed(self, keys: Iterable[ObjectKey]) -> None:
        """See :meth:`EvictionPolicy.on_keys_removed`; a salt whose last key goes is forgotten."""
        groups = self._group(keys)
        with self._lock:
            for salt, group in groups.items():
                bucket = self._buckets.get(salt)
                if bucket is None:
                    continue
                bucket.remove(group)
                if not bucket.d:
                    del self._buckets[salt]

    def select_victims(
        self, count: int, is_evictable: IsEvictable, cache_salt: str | None = None
    ) -> list[ObjectKey]:
        """See :meth:`EvictionPolicy.select_victims`; ``cache_salt`` is required.

        Raises :class:`IsolationRequiredError` when ``cache_salt`` is None.
        """
        if cache_salt is None:
            raise IsolationRequiredError("IsolatedLRU selects victims per cache_salt; none was given")
        with self._lock:
            bucket = self._buckets.get(cache_salt)
        if bucket is None:
            return []
        return _select_from(bucket, self._lock, count, is_evictable)

    def tracked_count(self, cache_salt: str | None = None) -> int:
        """Tracked keys, in all (O(salts)) or of one salt (O(1))."""
        with self._lock:
            if cache_salt is None:
                return sum(len(b.d) for b in self._buckets.values())
            bucket = self._buckets.get(cache_salt)
            return 0 if bucket is None else len(bucket.d)

    def tracked_salts(self) -> list[str]:
        """Salts with at least one tracked key, sorted."""
        with self._lock:
            return sorted(self._buckets)

    def clear(self) -> None:
        """See :meth:`EvictionPolicy.clear`."""
        with self._lock:
            self._buckets = {}


class NoopPolicy(EvictionPolicy):
    """Tracks nothing and never evicts (write-buffer setups where L1 is drained by ``skip_l1``)."""

    name = "noop"
    supports_isolation = False

    def on_keys_created(self, keys: Sequence[ObjectKey]) -> None:
        """Ignored."""

    def on_keys_touched(self, keys: Sequence[ObjectKey]) -> None:
        """Ignored."""

    def on_keys_removed(self, keys: Iterable[ObjectKey]) -> None:
        """Ignored."""

    def select_victims(
        self, count: int, is_evictable: IsEvictable, cache_salt: str | None = None
    ) -> list[ObjectKey]:
        """Always empty."""
        return []

    def tracked_count(self, cache_salt: str | None = None) -> int:
        """Always 0."""
        return 0

    def clear(self) -> None:
        """Nothing to clear."""


BUILTIN_POLICIES: dict[str, type[EvictionPolicy]] = {
    cls.name: cls for cls in (LRUPolicy, IsolatedLRUPolicy, NoopPolicy)
}
"""Core's own policies by name, for the built-in eviction plugin to register."""


def _count_for(tracked: int, ratio: float) -> int:
    """Keys to evict out of ``tracked`` at ``ratio``: at least one whenever ratio > 0 and anything is tracked."""
    if tracked <= 0 or ratio <= 0:
        return 0
    return min(tracked, max(1, int(ratio * tracked)))


def plan_eviction(
    policy: EvictionPolicy,
    used_bytes: int,
    capacity_bytes: int,
    watermark: float,
    ratio: float,
    is_evictable: IsEvictable,
    usage_by_salt: Mapping[str, int] | None = None,
    quota_limits: Mapping[str, int] | None = None,
) -> list[ObjectKey]:
    """Decide one eviction tick for one tier; returns the keys to delete (possibly none).

    Global policy (``supports_isolation`` False): when ``capacity_bytes > 0`` and
    ``used_bytes / capacity_bytes >= watermark``, select ``max(1, int(ratio *
    tracked))`` victims. An unknown capacity (0) never triggers.

    Isolation policy: for every salt with ``usage_by_salt[salt] > 0``, the limit
    is ``quota_limits.get(salt, 0)``. Limit 0 (no quota, or a quota of 0) is the
    allowlist rule: every tracked key of the salt is selected (ratio 1.0).
    Otherwise, when usage ``>= watermark * limit``, select ``max(1, int(ratio *
    tracked_of_salt))`` of that salt's keys. Quotas are soft: this only evicts,
    writes are never refused.

    Global backstop (isolation policies): when the tier as a whole is at or past
    the watermark (``capacity_bytes > 0``), every salt also gives up at least
    ``max(1, int(ratio * tracked_of_salt))`` keys, oldest first in its own LRU,
    whether or not it is over its quota. Without it, salts all under their quotas
    whose quotas add up to more than the tier filled it, and stores failed for lack
    of memory (issue 18). Each salt loses the same fraction of its keys, so the
    backstop keeps the salts' shares of the tier as they were.
    """
    if not policy.supports_isolation:
        if capacity_bytes <= 0 or used_bytes / capacity_bytes < watermark:
            return []
        count = _count_for(policy.tracked_count(), ratio)
        return policy.select_victims(count, is_evictable) if count else []

    limits = quota_limits or {}
    over_tier = capacity_bytes > 0 and used_bytes >= watermark * capacity_bytes
    victims: list[ObjectKey] = []
    for salt, used in (usage_by_salt or {}).items():
        if used <= 0:
            continue
        limit = limits.get(salt, 0)
        tracked = policy.tracked_count(salt)
        if limit <= 0:
            count = tracked
        elif used >= watermark * limit or over_tier:
            count = _count_for(tracked, ratio)
        else:
            continue
        if count:
            victims.extend(policy.select_victims(count, is_evictable, cache_salt=salt))
    return victims
