"""Per-request sessions: a request's tokens and its chunk hashes, cached between calls.

One vLLM request (``request_id``) sends LOOKUP, then RETRIEVE from every
worker, then STORE as it generates, each with the *full* token list so far.
A :class:`Session` keeps the tokens (packed, 4 bytes each) and the hashes
computed so far, so each call hashes only chunks it has not seen. When a new
token list is given, the cached hashes of the chunks it shares with the old
one (the longest common whole-chunk prefix) are kept and the rest are
dropped: a hash depends on every token before it, so nothing else is safe to
keep (LMCache 0.5.6's session semantics).

:class:`SessionManager` maps ``request_id`` to sessions, forgets sessions idle
longer than a TTL (600 s by default; the server drives :meth:`cleanup` from a
periodic thread), and tells destroy listeners about every session it drops.
Time comes from an injectable clock, so TTL logic is tested without sleeping.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from lmcache_core.hashing import PackedTokens, TokenHasher, Tokens, pack_tokens

__all__ = [
    "EXPIRED",
    "REMOVED",
    "DestroyListener",
    "InvalidTokenRangeError",
    "Session",
    "SessionManager",
]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]

REMOVED = "removed"
"""Destroy reason: :meth:`SessionManager.remove` (END_SESSION)."""
EXPIRED = "expired"
"""Destroy reason: idle longer than the TTL (:meth:`SessionManager.cleanup`)."""

DestroyListener = Callable[["Session", str], None]
"""``listener(session, reason)``, reason :data:`REMOVED` or :data:`EXPIRED`; called without any manager lock held."""


class InvalidTokenRangeError(ValueError):
    """A token range that is not chunk-aligned or not inside the session's tokens."""


class Session:
    """Tokens and cached chunk hashes of one request. Thread-safe (one lock per session).

    ``set_tokens`` and ``get_hashes`` are separate calls, as in LMCache; when
    several workers of one request may call concurrently with different token
    lists, :meth:`hashes_for` does both under the session lock.
    """

    def __init__(self, request_id: str, hasher: TokenHasher, clock: Clock = time.monotonic) -> None:
        self.request_id = request_id
        self._hasher = hasher
        self._clock = clock
        self._chunk_bytes = 4 * hasher.chunk_size
        self._lock = threading.Lock()
        self._packed = b""
        self._hashes: list[bytes] = []
        self._last_access = clock()

    def __repr__(self) -> str:
        return f"Session({self.request_id!r}, tokens={self.num_tokens}, cached_hashes={len(self._hashes)})"

    # -- access time ---------------------------------------------------------

    @property
    def last_access(self) -> float:
        """Clock time of the last access (creation, lookup through the manager, tokens or hashes)."""
        return self._last_access

    def touch(self, now: float | None = None) -> None:
        """Mark the session as used at ``now`` (default: the clock)."""
        # A float store is atomic under the GIL; readers may see the old or new value, both fine.
        self._last_access = self._clock() if now is None else now

    # -- tokens and hashes ---------------------------------------------------

    @property
    def chunk_size(self) -> int:
        """Tokens per chunk (the hasher's)."""
        return self._hasher.chunk_size

    @property
    def num_tokens(self) -> int:
        """Length of the current token list."""
        return len(self._packed) // 4

    @property
    def packed_tokens(self) -> bytes:
        """The current tokens as big-endian uint32 bytes (immutable)."""
        return self._packed

    def cached_hashes(self) -> list[bytes]:
        """The chunk hashes computed so far, from chunk 0 (a copy)."""
        with self._lock:
            return list(self._hashes)

    def set_tokens(self, tokens: Tokens) -> int:
        """Replace the token list; returns how many cached chunk hashes stayed valid.

        Raises :class:`lmcache_core.hashing.InvalidTokenError` for a token
        outside ``[0, 2**32)`` (every token is checked, not only full chunks).
        """
        packed = pack_tokens(tokens)  # outside the lock: pure, and the costly part
        with self._lock:
            return self._replace(packed)

    def get_hashes(self, start_token: int, end_token: int) -> list[bytes]:
        """Hashes of the full chunks in ``[start_token, end_token)``, computing any not cached yet.

        ``start_token`` must be a multiple of the chunk size; ``end_token``
        must be one too, or equal to the token count (a LOOKUP's end), in which
        case a trailing partial chunk is left out. Raises
        :class:`InvalidTokenRangeError` otherwise.
        """
        with self._lock:
            return self._get(start_token, end_token)

    def hashes_for(self, tokens: Tokens, start_token: int, end_token: int) -> list[bytes]:
        """:meth:`set_tokens` then :meth:`get_hashes`, atomically.

        :class:`~lmcache_core.hashing.PackedTokens` carry the hashes other requests with the
        same tokens computed (the data path decodes identical token lists into one object):
        they are reused, and what this call computes is left there for the next request.
        """
        packed = pack_tokens(tokens)
        with self._lock:
            self._replace(packed)
            if type(tokens) is not PackedTokens:
                return self._get(start_token, end_token)
            memo = tokens.memo_hashes(self._hasher)
            if len(memo) > len(self._hashes):  # same tokens from chunk 0: their hashes are ours
                self._hashes = list(memo)
            hashes = self._get(start_token, end_token)
            tokens.remember_hashes(self._hasher, self._hashes)
            return hashes

    # -- internals (lock held) -------------------------------------------------

    def _replace(self, packed: bytes) -> int:
        keep = self._common_chunks(packed)
        del self._hashes[keep:]
        self._packed = packed
        self._last_access = self._clock()
        return keep

    def _common_chunks(self, packed: bytes) -> int:
        """Cached chunks whose tokens (and all tokens before them) are unchanged in ``packed``."""
        step = self._chunk_bytes
        limit = min(len(self._hashes), len(packed) // step)
        if limit == 0:
            return 0
        old = memoryview(self._packed)
        # startswith is one memcmp; the common case (same or extended list) costs just that.
        if packed.startswith(old[: limit * step]):
            return limit
        # Prefix equality is monotone in length, so binary search the longest equal prefix.
        good, bad = 0, limit
        while bad - good > 1:
            mid = (good + bad) // 2
            if packed.startswith(old[: mid * step]):
                good = mid
            else:
                bad = mid
        return good

    def _get(self, start_token: int, end_token: int) -> list[bytes]:
        size = self._hasher.chunk_size
        total = len(self._packed) // 4
        for name, value in (("start_token", start_token), ("end_token", end_token)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidTokenRangeError(f"{name} must be an int, got {value!r}")
        if not 0 <= start_token <= end_token <= total:
            raise InvalidTokenRangeError(
                f"token range [{start_token}, {end_token}) is not within the session's {total} tokens"
            )
        if start_token % size:
            raise InvalidTokenRangeError(f"start_token {start_token} is not a multiple of the chunk size {size}")
        if end_token % size and end_token != total:
            raise InvalidTokenRangeError(
                f"end_token {end_token} is neither a multiple of the chunk size {size} nor the token count {total}"
            )
        self._last_access = self._clock()
        first, stop = start_token // size, end_token // size
        have = len(self._hashes)
        if have < stop:
            self._hashes.extend(
                self._hasher.hash_packed(
                    self._packed, have, stop, prefix=self._hashes[-1] if have else None
                )
            )
        return self._hashes[first:stop]


class SessionManager:
    """``request_id`` → :class:`Session`, with an idle TTL and destroy listeners. Thread-safe."""

    def __init__(self, hasher: TokenHasher, ttl_seconds: float = 600.0, clock: Clock = time.monotonic) -> None:
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, (int, float)) or not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be a positive number, got {ttl_seconds!r}")
        if math.isnan(ttl_seconds):
            raise ValueError("ttl_seconds must not be NaN")
        self._hasher = hasher
        self._ttl = float(ttl_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._listeners: list[DestroyListener] = []

    @property
    def hasher(self) -> TokenHasher:
        """The hasher every session uses."""
        return self._hasher

    @property
    def ttl_seconds(self) -> float:
        """Idle time after which :meth:`cleanup` drops a session."""
        return self._ttl

    def add_destroy_listener(self, listener: DestroyListener) -> None:
        """Call ``listener(session, reason)`` whenever a session is removed or expires."""
        with self._lock:
            self._listeners.append(listener)

    def remove_destroy_listener(self, listener: DestroyListener) -> bool:
        """Stop calling ``listener``; False if it was not registered."""
        with self._lock:
            try:
                self._listeners.remove(listener)
            except ValueError:
                return False
            return True

    def get_or_create(self, request_id: str) -> Session:
        """The session of ``request_id``, created if absent; either way marked as accessed now."""
        with self._lock:
            now = self._clock()
            session = self._sessions.get(request_id)
            if session is None:
                session = Session(request_id, self._hasher, self._clock)
                self._sessions[request_id] = session
            session.touch(now)
            return session

    def get(self, request_id: str) -> Session | None:
        """The session of ``request_id`` (marked as accessed), or None."""
        with self._lock:
            session = self._sessions.get(request_id)
            if session is not None:
                session.touch()
            return session

    def remove(self, request_id: str) -> bool:
        """Drop ``request_id``'s session and notify listeners; False if there was none."""
        with self._lock:
            session = self._sessions.pop(request_id, None)
            listeners = list(self._listeners)
        if session is None:
            return False
        self._notify(listeners, [session], REMOVED)
        return True

    def cleanup(self, now: float | None = None) -> int:
        """Drop sessions idle for longer than the TTL at ``now`` (default: the clock); returns how many."""
        with self._lock:
            now = self._clock() if now is None else now
            expired = [s for s in self._sessions.values() if now - s.last_access > self._ttl]
            for session in expired:
                del self._sessions[session.request_id]
            listeners = list(self._listeners)
        if expired:
            logger.debug("expired %d idle session(s)", len(expired))
            self._notify(listeners, expired, EXPIRED)
        return len(expired)

    def count(self) -> int:
        """Number of live sessions."""
        return len(self._sessions)

    def report_status(self) -> dict[str, Any]:
        """``{"active_sessions": n, "session_ttl_seconds": ttl}`` for ``/status``."""
        return {"active_sessions": self.count(), "session_ttl_seconds": self._ttl}

    @staticmethod
    def _notify(listeners: list[DestroyListener], sessions: list[Session], reason: str) -> None:
        # A failing listener must not keep the others (or the cleanup loop) from running.
        for session in sessions:
            for listener in listeners:
                try:
                    listener(session, reason)
                except Exception:
                    logger.exception("session destroy listener %r failed for %r", listener, session.request_id)
