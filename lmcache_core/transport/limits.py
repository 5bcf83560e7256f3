"""The data path's protective limits and switches (``server.configs["security"]``).

Every value here bounds what one client of the ZMQ data path can make the
server do: which shared-memory files it may name, how large a message, a
request id or a lookup may be, how many lookups a connection may leave
unqueried, and whether the data path's CLEAR is honoured. ``docs/security.md``
explains the threat each one answers. The defaults are safe for a server
shared by the workers of one user on one machine and never refuse what the
LMCache 0.5.6 client sends in normal operation.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from lmcache_core.transfer.shm import DEFAULT_NAME_PREFIXES, ShmPolicy

SECTION = "security"


class SecurityConfig(msgspec.Struct, kw_only=True):
    """Limits of the ZMQ data path (see ``docs/security.md``)."""

    shm_allowed_uids: list[int] = msgspec.field(default_factory=list)
    """Owners, besides the server's own uid, whose ``/dev/shm`` segments the server maps."""
    shm_allowed_gids: list[int] = msgspec.field(default_factory=list)
    """Groups whose segments the server maps."""
    shm_name_prefixes: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_NAME_PREFIXES))
    """A segment name must start with one of these (empty list: any name)."""
    zmq_max_message_bytes: int = 1 << 30
    """``ZMQ_MAXMSGSIZE``: a larger inbound message drops the connection before it is buffered."""
    max_request_id_length: int = 512
    """Longest request id (characters) a LOOKUP/STORE/RETRIEVE may carry; longer ones fail in-band."""
    max_lookup_tokens: int = 1 << 20
    """Most tokens one request may carry (the HTTP routes' cap too)."""
    large_lookup_tokens: int = 1 << 16
    """A LOOKUP with more tokens than this is hashed off the loop thread (its result is polled)."""
    max_pending_lookups_per_connection: int = 4096
    """Lookup results a connection may leave unqueried; a LOOKUP beyond that answers 0 hits."""
    data_path_clear: Literal["auto", "allow", "deny"] = "auto"
    """ZMQ CLEAR: ``auto`` honours it unless ``--http-admin-token`` is set (HTTP ``/clear-cache`` then
    needs the token, and the data path cannot check one), ``allow``/``deny`` always/never."""

    def shm_policy(self) -> ShmPolicy:
        """The :class:`ShmPolicy` these settings describe."""
        return ShmPolicy(tuple(self.shm_name_prefixes), frozenset(self.shm_allowed_uids),
                         frozenset(self.shm_allowed_gids))

    def clear_allowed(self, admin_token: str | None) -> bool:
        """Whether a data-path CLEAR is honoured, given the HTTP admin token setting."""
        if self.data_path_clear == "auto":
            return not admin_token
        return self.data_path_clear == "allow"
