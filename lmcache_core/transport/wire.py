"""The ZMQ wire codec of LMCache 0.5.6's multiprocess protocol (``docs/datapath.md``).

Frames, as the server's ROUTER sees them after the identity frame::

    request: [uid, operation, payload_0, ..., payload_{n-1}]
    reply:   [uid (echoed), operation (echoed)]                 the op returned None
             [uid (echoed), operation (echoed), response]       otherwise
    error:   [uid (echoed), msgpack("error"), msgpack({"error": reason})]

Every frame is one msgpack document. ``uid`` is an int counter the client
picks; ``operation`` is the legacy int id of :class:`Op` (or its snake-case
name for ops added after the id table froze); each payload frame is one
parameter of the op, in declaration order, defaults included. This module is
both sides of that: :func:`decode_request` / :func:`encode_reply` /
:func:`encode_error_reply` for the server, :func:`encode_request` /
:func:`decode_reply` for our own client and tests.

Malformed input
---------------
The 0.5.6 server never answers a frame it cannot handle (§1.6): the client
times out. We instead raise :class:`MalformedRequest` for every frame a
well-behaved client never sends, and the server loop answers it with
:func:`encode_error_reply`, the only reply a 0.5.6 client fails fast on. The
classes are listed in :class:`MalformedKind`. Decoding is strict where the
client is: it coerces declared ``int``/``bool`` parameters before sending, so a
``bool`` where ``int`` is declared (or an ``int`` where ``bool`` is) can only
come from some other sender and is rejected, as are ``str`` where ``bytes`` is
declared and ``bool`` where ``int | None`` is.

The request uid
---------------
The real server never decodes the uid frame and echoes it byte for byte, so a
uid of ``"abc"`` is answered (``golden/raw_get_chunk_size_uid_str``). We echo it
byte for byte too and accept any value, but require the frame to be exactly one
well-formed msgpack document: garbage there is :attr:`MalformedKind.BAD_UID`
(the error reply still echoes the garbage, so a client can match it by bytes).

Streams
-------
A request whose operation frame is empty is a stream credit/cancel message
(§1.5); :func:`decode_request` returns it as :class:`StreamControl` without
checking anything else. A server that offers no streams ignores it (the real
server ignores control messages for streams it does not know).
"""

from __future__ import annotations

import enum
import functools
import operator
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Union

import msgspec

from lmcache_core.hashing import PackedTokens
from lmcache_core.transport import messages as m
from lmcache_core.transport.messages import DeviceIPCWrapper, IPCDescriptor
from lmcache_core.transport.tokens import KeyDecoder

__all__ = [
    "DESCRIPTOR_EXT_CODE",
    "ERROR_OPERATION",
    "FAILED_TRANSFER",
    "NO_FALLBACK",
    "OP_SPECS",
    "RETIRED_OP_IDS",
    "Dispatch",
    "ErrorReply",
    "MalformedKind",
    "MalformedReply",
    "MalformedRequest",
    "Op",
    "OpSpec",
    "Param",
    "Pool",
    "ReplyTypeError",
    "Request",
    "StreamControl",
    "WireError",
    "decode_descriptor",
    "decode_operation",
    "decode_reply",
    "decode_request",
    "encode_descriptor",
    "encode_error_reply",
    "encode_operation",
    "encode_reply",
    "encode_request",
    "reply_uid",
]


# -- operations ------------------------------------------------------------------------------


class Op(enum.IntEnum):
    """Every operation of the 0.5.6 protocol; the value is its legacy wire id (§5.1).

    Id 11 (``query_prefetch_lookup_hits``) is retired and has no member. The
    three ops added after the id table froze travel by name only; their values
    here (1001-1003) are internal and never accepted from the wire.
    """

    REGISTER_KV_CACHE = 1
    UNREGISTER_KV_CACHE = 2
    REGISTER_Q_CACHE = 3
    UNREGISTER_Q_CACHE = 4
    STORE_Q = 5
    STORE = 6
    RETRIEVE = 7
    LOOKUP = 8
    QUERY_PREFETCH_STATUS = 9
    WAIT_PREFETCH_STATUS = 10
    FREE_LOOKUP_LOCKS = 12
    END_SESSION = 13
    REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT = 14
    UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT = 15
    PREPARE_STORE = 16
    COMMIT_STORE = 17
    PREPARE_RETRIEVE = 18
    COMMIT_RETRIEVE = 19
    CLEAR = 20
    GET_CHUNK_SIZE = 21
    PING = 22
    REPORT_BLOCK_ALLOCATION = 23
    NOOP = 24
    CB_REGISTER_ROPE = 25
    CB_UNREGISTER_ROPE = 26
    CB_RETRIEVE_PRE_COMPUTED = 27
    CB_UNIFIED_LOOKUP = 28
    P2P_LOOKUP_AND_LOCK = 29
    P2P_QUERY_LOOKUP_RESULTS = 30
    P2P_UNLOCK_OBJECTS = 31
    GET_EXPERIMENTAL = 32
    CB_PROTOCOL_HANDSHAKE = 33
    CB_REORDER_PLAN = 1001
    SUBSCRIBE_KV_EVENTS = 1002
    SERVER_MODULE_CALL = 1003

    @property
    def wire_name(self) -> str:
        """The operation's name on the wire (``"get_chunk_size"``)."""
        return self.name.lower()

    @property
    def legacy_id(self) -> int | None:
        """The frozen int id the 0.5.6 client sends, or ``None`` for name-only ops."""
        return int(self) if self < _FIRST_NAME_ONLY else None

    @property
    def wire_value(self) -> int | str:
        """What the 0.5.6 client puts in the operation frame: the legacy id, else the name."""
        return int(self) if self < _FIRST_NAME_ONLY else self.wire_name


_FIRST_NAME_ONLY = 1001

RETIRED_OP_IDS: Mapping[int, str] = MappingProxyType({11: "query_prefetch_lookup_hits"})
"""Ids that must never be reused: a request carrying one is :attr:`MalformedKind.RETIRED_OP`."""

ERROR_OPERATION = "error"
"""Operation name of an error reply (not an op a client may request)."""

_OP_BY_NAME: dict[str, Op] = {op.wire_name: op for op in Op}
_OP_BY_ID: dict[int, Op] = {op.legacy_id: op for op in Op if op.legacy_id is not None}
_RETIRED_NAMES = frozenset(RETIRED_OP_IDS.values())
# The canonical encodings of every op, looked up before any msgpack decoding.
_OP_BY_FRAME: dict[bytes, Op] = {msgspec.msgpack.encode(op.wire_value): op for op in Op}
_OP_BY_FRAME.update({msgspec.msgpack.encode(op.wire_name): op for op in Op})
_FRAME_BY_OP: dict[Op, bytes] = {op: msgspec.msgpack.encode(op.wire_value) for op in Op}


# -- errors --------------------------------------------------------------------------------


class WireError(Exception):
    """Base of every error this codec raises."""


class MalformedKind(str, enum.Enum):
    """Why a request was refused (:attr:`MalformedRequest.kind`)."""

    EMPTY = "empty"  # no frame at all after the identity
    NO_OPERATION = "no_operation"  # a uid frame but no operation frame
    BAD_UID = "bad_uid"  # the uid frame is not one msgpack document
    BAD_OPERATION = "bad_operation"  # the operation frame is neither an int id nor a name
    UNKNOWN_OP = "unknown_op"  # an id or name no operation has
    RETIRED_OP = "retired_op"  # id 11 / query_prefetch_lookup_hits
    ARITY = "arity"  # payload frame count differs from the op's parameter count
    BAD_PAYLOAD = "bad_payload"  # a payload frame is not msgpack, or not of the declared type


class MalformedRequest(WireError):
    """A request no well-behaved 0.5.6 client sends; answer it with :func:`encode_error_reply`.

    ``uid_frame`` is the raw uid frame to echo (``None`` when the message had no
    frame at all, which cannot be answered). ``op`` is known once the operation
    frame decoded; ``param`` names the payload parameter at fault, if any.
    """

    def __init__(
        self,
        kind: MalformedKind,
        reason: str,
        *,
        uid_frame: bytes | None = None,
        op: Op | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.uid_frame = uid_frame
        self.op = op
        self.param = param

    @property
    def op_name(self) -> str | None:
        """The op's wire name when the operation frame decoded (for logs and metric labels)."""
        return self.op.wire_name if self.op is not None else None

    def __repr__(self) -> str:
        return f"MalformedRequest({self.kind.value}: {self.reason})"


class ReplyTypeError(WireError, TypeError):
    """A handler's return value does not match its op's reply type (a server bug, not a client's)."""


class MalformedReply(WireError):
    """A reply our client cannot accept: too few frames, another op, or an undecodable response."""


class ErrorReply(WireError):
    """The server answered with an ``"error"`` reply; ``reason`` is its ``error`` text."""

    def __init__(self, reason: str, detail: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


# -- descriptors (ext type 1) ------------------------------------------------------------------

DESCRIPTOR_EXT_CODE = 1

_descriptor_decoder = msgspec.msgpack.Decoder(IPCDescriptor)
_descriptor_encoder = msgspec.msgpack.Encoder()


def decode_descriptor(data: bytes) -> IPCDescriptor:
    """Decode and validate the data of one ext-1 element (a tagged map, §3).

    Raises ``msgspec.ValidationError`` / ``msgspec.DecodeError``.
    """
    return _descriptor_decoder.decode(data)


def encode_descriptor(descriptor: IPCDescriptor) -> msgspec.msgpack.Ext:
    """The ``Ext(1, tagged map)`` the 0.5.6 client sends for one registered tensor."""
    return msgspec.msgpack.Ext(DESCRIPTOR_EXT_CODE, _descriptor_encoder.encode(descriptor))


class _BadExt:
    """What ``_ext_hook`` returns for an ext it refuses.

    Errors raised inside an ext hook escape msgspec without the element's path,
    while errors raised by ``dec_hook`` become a ValidationError ending in
    ``- at `$[i]```. So the ext hook defers its verdict to the dec hook.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != DESCRIPTOR_EXT_CODE:
        return _BadExt(f"unsupported msgpack ext type {code} (only {DESCRIPTOR_EXT_CODE} is defined)")
    try:
        return DeviceIPCWrapper(_descriptor_decoder.decode(data))
    except Exception as exc:  # noqa: BLE001 - e.g. UnicodeDecodeError, which msgspec does not wrap
        return _BadExt(f"invalid ext-1 device descriptor: {_describe(exc)}")


def _dec_hook(expected: type, obj: Any) -> Any:
    # Called for the custom DeviceIPCWrapper type with whatever the element decoded to.
    if expected is DeviceIPCWrapper:
        if isinstance(obj, DeviceIPCWrapper):
            return obj
        if isinstance(obj, _BadExt):
            raise ValueError(obj.reason)
    raise TypeError(f"expected an ext-1 device descriptor, got {type(obj).__name__}")


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, DeviceIPCWrapper):
        return encode_descriptor(obj.descriptor)
    if isinstance(obj, PackedTokens):  # a decoded key's token list, encoded again
        return list(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


# -- per-op signatures ---------------------------------------------------------------------------

Pool = Literal["sync", "blocking", "transfer"]


class Dispatch(enum.Enum):
    """Where this server runs an op's handler (see :mod:`lmcache_core.transport.zmq_server`)."""

    SYNC = "sync"  # inline on the socket's loop thread
    # Inline on the loop thread, after the reply has gone out: for an op whose one reply is its
    # failure value whatever the handler does (LOOKUP answers None; QUERY carries the result). The
    # client's turnaround overlaps the handler's work, and the next request, from any client, is
    # read only when that work is done, so a QUERY still finds the result.
    SYNC_AFTER_REPLY = "sync-after-reply"
    AFFINITY = "affinity"  # on the lane its client identity is pinned to (transfers stay in order)
    NORMAL = "normal"  # on the CPU pool


class _NoFallback:
    def __repr__(self) -> str:
        return "NO_FALLBACK"


NO_FALLBACK: Any = _NoFallback()
"""``OpSpec.failure`` of an op without an in-band failure value: a failing handler gets the
``"error"`` reply instead."""


@dataclass(frozen=True)
class Param:
    """One payload frame of an op: name, declared type, client default (``msgspec.NODEFAULT`` if none)."""

    name: str
    type: Any
    default: Any


@dataclass(frozen=True)
class OpSpec:
    """One op, whole: its ``*Args`` Struct, ordered params, reply type, how 0.5.6 runs it, how we serve it.

    ``pool`` is how the real server schedules the handler (§5.1): ``sync`` inline
    on the socket thread, ``blocking`` on the CPU pool, ``transfer`` on the
    per-client-affine transfer pool. ``streaming`` marks ``subscribe_kv_events``.
    ``dispatch`` is where *this* server runs it (None: not served, answered with the
    ``"error"`` reply) and ``failure`` the reply a well-formed request that fails gets
    (the op's in-band failure value, or :data:`NO_FALLBACK`). The handler functions
    themselves are bound by :class:`lmcache_core.transport.handlers.DataPath`, one per
    served op (checked when it builds its table).
    """

    op: Op
    args_type: type[m.Args]
    params: tuple[Param, ...]
    response_type: Any
    pool: Pool
    streaming: bool = False
    dispatch: Dispatch | None = None
    failure: Any = NO_FALLBACK

    def __post_init__(self) -> None:
        if self.dispatch is Dispatch.SYNC_AFTER_REPLY and not (self.response_type is None and self.failure is None):
            raise ValueError(f"{self.op.name}: only an op whose one reply is None may reply before its work")

    @property
    def arity(self) -> int:
        """Number of payload frames."""
        return len(self.params)


_BytesBool = tuple[bytes, bool]
FAILED_TRANSFER = (b"", False)
"""The in-band failure value of STORE and RETRIEVE: no event handle, not done."""
_S, _A, _N, _NOT_SERVED = Dispatch.SYNC, Dispatch.AFFINITY, Dispatch.NORMAL, None
_R = Dispatch.SYNC_AFTER_REPLY
_X = NO_FALLBACK
# One row per op: op, args, reply type, 0.5.6's pool, our dispatch, our failure value.
# LOOKUP and its follow-ups run inline: on L1 they are tens of microseconds of work, less than a
# hand-off to a pool and back costs (LOOKUP p50 is a target; long lookups hash off the loop).
# LOOKUP's reply is None whatever happens, so it goes out before the work (SYNC_AFTER_REPLY).
_TABLE: tuple[tuple[Op, type[m.Args], Any, Pool, Dispatch | None, Any], ...] = (
    (Op.REGISTER_KV_CACHE, m.RegisterKVCacheArgs, None, "sync", _S, _X),
    (Op.UNREGISTER_KV_CACHE, m.InstanceArgs, None, "sync", _S, None),
    (Op.REGISTER_Q_CACHE, m.RegisterKVCacheArgs, None, "sync", _NOT_SERVED, _X),
    (Op.UNREGISTER_Q_CACHE, m.InstanceArgs, None, "sync", _NOT_SERVED, _X),
    (Op.STORE_Q, m.StoreArgs, _BytesBool, "transfer", _NOT_SERVED, _X),
    (Op.STORE, m.StoreArgs, _BytesBool, "transfer", _A, FAILED_TRANSFER),
    (Op.RETRIEVE, m.RetrieveArgs, _BytesBool, "transfer", _A, FAILED_TRANSFER),
    (Op.LOOKUP, m.KeyTpArgs, None, "blocking", _R, None),
    (Op.QUERY_PREFETCH_STATUS, m.RequestIdArgs, int | None, "blocking", _S, 0),
    (Op.WAIT_PREFETCH_STATUS, m.WaitPrefetchStatusArgs, int | None, "blocking", _N, 0),
    (Op.FREE_LOOKUP_LOCKS, m.KeyTpArgs, None, "blocking", _S, None),
    (Op.END_SESSION, m.RequestIdArgs, None, "blocking", _N, None),
    (Op.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT, m.RegisterEngineDrivenArgs, m.RegisterEngineDrivenContextResponse,
     "sync", _S, _X),
    (Op.UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT, m.InstanceArgs, None, "sync", _S, None),
    (Op.PREPARE_STORE, m.KeyInstanceArgs, m.PrepareStoreResponse, "transfer", _A, m.PrepareStoreResponse(context={})),
    (Op.COMMIT_STORE, m.CommitStoreArgs, bool, "transfer", _A, False),
    (Op.PREPARE_RETRIEVE, m.KeyInstanceArgs, m.PrepareRetrieveResponse, "transfer", _A,
     m.PrepareRetrieveResponse(success=False)),
    (Op.COMMIT_RETRIEVE, m.KeyInstanceArgs, bool, "transfer", _A, False),
    (Op.CLEAR, m.ClearArgs, None, "blocking", _N, _X),
    (Op.GET_CHUNK_SIZE, m.NoArgs, int, "sync", _S, _X),
    (Op.PING, m.PingArgs, bool, "blocking", _N, True),
    (Op.REPORT_BLOCK_ALLOCATION, m.ReportBlockAllocationArgs, None, "blocking", _N, None),
    (Op.NOOP, m.NoArgs, str, "sync", _S, _X),
    (Op.CB_REGISTER_ROPE, m.CBRegisterRopeArgs, None, "blocking", _NOT_SERVED, _X),
    (Op.CB_UNREGISTER_ROPE, m.InstanceArgs, None, "blocking", _NOT_SERVED, _X),
    (Op.CB_RETRIEVE_PRE_COMPUTED, m.CBRetrievePreComputedArgs, _BytesBool, "transfer", _NOT_SERVED, _X),
    (Op.CB_UNIFIED_LOOKUP, m.KeyTpArgs, m.CBUnifiedLookupResult | None, "blocking", _NOT_SERVED, _X),
    (Op.P2P_LOOKUP_AND_LOCK, m.P2PLookupAndLockArgs, int, "blocking", _NOT_SERVED, _X),
    (Op.P2P_QUERY_LOOKUP_RESULTS, m.TaskIdArgs, list[m.TransferChannelAddress] | None, "blocking", _NOT_SERVED, _X),
    (Op.P2P_UNLOCK_OBJECTS, m.P2PUnlockObjectsArgs, None, "blocking", _NOT_SERVED, _X),
    (Op.GET_EXPERIMENTAL, m.NoArgs, list[str], "sync", _S, _X),
    (Op.CB_PROTOCOL_HANDSHAKE, m.CBProtocolHandshakeArgs, tuple[int, bool], "blocking", _NOT_SERVED, _X),
    (Op.CB_REORDER_PLAN, m.CBReorderPlanArgs, list[int], "blocking", _NOT_SERVED, _X),
    (Op.SUBSCRIBE_KV_EVENTS, m.SubscribeKVEventsArgs, m.KVEventBatch, "sync", _NOT_SERVED, _X),
    (Op.SERVER_MODULE_CALL, m.ServerModuleCallArgs, m.ServerModuleCallResponse, "blocking", _NOT_SERVED, _X),
)


def _params(args_type: type[m.Args]) -> tuple[Param, ...]:
    return tuple(Param(f.name, f.type, f.default) for f in msgspec.structs.fields(args_type))


OP_SPECS: Mapping[Op, OpSpec] = MappingProxyType(
    {
        op: OpSpec(op, args, _params(args), resp, pool, streaming=op is Op.SUBSCRIBE_KV_EVENTS, dispatch=dispatch,
                   failure=failure)
        for op, args, resp, pool, dispatch, failure in _TABLE
    }
)
"""Signature of every :class:`Op` (tested to cover all of them)."""


def _payload_decoder(tp: Any) -> msgspec.msgpack.Decoder | KeyDecoder:
    # Only descriptor lists need the ext/dec hooks; elsewhere an ext in an
    # ``Any`` position (request_configs) stays a plain msgspec Ext.
    if tp is m.IPCCacheServerKey:  # the token list: decoded once per distinct list (transport/tokens.py)
        return KeyDecoder()
    if tp == list[DeviceIPCWrapper]:
        return msgspec.msgpack.Decoder(tp, ext_hook=_ext_hook, dec_hook=_dec_hook)
    return msgspec.msgpack.Decoder(tp)


@dataclass(frozen=True)
class _Codec:
    """Prebuilt per-op decoders (one per param, and one for the reply)."""

    spec: OpSpec
    names: tuple[str, ...]
    decoders: tuple[msgspec.msgpack.Decoder | KeyDecoder, ...]
    coercions: tuple[type | None, ...]  # int/bool params are coerced before encoding, as the client does
    reply_decoder: msgspec.msgpack.Decoder | None
    reply_check: Any  # callable(value) -> None, raising ReplyTypeError
    none_ok: bool  # whether a handler may return None (no response frame)


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def _is_bytes(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview))


def _make_reply_check(op: Op, tp: Any) -> Any:
    """A cheap check that ``value`` encodes to what the client decodes as ``tp``."""

    def fail(value: Any) -> None:
        raise ReplyTypeError(f"{op.wire_name} must reply {_type_name(tp)}, handler returned {value!r:.200}")

    if tp is None:
        return fail  # only None is valid, and None never reaches the check
    if tp == _BytesBool:

        def check(value: Any) -> None:
            if not (
                type(value) in (tuple, list) and len(value) == 2 and _is_bytes(value[0]) and type(value[1]) is bool
            ):
                fail(value)

        return check
    if tp is int or tp == int | None:

        def check(value: Any) -> None:
            if type(value) is bool or not isinstance(value, int):
                fail(value)

        return check
    if tp is bool:
        return lambda value: None if type(value) is bool else fail(value)
    if tp is str:
        return lambda value: None if isinstance(value, str) else fail(value)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return lambda value: None if isinstance(value, tp) else fail(value)
    # Rare ops: round-trip through the client's typed decoder.
    inner = _strip_optional(tp)
    decoder = msgspec.msgpack.Decoder(inner)

    def check(value: Any) -> None:
        try:
            decoder.decode(_encoder.encode(value))
        except (msgspec.MsgspecError, TypeError, ValueError, NotImplementedError, OverflowError):
            fail(value)

    return check


def _strip_optional(tp: Any) -> Any:
    """``X`` for ``X | None`` (either spelling); ``tp`` itself otherwise."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args:
            rest = [a for a in args if a is not type(None)]
            return rest[0] if len(rest) == 1 else functools.reduce(operator.or_, rest)
    return tp


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp).replace("typing.", "")


def _allows_none(spec: OpSpec) -> bool:
    # A stream ends with a 2-frame reply, so streaming ops may "return" None too.
    return spec.response_type is None or spec.streaming or _strip_optional(spec.response_type) is not spec.response_type


def _build_codec(spec: OpSpec) -> _Codec:
    return _Codec(
        spec=spec,
        names=tuple(p.name for p in spec.params),
        decoders=tuple(_payload_decoder(p.type) for p in spec.params),
        coercions=tuple(p.type if p.type in (int, bool) else None for p in spec.params),
        reply_decoder=None if spec.response_type is None else msgspec.msgpack.Decoder(spec.response_type),
        reply_check=_make_reply_check(spec.op, spec.response_type),
        none_ok=_allows_none(spec),
    )


_CODECS: dict[Op, _Codec] = {op: _build_codec(spec) for op, spec in OP_SPECS.items()}


# -- server side ---------------------------------------------------------------------------------


class Request(msgspec.Struct, frozen=True):
    """A decoded request. Echo ``uid_frame`` and ``op_frame`` unchanged in the reply.

    ``uid`` is the decoded uid (an ``int`` from any 0.5.6 client, but see the
    module docstring); ``args`` is the op's ``*Args`` Struct (``OP_SPECS[op].args_type``).
    """

    uid_frame: bytes
    op_frame: bytes
    op: Op
    uid: Any
    args: m.Args


class StreamControl(msgspec.Struct, frozen=True):
    """A stream credit or cancel message: ``[uid, b"", b"ack" | b"cancel"]`` (§1.5)."""

    uid_frame: bytes
    payloads: tuple[bytes, ...]


def _as_bytes(frame: Any) -> bytes:
    return frame if type(frame) is bytes else bytes(frame)


def decode_operation(frame: bytes) -> Op:
    """The :class:`Op` an operation frame names (a legacy int id or a name).

    Raises :class:`MalformedRequest` (``BAD_OPERATION``, ``UNKNOWN_OP``, ``RETIRED_OP``).
    """
    op = _OP_BY_FRAME.get(_as_bytes(frame))
    if op is not None:
        return op
    try:
        value = msgspec.msgpack.decode(frame)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes; msgspec raises UnicodeDecodeError unwrapped
        raise MalformedRequest(
            MalformedKind.BAD_OPERATION, f"operation frame is not msgpack: {_describe(exc)}"
        ) from None
    if type(value) is int:  # non-canonical int encodings (e.g. cc 06) still name the op
        if value in RETIRED_OP_IDS:
            raise MalformedRequest(
                MalformedKind.RETIRED_OP, f"operation id {value} ({RETIRED_OP_IDS[value]}) is retired"
            )
        found = _OP_BY_ID.get(value)
        if found is None:
            raise MalformedRequest(MalformedKind.UNKNOWN_OP, f"unknown operation id {value}")
        return found
    if type(value) is str:
        if value in _RETIRED_NAMES:
            raise MalformedRequest(MalformedKind.RETIRED_OP, f"operation {value!r} is retired")
        raise MalformedRequest(MalformedKind.UNKNOWN_OP, f"unknown operation {value[:100]!r}")
    raise MalformedRequest(
        MalformedKind.BAD_OPERATION,
        f"operation must be an int id or a name, got {type(value).__name__}",
    )


def encode_operation(op: Op) -> bytes:
    """The operation frame the 0.5.6 client sends for ``op`` (legacy id, else name)."""
    return _FRAME_BY_OP[op]


def decode_request(frames: Sequence[bytes]) -> Request | StreamControl:
    """Decode what the ROUTER received after the identity frame: ``[uid, op, payload...]``.

    Returns a :class:`Request`, or :class:`StreamControl` for an empty operation
    frame. Raises :class:`MalformedRequest` for anything else; nothing else is
    raised for any input. Frames may be ``bytes`` or any buffer (``zmq.Frame``).
    """
    count = len(frames)
    if count == 0:
        raise MalformedRequest(MalformedKind.EMPTY, "empty message: no request_uid frame")
    uid_frame = frames[0]
    if count == 1:
        raise MalformedRequest(MalformedKind.NO_OPERATION, "message has no operation frame", uid_frame=uid_frame)
    op_frame = frames[1]
    if len(op_frame) == 0:
        return StreamControl(uid_frame, tuple(frames[2:]))
    try:
        uid = msgspec.msgpack.decode(uid_frame)
    except Exception as exc:  # noqa: BLE001 - untrusted bytes; msgspec raises UnicodeDecodeError unwrapped
        raise MalformedRequest(
            MalformedKind.BAD_UID,
            f"request_uid frame is not one msgpack value: {_describe(exc)}",
            uid_frame=uid_frame,
        ) from None
    try:
        op = decode_operation(op_frame)
    except MalformedRequest as exc:
        exc.uid_frame = uid_frame
        raise
    codec = _CODECS[op]
    if count - 2 != len(codec.decoders):
        raise MalformedRequest(
            MalformedKind.ARITY,
            f"{op.wire_name} takes {len(codec.decoders)} payload frame(s) "
            f"({', '.join(codec.names) or 'none'}), got {count - 2}",
            uid_frame=uid_frame,
            op=op,
        )
    values = []
    # One iteration per parameter (at most 8), never per element.
    for index, decoder in enumerate(codec.decoders):
        try:
            values.append(decoder.decode(frames[index + 2]))
        except Exception as exc:  # noqa: BLE001 - untrusted input: every failure is a malformed payload
            name = codec.names[index]
            raise MalformedRequest(
                MalformedKind.BAD_PAYLOAD,
                f"{op.wire_name} payload[{index}] {name}: {_describe(exc)}",
                uid_frame=uid_frame,
                op=op,
                param=name,
            ) from None
    return Request(uid_frame, op_frame, op, uid, codec.spec.args_type(*values))


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "..."


def encode_reply(request: Request, value: Any) -> list[bytes]:
    """The reply frames for ``request`` when its handler returned ``value``.

    ``None`` gives ``[uid, op]`` (no response frame, as the real server sends for
    void ops and for a pending ``query_prefetch_status``); anything else gives
    ``[uid, op, msgpack(value)]``. ``value`` must match the op's reply type
    (``OP_SPECS[op].response_type``): ``bytes`` for bin, a 2-tuple
    ``(bytes, bool)`` for store/retrieve, an ``int`` (never a ``bool``) for
    ``int | None``, the reply Struct for ops 14/16/18. A mismatch raises
    :class:`ReplyTypeError`, because the client would drop the reply and time out.
    """
    codec = _CODECS[request.op]
    if value is None:
        if not codec.none_ok:
            raise ReplyTypeError(f"{request.op.wire_name} must reply {_type_name(codec.spec.response_type)}, got None")
        return [request.uid_frame, request.op_frame]
    codec.reply_check(value)
    return [request.uid_frame, request.op_frame, _encoder.encode(value)]


_ERROR_OP_FRAME = msgspec.msgpack.encode(ERROR_OPERATION)


def encode_error_reply(uid_frame: bytes, reason: str) -> list[bytes]:
    """``[uid, "error", {"error": reason}]``: the reply that makes a 0.5.6 client fail fast (§1.6)."""
    return [uid_frame, _ERROR_OP_FRAME, msgspec.msgpack.encode({"error": reason})]


# -- client side ---------------------------------------------------------------------------------


def encode_request(uid: int, op: Op, *args: Any, **kwargs: Any) -> list[bytes]:
    """The frames the 0.5.6 client sends for ``op(*args, **kwargs)``: ``[uid, op, payload...]``.

    Arguments bind like a call to the client method: defaults are applied and
    sent. Declared ``int``/``bool`` parameters are coerced with ``int()`` /
    ``bool()`` as the client does. Descriptor lists may hold
    :class:`DeviceIPCWrapper` or bare descriptor Structs. Types are not
    otherwise validated here (the server's decoder does that).
    """
    codec = _CODECS[op]
    params = codec.spec.params
    if len(args) > len(params):
        raise TypeError(f"{op.wire_name} takes {len(params)} argument(s), got {len(args)}")
    values = list(args)
    for param in params[len(args) :]:
        if param.name in kwargs:
            values.append(kwargs.pop(param.name))
        elif param.default is not msgspec.NODEFAULT:
            values.append(param.default)
        else:
            raise TypeError(f"{op.wire_name} missing argument {param.name!r}")
    if kwargs:
        raise TypeError(f"{op.wire_name} got unexpected argument(s) {sorted(kwargs)}")
    frames = [msgspec.msgpack.encode(int(uid)), _FRAME_BY_OP[op]]
    for value, coerce, param in zip(values, codec.coercions, params):
        if coerce is not None:
            value = coerce(value)
        elif param.type == list[DeviceIPCWrapper]:
            value = [v if isinstance(v, DeviceIPCWrapper) else DeviceIPCWrapper(v) for v in value]
        frames.append(_encoder.encode(value))
    return frames


def reply_uid(frames: Sequence[bytes]) -> int:
    """The request uid a reply answers (the first frame). Raises :class:`MalformedReply`."""
    if not frames:
        raise MalformedReply("empty reply")
    try:
        return msgspec.msgpack.decode(frames[0], type=int)
    except (msgspec.MsgspecError, ValueError) as exc:
        raise MalformedReply(f"reply uid is not an int: {exc}") from None


def decode_reply(op: Op, frames: Sequence[bytes]) -> Any:
    """Decode a reply ``[uid, op, response?]`` to a request for ``op``.

    Returns ``None`` when there is no response frame; frames after the first
    response frame are ignored (as the 0.5.6 client does). Raises
    :class:`ErrorReply` for an ``"error"`` reply and :class:`MalformedReply` for
    too few frames, a reply for another op or a response of the wrong type.
    Stricter than the 0.5.6 client, which coerces ``int``/``bool`` responses.
    """
    if len(frames) < 2:
        raise MalformedReply(f"reply has {len(frames)} frame(s); at least [uid, op] expected")
    op_frame = _as_bytes(frames[1])
    if op_frame == _ERROR_OP_FRAME:
        detail = None
        if len(frames) > 2:
            try:
                detail = msgspec.msgpack.decode(frames[2])
            except (msgspec.MsgspecError, ValueError):
                detail = bytes(frames[2])
        reason = detail.get("error") if isinstance(detail, dict) else None
        raise ErrorReply(str(reason) if reason is not None else f"error reply: {detail!r}", detail)
    try:
        answered = decode_operation(op_frame)
    except MalformedRequest as exc:
        raise MalformedReply(f"reply operation: {exc.reason}") from None
    if answered is not op:
        raise MalformedReply(f"reply is for {answered.wire_name}, request was {op.wire_name}")
    if len(frames) == 2:
        return None
    codec = _CODECS[op]
    if codec.reply_decoder is None:
        # The client decodes a void op's response as None: only nil is accepted.
        if _as_bytes(frames[2]) == b"\xc0":
            return None
        raise MalformedReply(f"{op.wire_name} replies nothing, got a response frame")
    try:
        return codec.reply_decoder.decode(frames[2])
    except (msgspec.MsgspecError, ValueError) as exc:
        raise MalformedReply(f"{op.wire_name} response: {exc}") from None
