"""Request keys off the wire with their token list decoded once per distinct list, not once per request.

Every data op carries the request's whole token list (2048 tokens: about 6 KB of msgpack, 2048
Python ints once decoded, about 50 µs of a LOOKUP's server time). The same list arrives many
times: vLLM's scheduler looks a waiting request up again on every scheduling step, each of the
N tensor-parallel workers sends it with its STORE and RETRIEVE, and popular prefixes repeat
across requests. :class:`KeyDecoder` decodes an :class:`~lmcache_core.transport.messages.IPCCacheServerKey`
with its ``token_ids`` left as raw msgpack (``msgspec.Raw``: skipped, not built), then looks
those bytes up in a bounded LRU :class:`TokenListCache` of :class:`~lmcache_core.hashing.PackedTokens`;
only a miss decodes the list (with the same ``list[int]`` type as before) and packs it. The
``PackedTokens`` also carry the chunk hashes once computed
(:meth:`lmcache_core.sessions.Session.hashes_for`), so a repeated list is neither decoded nor
hashed again.

Strictness is unchanged: the other fields decode with their declared types; a token list that is
not a list of ints is refused exactly as before (the error is re-derived with the plain decoder,
so its text names ``$.token_ids[i]``); a list with a token outside ``[0, 2**32)`` is passed on as
the plain list and refused in-band by the op, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import msgspec

from lmcache_core.hashing import InvalidTokenError, PackedTokens, pack_tokens
from lmcache_core.transport import messages as m

DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_BYTES = 32 << 20

_TOKEN_LIST = msgspec.msgpack.Decoder(list[int])


class TokenListCache:
    """Raw msgpack of a token list → its :class:`PackedTokens`, LRU, bounded in entries and bytes (thread-safe)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, PackedTokens] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def tokens(self, raw: bytes) -> PackedTokens | list[int]:
        """The token list ``raw`` encodes; raises msgspec's errors for anything but a list of ints."""
        with self._lock:
            found = self._entries.get(raw)
            if found is not None:
                self._entries.move_to_end(raw)
                self.hits += 1
                return found
        values = _TOKEN_LIST.decode(raw)
        try:
            tokens = PackedTokens(pack_tokens(values))
        except InvalidTokenError:
            return values  # a token past uint32: the op refuses it in-band, as it always did
        cost = len(raw) + len(tokens.packed)  # the key bytes and the packed tokens it keeps
        with self._lock:
            self.misses += 1
            if cost > self.max_bytes // 4 or raw in self._entries:
                return tokens
            self._entries[raw] = tokens
            self._bytes += cost
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                old_raw, old = self._entries.popitem(last=False)
                self._bytes -= len(old_raw) + len(old.packed)
        return tokens


TOKEN_LISTS = TokenListCache()
"""The process's cache (the wire codec is module-level; servers in one process share it)."""


def _wire_key_type() -> Any:
    """``IPCCacheServerKey`` with ``token_ids`` as ``msgspec.Raw`` (every other field, type and default the same)."""
    spec: list[Any] = []
    for f in msgspec.structs.fields(m.IPCCacheServerKey):
        tp = msgspec.Raw if f.name == "token_ids" else f.type
        if f.default is not msgspec.NODEFAULT:
            spec.append((f.name, tp, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            spec.append((f.name, tp, msgspec.field(default_factory=f.default_factory)))
        else:
            spec.append((f.name, tp))
    return msgspec.defstruct("_WireIPCCacheServerKey", spec, frozen=True)


_WIRE_KEY = _wire_key_type()
_TOKENS_AT = [f.name for f in msgspec.structs.fields(m.IPCCacheServerKey)].index("token_ids")


class KeyDecoder:
    """Decodes an ``IPCCacheServerKey`` payload frame, its token list through :data:`TOKEN_LISTS`.

    Has the ``decode(frame)`` of a ``msgspec.msgpack.Decoder``, which it stands in for.
    """

    def __init__(self, cache: TokenListCache = TOKEN_LISTS) -> None:
        self.cache = cache
        self._wire = msgspec.msgpack.Decoder(_WIRE_KEY)
        self._plain = msgspec.msgpack.Decoder(m.IPCCacheServerKey)

    def decode(self, frame: Any) -> m.IPCCacheServerKey:
        try:
            wire = self._wire.decode(frame)
            tokens = self.cache.tokens(bytes(wire.token_ids))
        except (msgspec.ValidationError, msgspec.DecodeError):
            # The plain decoder's own words (``... at `$.token_ids[3]```), as before this fast path.
            return self._plain.decode(frame)
        fields = msgspec.structs.astuple(wire)
        return m.IPCCacheServerKey(*fields[:_TOKENS_AT], tokens, *fields[_TOKENS_AT + 1:])
