"""Per-``cache_salt`` storage quotas (soft) and the usage they are checked against.

Quotas only drive eviction under an isolation policy (IsolatedLRU): a salt over
``watermark * limit`` loses part of its keys at the next tick, and a salt with
no quota (or a quota of 0) is evicted entirely (allowlist). Writes are never
refused. The empty salt ``""`` is an ordinary salt; the HTTP layer maps the
path sentinel ``_default`` to it.

Usage is pulled, not pushed: each tier (L1, every L2 adapter) registers a
provider returning its bytes per salt. Each tier enforces the full limit on its
own (a salt may hold ``limit`` in L1 *and* ``limit`` in each L2), so the usage
compared with the limit is the largest tier's, not the sum:
:meth:`QuotaManager.usage_by_salt` is that maximum (what ``current_usage_gb``
reports), and :meth:`QuotaManager.usage_by_tier` the per-tier breakdown. (It
summed the tiers until issue 18: a salt could report more than its limit with
no tier over it.)

"GB" in the HTTP API means GiB; :func:`gib_to_bytes` and :func:`bytes_to_gib`
convert with validation.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping

logger = logging.getLogger(__name__)

__all__ = ["GIB", "QuotaManager", "UsageProvider", "bytes_to_gib", "gib_to_bytes"]

GIB = 1024**3
"""Bytes in one GiB (what LMCache's ``limit_gb`` means)."""

UsageProvider = Callable[[], Mapping[str, int]]
"""Returns one tier's bytes used per ``cache_salt``."""


def gib_to_bytes(gib: float) -> int:
    """``int(gib * 2**30)`` (truncating, as LMCache stores it); ValueError for NaN, inf, negative or non-numbers."""
    if isinstance(gib, bool) or not isinstance(gib, (int, float)):
        raise ValueError(f"GiB value must be a number, got {type(gib).__name__}")
    if isinstance(gib, float) and not math.isfinite(gib):
        raise ValueError(f"GiB value must be finite, got {gib!r}")
    if gib < 0:
        raise ValueError(f"GiB value must be non-negative, got {gib!r}")
    if isinstance(gib, int):
        return gib * GIB  # exact for any integer, however large
    scaled = gib * GIB
    if not math.isfinite(scaled):
        raise ValueError(f"GiB value too large: {gib!r}")
    return int(scaled)


def bytes_to_gib(n: int) -> float:
    """``n / 2**30``; ValueError for negative values or non-integers (bool included)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"byte count must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"byte count must be non-negative, got {n}")
    return n / GIB


class QuotaManager:
    """Thread-safe store of per-salt byte limits plus the registered usage providers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._limits: dict[str, int] = {}
        self._providers: dict[str, UsageProvider] = {}
        self._logged_errors: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ quotas

    def set_quota(self, cache_salt: str, limit_bytes: int) -> None:
        """Set (or replace) a salt's limit in bytes; ValueError unless an int ``>= 0``."""
        if not isinstance(cache_salt, str):
            raise ValueError(f"cache_salt must be a str, got {type(cache_salt).__name__}")
        if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int):
            raise ValueError(f"limit_bytes must be an int, got {type(limit_bytes).__name__}")
        if limit_bytes < 0:
            raise ValueError(f"limit_bytes must be non-negative, got {limit_bytes}")
        with self._lock:
            self._limits[cache_salt] = limit_bytes

    def get_quota(self, cache_salt: str) -> int | None:
        """The salt's limit in bytes, or None when it has no quota entry."""
        with self._lock:
            return self._limits.get(cache_salt)

    def get_limit_bytes(self, cache_salt: str) -> int:
        """The limit eviction uses: the quota, or 0 (evict everything) when there is none."""
        with self._lock:
            return self._limits.get(cache_salt, 0)

    def delete_quota(self, cache_salt: str) -> bool:
        """Remove the salt's quota; True if there was one."""
        with self._lock:
            return self._limits.pop(cache_salt, None) is not None

    def list_quotas(self) -> dict[str, int]:
        """A copy of every registered quota, salt -> bytes."""
        with self._lock:
            return dict(self._limits)

    # ------------------------------------------------------------------ usage

    def register_usage_provider(self, name: str, fn: UsageProvider) -> None:
        """Add (or replace) the provider called ``name``."""
        if not callable(fn):
            raise ValueError(f"usage provider {name!r} is not callable")
        with self._lock:
            self._providers[name] = fn

    def unregister_usage_provider(self, name: str) -> bool:
        """Remove the provider called ``name``; True if it existed."""
        with self._lock:
            return self._providers.pop(name, None) is not None

    def usage_by_tier(self) -> dict[str, dict[str, int]]:
        """Bytes per salt of every provider (tier name → salt → bytes); one that raises is logged and skipped."""
        with self._lock:
            providers = list(self._providers.items())
        tiers: dict[str, dict[str, int]] = {}
        # Providers run outside our lock: they take their tier's locks.
        for name, fn in providers:
            try:
                # Materialise first so a provider failing half-way adds nothing.
                tiers[name] = {salt: int(n) for salt, n in fn().items()}
            except Exception as exc:
                self._log_provider_error(name, exc)
        return tiers

    def usage_by_salt(self) -> dict[str, int]:
        """Bytes per salt in the tier where the salt holds the most: the usage compared with its limit."""
        largest: dict[str, int] = {}
        for usage in self.usage_by_tier().values():
            for salt, n in usage.items():
                if n > largest.get(salt, -1):
                    largest[salt] = n
        return largest

    def _log_provider_error(self, name: str, exc: Exception) -> None:
        """Log a provider failure with traceback the first time its message is seen, at debug after."""
        signature = (name, f"{type(exc).__name__}: {exc}")
        with self._lock:
            first = signature not in self._logged_errors
            if first:
                if len(self._logged_errors) >= 64:  # bound the memory if messages keep changing
                    self._logged_errors.clear()
                self._logged_errors.add(signature)
        if first:
            logger.error("quota usage provider %r failed; skipping it", name, exc_info=exc)
        else:
            logger.debug("quota usage provider %r failed again: %s", name, signature[1])

    def usage_bytes(self, cache_salt: str) -> int:
        """Bytes one salt uses in its largest tier (what its limit is compared with)."""
        return self.usage_by_salt().get(cache_salt, 0)
