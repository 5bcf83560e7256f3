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

from typing import Annotated, Any, Literal

import msgspec

from lmcache_core import hookimpl
from lmcache_core.transfer.shm import DEFAULT_NAME_PREFIXES, ShmPolicy

SECTION = "security"


def _meta(description: str, **bounds: Any) -> msgspec.Meta:
    return msgspec.Meta(description=description, **bounds)


class SecurityConfig(msgspec.Struct, kw_only=True):
    """Limits of the ZMQ data path (see ``docs/security.md``); one flag each, no prefix."""

    shm_allowed_uids: Annotated[list[int], _meta(
        "owners, besides the server's own uid, whose /dev/shm segments the server maps")] = \
        msgspec.field(default_factory=list)
    shm_allowed_gids: Annotated[list[int], _meta("groups whose /dev/shm segments the server maps")] = \
        msgspec.field(default_factory=list)
    shm_name_prefixes: Annotated[list[str], _meta(
        "a segment name must start with one of these (none given: any name)")] = \
        msgspec.field(default_factory=lambda: list(DEFAULT_NAME_PREFIXES))
    zmq_max_message_bytes: Annotated[int, _meta(
        "ZMQ_MAXMSGSIZE: a larger inbound message drops the connection before it is buffered", ge=1024)] = 1 << 30
    max_request_id_length: Annotated[int, _meta(
        "longest request id a LOOKUP/STORE/RETRIEVE may carry (longer: refused in-band)", ge=1)] = 512
    max_lookup_tokens: Annotated[int, _meta("most tokens one request may carry", ge=1)] = 1 << 20
    large_lookup_tokens: Annotated[int, _meta(
        "a LOOKUP with more tokens is hashed off the ZMQ loop thread (its result is polled)", ge=1)] = 1 << 16
    max_pending_lookups_per_connection: Annotated[int, _meta(
        "lookup results one connection may leave unqueried; further LOOKUPs answer 0 hits", ge=1)] = 4096
    zmq_endpoint: Annotated[str, _meta(
        "bind the data path here instead of tcp://--host:--port, e.g. ipc:///run/lmcache/mp.sock (a Unix socket: "
        "only processes that may open the file can connect; LMCache's client takes it in lmcache.mp.server_urls)",
        pattern=r"^(|ipc://.+|tcp://.+)$")] = ""
    zmq_ipc_permissions: Annotated[str, _meta(
        "file mode of an ipc:// socket, octal (0660: owner and group may connect)",
        pattern=r"^0?[0-7]{3}$")] = "0660"
    data_path_clear: Annotated[Literal["auto", "allow", "deny"], _meta(
        "ZMQ CLEAR: auto = honoured unless --http-admin-token is set; allow/deny = always/never")] = "auto"

    def shm_policy(self) -> ShmPolicy:
        """The :class:`ShmPolicy` these settings describe."""
        return ShmPolicy(tuple(self.shm_name_prefixes), frozenset(self.shm_allowed_uids),
                         frozenset(self.shm_allowed_gids))

    def ipc_mode(self) -> int | None:
        """The mode to give an ``ipc://`` socket file, or None for a tcp endpoint."""
        return int(self.zmq_ipc_permissions, 8) if self.zmq_endpoint.startswith("ipc://") else None

    def clear_allowed(self, admin_token: str | None) -> bool:
        """Whether a data-path CLEAR is honoured, given the HTTP admin token setting."""
        if self.data_path_clear == "auto":
            return not admin_token
        return self.data_path_clear == "allow"


@hookimpl
def lmcache_register_config(register: Any) -> None:
    """The built-in ``core.security`` plugin: the ``security`` section and its flags."""
    register(SECTION, SecurityConfig, title="data-path security",
             description="What one ZMQ client may make the server do (docs/security.md).")
