"""Wire codec properties: the op table, round trips for every op, and every malformed class.

Values are generated from the codec's own type declarations (``msgspec.inspect``),
so a new op or field is covered without touching this file; the descriptor
variants get hand-written strategies because their validity rules span fields.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lmcache_core.transport import messages as m
from lmcache_core.transport import wire
from lmcache_core.transport.wire import (
    ErrorReply,
    MalformedKind,
    MalformedReply,
    MalformedRequest,
    Op,
    ReplyTypeError,
    Request,
    StreamControl,
)

PROFILE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)
enc = msgspec.msgpack.encode

# LMCache 0.5.6's op id table, typed in by hand: the table the codec must implement.
LEGACY_TABLE = {
    1: "register_kv_cache", 2: "unregister_kv_cache", 3: "register_q_cache", 4: "unregister_q_cache",
    5: "store_q", 6: "store", 7: "retrieve", 8: "lookup", 9: "query_prefetch_status",
    10: "wait_prefetch_status", 12: "free_lookup_locks", 13: "end_session",
    14: "register_kv_cache_engine_driven_context", 15: "unregister_kv_cache_engine_driven_context",
    16: "prepare_store", 17: "commit_store", 18: "prepare_retrieve", 19: "commit_retrieve", 20: "clear",
    21: "get_chunk_size", 22: "ping", 23: "report_block_allocation", 24: "noop", 25: "cb_register_rope",
    26: "cb_unregister_rope", 27: "cb_retrieve_pre_computed", 28: "cb_unified_lookup",
    29: "p2p_lookup_and_lock", 30: "p2p_query_lookup_results", 31: "p2p_unlock_objects",
    32: "get_experimental", 33: "cb_protocol_handshake",
}  # fmt: skip
NAME_ONLY = {"cb_reorder_plan", "subscribe_kv_events", "server_module_call"}
# Payload frame counts from §5.1 (and base.py for the rest).
ARITY = {
    "register_kv_cache": 7, "unregister_kv_cache": 1, "store": 4, "retrieve": 5, "lookup": 2,
    "query_prefetch_status": 1, "wait_prefetch_status": 2, "free_lookup_locks": 2, "end_session": 1,
    "register_kv_cache_engine_driven_context": 1, "prepare_store": 2, "commit_store": 3,
    "prepare_retrieve": 2, "commit_retrieve": 2, "clear": 1, "get_chunk_size": 0, "ping": 1,
    "report_block_allocation": 3, "noop": 0, "get_experimental": 0, "cb_register_rope": 8,
    "subscribe_kv_events": 4,
}  # fmt: skip


# -- strategies derived from the declared types ---------------------------------------------------

INT64 = st.integers(-(2**63), 2**64 - 1)  # everything msgpack can carry
json_scalars = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text(max_size=8)
any_value = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _int_strategy(info: mi.IntType) -> st.SearchStrategy[int]:
    low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else -(2**63))
    high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else 2**64 - 1)
    return st.integers(low, high)


def _str_strategy(info: mi.StrType) -> st.SearchStrategy[str]:
    if info.pattern is None:
        return st.text(max_size=info.max_length if info.max_length is not None else 16)
    limit = info.max_length

    def fits(text: str) -> bool:
        return re.search(info.pattern, text) is not None

    return st.from_regex(info.pattern, fullmatch=True).map(lambda s: s[:limit] if limit else s).filter(fits)


def strategy_for(info: Any) -> st.SearchStrategy[Any]:
    """A strategy for values of a ``msgspec.inspect`` type: valid by construction."""
    if not isinstance(info, mi.Type):
        info = mi.type_info(info)
    if isinstance(info, mi.IntType):
        return _int_strategy(info)
    if isinstance(info, mi.StrType):
        return _str_strategy(info)
    if isinstance(info, mi.BytesType):
        size = info.min_length or 0
        return st.binary(min_size=size, max_size=info.max_length if info.max_length is not None else 16)
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.FloatType):
        return st.floats(allow_nan=False)
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.AnyType):
        return any_value
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.EnumType):
        return st.sampled_from(list(info.cls))
    if isinstance(info, mi.UnionType):
        return st.one_of([strategy_for(t) for t in info.types])
    if isinstance(info, mi.ListType):
        return st.lists(strategy_for(info.item_type), max_size=5)
    if isinstance(info, mi.VarTupleType):
        return st.lists(strategy_for(info.item_type), max_size=5).map(tuple)
    if isinstance(info, mi.TupleType):
        return st.tuples(*[strategy_for(t) for t in info.item_types])
    if isinstance(info, mi.DictType):
        return st.dictionaries(strategy_for(info.key_type), strategy_for(info.value_type), max_size=3)
    if isinstance(info, mi.TypedDictType):
        return st.fixed_dictionaries({}, optional={f.name: strategy_for(f.type) for f in info.fields})
    if isinstance(info, mi.CustomType) and info.cls is m.DeviceIPCWrapper:
        return descriptors.map(m.DeviceIPCWrapper)
    if isinstance(info, mi.StructType):
        if info.cls in DESCRIPTOR_STRATEGIES:
            return DESCRIPTOR_STRATEGIES[info.cls]
        return st.builds(info.cls, **{f.name: strategy_for(f.type) for f in info.fields})
    raise NotImplementedError(f"no strategy for {info!r}")


@st.composite
def tensor_metadata(draw: st.DrawFn) -> m.TensorMetadata:
    """A valid view: known dtype, matching ranks (span checked by the caller's segment size)."""
    rank = draw(st.integers(0, 5))
    return m.TensorMetadata(
        dtype=draw(st.sampled_from(sorted(m.DTYPE_ITEMSIZE))),
        shape=tuple(draw(st.lists(st.integers(0, 70), min_size=rank, max_size=rank))),
        stride=tuple(draw(st.lists(st.integers(0, 5000), min_size=rank, max_size=rank))),
        storage_offset=draw(st.integers(0, 1000)),
        device_uuid=draw(st.sampled_from(["cpu", "GPU-3b2f6c1e-0000-4000-8000-000000000000"])),
    )


shm_names = st.from_regex(r"/lmcache_kv_[0-9]{1,6}_[0-9]{1,3}", fullmatch=True)
slack = st.integers(0, 4096)


@st.composite
def cpu_shm(draw: st.DrawFn) -> m.CpuShmIPCData:
    meta = draw(tensor_metadata())
    return m.CpuShmIPCData(draw(shm_names), meta.byte_span() + draw(slack), 1, meta)


@st.composite
def cuda(draw: st.DrawFn) -> m.CudaIPCData:
    meta = draw(tensor_metadata())
    maybe_bin = st.none() | st.binary(max_size=64)
    handle = (
        draw(st.integers(0, 7)),
        draw(maybe_bin),
        meta.byte_span() + draw(slack),
        draw(st.integers(0, 2**40)),
        draw(maybe_bin),
        draw(st.integers(0, 2**20)),
        draw(maybe_bin),
        draw(st.booleans()),
    )
    return m.CudaIPCData(handle, 1, meta)


@st.composite
def cuda_raw(draw: st.DrawFn) -> m.RawCudaIPCData:
    meta = draw(tensor_metadata())
    return m.RawCudaIPCData(
        draw(st.binary(min_size=64, max_size=64)), draw(st.integers(0, 2**40)), meta.byte_span() + draw(slack), 1, meta
    )


@st.composite
def cuda_vmm(draw: st.DrawFn) -> m.VmmCudaIPCData:
    meta = draw(tensor_metadata())
    kind = draw(st.sampled_from(["posix_fd", "fabric"]))
    nbytes = meta.byte_span() + draw(slack)
    offset = draw(st.integers(0, 2**30))
    return m.VmmCudaIPCData(
        export_id=draw(st.binary(min_size=16, max_size=16)),
        kind=kind,
        fabric_blob=draw(st.binary(max_size=32)) if kind == "fabric" else None,
        alloc_size=offset + nbytes + draw(slack),
        alloc_offset=offset,
        nbytes=nbytes,
        version=1,
        metadata=meta,
    )


DESCRIPTOR_STRATEGIES = {
    m.CpuShmIPCData: cpu_shm(),
    m.CudaIPCData: cuda(),
    m.RawCudaIPCData: cuda_raw(),
    m.VmmCudaIPCData: cuda_vmm(),
    m.TensorMetadata: tensor_metadata(),
}
descriptors = st.one_of(cpu_shm(), cuda(), cuda_raw(), cuda_vmm())
uids = st.integers(0, 2**64 - 1)


def args_values(args: m.Args) -> list[Any]:
    """An Args Struct as the positional arguments of the client call."""
    return [getattr(args, name) for name in args.__struct_fields__]


def stub_request(op: Op, uid: int = 7) -> Request:
    """A request as decode_request would return it (for reply tests)."""
    return Request(enc(uid), wire.encode_operation(op), op, uid, m.NoArgs())


def key(**changes: Any) -> m.IPCCacheServerKey:
    """A valid store key (golden-like), with some fields changed."""
    base = m.IPCCacheServerKey("golden-model", 1, 0, list(range(512)), 0, 512, "req-A", "", None, 1)
    return msgspec.structs.replace(base, **changes)


def shm_descriptor(**meta_changes: Any) -> m.CpuShmIPCData:
    meta = m.TensorMetadata("float16", (2, 64, 16, 2, 8), (16384, 256, 16, 8, 1), 0, "cpu")
    return m.CpuShmIPCData("/lmcache_kv_1_0", 65536, 1, msgspec.structs.replace(meta, **meta_changes))


# -- the op table ------------------------------------------------------------------------------


def test_op_table_matches_the_protocol() -> None:
    """Every legacy id and name of §5.1, nothing else; 11 is retired."""
    assert {op.legacy_id: op.wire_name for op in Op if op.legacy_id is not None} == LEGACY_TABLE
    assert {op.wire_name for op in Op if op.legacy_id is None} == NAME_ONLY
    assert set(wire.OP_SPECS) == set(Op)
    assert dict(wire.RETIRED_OP_IDS) == {11: "query_prefetch_lookup_hits"}
    for name, count in ARITY.items():
        assert wire.OP_SPECS[Op[name.upper()]].arity == count, name


@pytest.mark.parametrize("op", list(Op))
def test_decode_operation_accepts_id_and_name(op: Op) -> None:
    """Both wire forms name the op; the client's form is the legacy id when there is one."""
    assert wire.decode_operation(enc(op.wire_name)) is op
    assert wire.decode_operation(wire.encode_operation(op)) is op
    assert msgspec.msgpack.decode(wire.encode_operation(op)) == op.wire_value
    if op.legacy_id is not None:
        assert wire.decode_operation(enc(op.legacy_id)) is op
        assert wire.encode_operation(op) == enc(op.legacy_id)
    else:
        assert wire.encode_operation(op) == enc(op.wire_name)


def test_decode_operation_accepts_non_canonical_int_encoding() -> None:
    """msgpack allows a wider int format than needed; the op is still STORE."""
    assert wire.decode_operation(b"\xcc\x06") is Op.STORE
    assert wire.decode_operation(b"\xcf" + (6).to_bytes(8, "big")) is Op.STORE


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (enc(11), MalformedKind.RETIRED_OP),
        (enc("query_prefetch_lookup_hits"), MalformedKind.RETIRED_OP),
        (enc(99), MalformedKind.UNKNOWN_OP),
        (enc(0), MalformedKind.UNKNOWN_OP),
        (enc(-1), MalformedKind.UNKNOWN_OP),
        (enc(1001), MalformedKind.UNKNOWN_OP),  # our internal value for cb_reorder_plan is not a wire id
        (enc("no_such_op"), MalformedKind.UNKNOWN_OP),
        (enc("error"), MalformedKind.UNKNOWN_OP),
        (enc("STORE"), MalformedKind.UNKNOWN_OP),
        (enc(True), MalformedKind.BAD_OPERATION),  # the real server would read True as id 1
        (enc(6.0), MalformedKind.BAD_OPERATION),
        (enc(None), MalformedKind.BAD_OPERATION),
        (enc([6]), MalformedKind.BAD_OPERATION),
        (b"\xc1", MalformedKind.BAD_OPERATION),
        (b"\x06\x06", MalformedKind.BAD_OPERATION),
    ],
)
def test_decode_operation_rejects(frame: bytes, kind: MalformedKind) -> None:
    """Unknown, retired and non-id operation frames are typed errors."""
    with pytest.raises(MalformedRequest) as info:
        wire.decode_operation(frame)
    assert info.value.kind is kind and info.value.reason


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("op", list(Op))
@PROFILE
@given(data=st.data(), uid=uids)
def test_request_round_trip(op: Op, data: st.DataObject, uid: int) -> None:
    """encode_request then decode_request gives back the uid, op and every argument."""
    spec = wire.OP_SPECS[op]
    args = data.draw(strategy_for(spec.args_type))
    frames = wire.encode_request(uid, op, *args_values(args))
    assert len(frames) == 2 + spec.arity
    request = wire.decode_request(frames)
    assert isinstance(request, Request)
    assert (request.uid, request.op, request.uid_frame, request.op_frame) == (uid, op, frames[0], frames[1])
    assert type(request.args) is spec.args_type
    assert request.args == args


@pytest.mark.parametrize("op", [op for op in Op if wire.OP_SPECS[op].response_type is not None])
@PROFILE
@given(data=st.data(), uid=uids)
def test_reply_round_trip(op: Op, data: st.DataObject, uid: int) -> None:
    """encode_reply then decode_reply gives back the value; None travels as a missing frame."""
    value = data.draw(strategy_for(wire.OP_SPECS[op].response_type))
    frames = wire.encode_reply(stub_request(op, uid), value)
    assert frames[:2] == [enc(uid), wire.encode_operation(op)]
    assert len(frames) == (2 if value is None else 3)
    assert wire.reply_uid(frames) == uid
    assert wire.decode_reply(op, frames) == value


@PROFILE
@given(key=strategy_for(m.IPCCacheServerKey), uid=uids)
def test_key_round_trip_and_field_order(key: m.IPCCacheServerKey, uid: int) -> None:
    """A key is a map of all 10 fields in the dataclass order, defaults included (§4)."""
    frames = wire.encode_request(uid, Op.LOOKUP, key, 1)
    assert list(msgspec.msgpack.decode(frames[2])) == [
        "model_name", "world_size", "worker_id", "token_ids", "start", "end",
        "request_id", "cache_salt", "request_configs", "num_kv_readers",
    ]  # fmt: skip
    request = wire.decode_request(frames)
    assert isinstance(request, Request) and request.args.key == key  # type: ignore[attr-defined]


@PROFILE
@given(descriptor=descriptors)
def test_descriptor_ext_round_trip(descriptor: m.IPCDescriptor) -> None:
    """A descriptor is ext 1 whose data is a map with "type" first, then fields, version, metadata."""
    ext = wire.encode_descriptor(descriptor)
    assert ext.code == 1
    fields = list(msgspec.msgpack.decode(ext.data))
    assert fields[0] == "type" and fields[-2:] == ["version", "metadata"]
    assert wire.decode_descriptor(ext.data) == descriptor
    frames = wire.encode_request(1, Op.REGISTER_KV_CACHE, 5, [descriptor], "m", 1, m.EngineType.VLLM, {}, [])
    request = wire.decode_request(frames)
    assert request.args.kv_cache == [m.DeviceIPCWrapper(descriptor)]  # type: ignore[union-attr]


def test_large_key_round_trip() -> None:
    """A 128k-token key (the size the lookup benchmark uses) survives intact."""
    big = key(token_ids=[(i * 7919) % 151643 for i in range(131072)], end=131072)
    request = wire.decode_request(wire.encode_request(3, Op.STORE, big, 1, [list(range(8192))], b""))
    assert isinstance(request, Request) and request.args.key == big  # type: ignore[attr-defined]


def test_encode_request_applies_defaults_and_coerces_like_the_client() -> None:
    """clear() sends force=false; int/bool params are coerced; unknown or missing args are refused."""
    assert wire.encode_request(0, Op.CLEAR) == [b"\x00", b"\x14", b"\xc2"]
    assert wire.encode_request(0, Op.CLEAR, force=1)[2] == b"\xc3"
    assert wire.encode_request(0, Op.UNREGISTER_KV_CACHE, True)[2] == b"\x01"
    with pytest.raises(TypeError):
        wire.encode_request(0, Op.PING)
    with pytest.raises(TypeError):
        wire.encode_request(0, Op.PING, None, None)
    with pytest.raises(TypeError):
        wire.encode_request(0, Op.CLEAR, nope=True)


def test_key_defaults_fill_missing_fields_and_unknown_keys_are_ignored() -> None:
    """An old-client key without salt/configs/readers decodes with the defaults; extra keys are skipped."""
    old = {
        "zzz": [1, 2],
        "model_name": "m", "world_size": 1, "worker_id": None, "token_ids": [1, 2],
        "start": 0, "end": 2, "request_id": "r",
    }  # fmt: skip
    request = wire.decode_request([b"\x00", enc(8), enc(old), enc(1)])
    assert isinstance(request, Request)
    assert request.args.key == m.IPCCacheServerKey("m", 1, None, [1, 2], 0, 2, "r")  # type: ignore[attr-defined]
    assert request.args.key.num_kv_readers == 0  # type: ignore[attr-defined]  # LOOKUP must refuse this


def test_stream_control_is_returned_not_decoded() -> None:
    """[uid, b"", b"ack"] is a credit message (§1.5), whatever the uid frame holds."""
    assert wire.decode_request([b"\x05", b"", b"ack"]) == StreamControl(b"\x05", (b"ack",))
    assert wire.decode_request([b"\xc1", b""]) == StreamControl(b"\xc1", ())


# -- replies -----------------------------------------------------------------------------------------


def test_reply_encodings_are_exact() -> None:
    """The byte forms of §11 pitfall 2, independent of the golden files."""
    uid, store = enc(9), stub_request(Op.STORE, 9)
    assert wire.encode_reply(store, (b"", False)) == [uid, b"\x06", b"\x92\xc4\x00\xc2"]
    assert wire.encode_reply(store, (b"stub_ipc_handle", True))[2] == b"\x92\xc4\x0fstub_ipc_handle\xc3"
    assert wire.encode_reply(stub_request(Op.QUERY_PREFETCH_STATUS, 9), None) == [uid, b"\x09"]
    assert wire.encode_reply(stub_request(Op.QUERY_PREFETCH_STATUS, 9), 0)[2] == b"\x00"
    assert wire.encode_reply(stub_request(Op.NOOP, 9), "OK")[2] == b"\xa2OK"
    assert wire.encode_reply(stub_request(Op.GET_EXPERIMENTAL, 9), [])[2] == b"\x90"
    assert wire.encode_reply(stub_request(Op.LOOKUP, 9), None) == [uid, b"\x08"]
    response = m.RegisterEngineDrivenContextResponse()
    assert wire.encode_reply(stub_request(Op.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT), response)[2] == (
        b"\x82\xa8shm_name\xa0\xa9pool_size\x00"
    )


@pytest.mark.parametrize(
    ("op", "value"),
    [
        (Op.QUERY_PREFETCH_STATUS, True),  # the client rejects bool for int | None
        (Op.QUERY_PREFETCH_STATUS, 1.0),
        (Op.STORE, ("", True)),  # str where bytes is declared
        (Op.STORE, (b"", 1)),
        (Op.STORE, [b""]),
        (Op.STORE, b""),
        (Op.GET_CHUNK_SIZE, None),  # only Optional replies may be None
        (Op.GET_CHUNK_SIZE, True),
        (Op.PING, 1),
        (Op.NOOP, b"OK"),
        (Op.GET_EXPERIMENTAL, ["a", 1]),
        (Op.LOOKUP, True),  # void ops send no response frame
        (Op.END_SESSION, {}),
        (Op.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT, {"shm_name": "", "pool_size": 0}),
        (Op.PREPARE_RETRIEVE, None),
        (Op.CB_PROTOCOL_HANDSHAKE, (1, 2)),
        (Op.P2P_QUERY_LOOKUP_RESULTS, [1]),
    ],
)
def test_encode_reply_rejects_values_the_client_cannot_decode(op: Op, value: Any) -> None:
    """A handler bug is caught on our side rather than as a client timeout."""
    with pytest.raises(ReplyTypeError):
        wire.encode_reply(stub_request(op), value)


def test_error_reply_bytes_and_client_view() -> None:
    """[uid, "error", {"error": reason}] verbatim; our client raises ErrorReply with the reason."""
    frames = wire.encode_error_reply(b"\xa3abc", "bad payload")
    assert frames == [b"\xa3abc", b"\xa5error", b"\x81\xa5error\xabbad payload"]
    with pytest.raises(ErrorReply) as info:
        wire.decode_reply(Op.STORE, frames)
    assert info.value.reason == "bad payload" and info.value.detail == {"error": "bad payload"}


@pytest.mark.parametrize(
    ("op", "frames"),
    [
        (Op.NOOP, []),
        (Op.NOOP, [b"\x01"]),
        (Op.GET_CHUNK_SIZE, [b"\x01", enc(21), enc("x")]),  # str where int declared
        (Op.NOOP, [b"\x01", enc(24), enc(1)]),  # noop replies str
        (Op.STORE, [b"\x01", enc(6), enc(["", True])]),  # str where bytes declared
        (Op.STORE, [b"\x01", enc(22), enc(True)]),  # a ping reply to a store request
        (Op.NOOP, [b"\x01", enc(99)]),  # unknown op
        (Op.LOOKUP, [b"\x01", enc(8), enc(True)]),  # a response frame for a void op
    ],
)
def test_decode_reply_rejects(op: Op, frames: list[bytes]) -> None:
    """Replies our client cannot use raise MalformedReply (not a bare msgspec error)."""
    with pytest.raises(MalformedReply):
        wire.decode_reply(op, frames)


def test_decode_reply_ignores_extra_frames_and_accepts_nil_for_void() -> None:
    """As the 0.5.6 client: frames after the response are ignored; nil means None."""
    assert wire.decode_reply(Op.NOOP, [b"\x01", enc(24), enc("OK"), b"junk"]) == "OK"
    assert wire.decode_reply(Op.LOOKUP, [b"\x01", enc(8), b"\xc0"]) is None
    assert wire.decode_reply(Op.GET_CHUNK_SIZE, [b"\x01", enc("get_chunk_size"), enc(256)]) == 256


# -- malformed requests ---------------------------------------------------------------------------------


def _store_frames(**replace: bytes) -> list[bytes]:
    frames = wire.encode_request(4, Op.STORE, key(), 1, [list(range(32))], b"stub_ipc_handle")
    names = ("key", "instance_id", "block_ids", "event_ipc_handle")
    for name, frame in replace.items():
        frames[2 + names.index(name)] = frame
    return frames


def _register_frames(*descriptor_items: Any) -> list[bytes]:
    frames = wire.encode_request(4, Op.REGISTER_KV_CACHE, 5, [], "m", 1, "vllm", {"kv_layout": "NHD"}, [])
    frames[3] = enc(list(descriptor_items))
    return frames


def _ext(payload: Any, code: int = 1) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(code, enc(payload))


SHM = msgspec.to_builtins(shm_descriptor())  # a valid descriptor as a plain map


def _shm(**changes: Any) -> dict[str, Any]:
    out = {**SHM, **changes}
    return {k: v for k, v in out.items() if v is not ...}


def _meta(**changes: Any) -> dict[str, Any]:
    return {**SHM["metadata"], **changes}


MALFORMED: list[tuple[str, list[bytes], MalformedKind, str]] = [
    ("empty", [], MalformedKind.EMPTY, "no request_uid"),
    ("uid only", [b"\x01"], MalformedKind.NO_OPERATION, "no operation"),
    ("uid not msgpack", [b"\xc1", enc(24)], MalformedKind.BAD_UID, "request_uid"),
    ("uid trailing bytes", [b"\x01\x02", enc(24)], MalformedKind.BAD_UID, "request_uid"),
    ("uid truncated", [b"\xcd\x01", enc(24)], MalformedKind.BAD_UID, "request_uid"),
    ("retired id", [b"\x01", enc(11)], MalformedKind.RETIRED_OP, "retired"),
    ("unknown id", [b"\x01", enc(77)], MalformedKind.UNKNOWN_OP, "77"),
    ("unknown name", [b"\x01", enc("frobnicate")], MalformedKind.UNKNOWN_OP, "frobnicate"),
    ("op is bool", [b"\x01", enc(True)], MalformedKind.BAD_OPERATION, "bool"),
    ("missing payload", [b"\x01", enc(22)], MalformedKind.ARITY, "ping takes 1"),
    ("extra payload", [b"\x01", enc(24), b"\xc0"], MalformedKind.ARITY, "noop takes 0"),
    ("default not sent", [b"\x01", enc(20)], MalformedKind.ARITY, "clear takes 1"),
    ("store short", _store_frames()[:5], MalformedKind.ARITY, "store takes 4"),
    ("payload not msgpack", [b"\x01", enc(22), b"\xc1"], MalformedKind.BAD_PAYLOAD, "instance_id"),
    ("payload trailing", [b"\x01", enc(22), b"\x01\x01"], MalformedKind.BAD_PAYLOAD, "instance_id"),
    ("bool for int|None", [b"\x01", enc(22), enc(True)], MalformedKind.BAD_PAYLOAD, "instance_id"),
    ("str for int|None", [b"\x01", enc(22), enc("1")], MalformedKind.BAD_PAYLOAD, "instance_id"),
    ("int for bool", [b"\x01", enc(20), enc(0)], MalformedKind.BAD_PAYLOAD, "force"),
    ("bool for int", [b"\x01", enc(2), enc(True)], MalformedKind.BAD_PAYLOAD, "instance_id"),
    ("float for int", [b"\x01", enc(2), enc(1.0)], MalformedKind.BAD_PAYLOAD, "instance_id"),
    ("nil for int", [b"\x01", enc(2), b"\xc0"], MalformedKind.BAD_PAYLOAD, "instance_id"),
    ("bin for str", [b"\x01", enc(13), enc(b"req")], MalformedKind.BAD_PAYLOAD, "request_id"),
    ("str for bytes", _store_frames(event_ipc_handle=enc("stub")), MalformedKind.BAD_PAYLOAD, "event_ipc_handle"),
    ("flat block ids", _store_frames(block_ids=enc([1, 2])), MalformedKind.BAD_PAYLOAD, "block_ids"),
    ("key not a map", _store_frames(key=enc([1, 2])), MalformedKind.BAD_PAYLOAD, "key"),
    ("key missing field", _store_frames(key=enc({"model_name": "m"})), MalformedKind.BAD_PAYLOAD, "world_size"),
    (
        "token not int",
        _store_frames(key=enc({**msgspec.to_builtins(key()), "token_ids": [1, "2"]})),
        MalformedKind.BAD_PAYLOAD,
        "token_ids",
    ),
    (
        "bool worker_id",
        _store_frames(key=enc({**msgspec.to_builtins(key()), "worker_id": True})),
        MalformedKind.BAD_PAYLOAD,
        "worker_id",
    ),
    (
        "negative start",
        _store_frames(key=enc({**msgspec.to_builtins(key()), "start": -256})),
        MalformedKind.BAD_PAYLOAD,
        "start",
    ),
    (
        "salt with slash",
        _store_frames(key=enc({**msgspec.to_builtins(key()), "cache_salt": "a/b"})),
        MalformedKind.BAD_PAYLOAD,
        "cache_salt",
    ),
    (
        "salt too long",
        _store_frames(key=enc({**msgspec.to_builtins(key()), "cache_salt": "s" * 129})),
        MalformedKind.BAD_PAYLOAD,
        "cache_salt",
    ),
    (
        "salt with backslash",
        _store_frames(key=enc({**msgspec.to_builtins(key()), "cache_salt": "a\\b"})),
        MalformedKind.BAD_PAYLOAD,
        "cache_salt",
    ),
    (
        "salt with NUL",
        _store_frames(key=enc({**msgspec.to_builtins(key()), "cache_salt": "a\x00b"})),
        MalformedKind.BAD_PAYLOAD,
        "cache_salt",
    ),
    (
        "engine type",
        [b"\x01", enc(1), *_register_frames()[2:6], enc("tgi"), *_register_frames()[7:]],
        MalformedKind.BAD_PAYLOAD,
        "engine_type",
    ),
    (
        "layout hint",
        [*_register_frames()[:7], enc({"kv_layout": "XYZ"}), _register_frames()[8]],
        MalformedKind.BAD_PAYLOAD,
        "layout_hints",
    ),
    ("descriptor not ext", _register_frames(SHM), MalformedKind.BAD_PAYLOAD, "ext-1"),
    ("descriptor ext code 2", _register_frames(_ext(SHM, code=2)), MalformedKind.BAD_PAYLOAD, "ext type 2"),
    (
        "descriptor data garbage",
        _register_frames(msgspec.msgpack.Ext(1, b"\x80\x03pickle")),
        MalformedKind.BAD_PAYLOAD,
        "descriptor",
    ),
    ("descriptor unknown tag", _register_frames(_ext(_shm(type="musa"))), MalformedKind.BAD_PAYLOAD, "musa"),
    ("descriptor no tag", _register_frames(_ext(_shm(type=...))), MalformedKind.BAD_PAYLOAD, "type"),
    ("descriptor unknown field", _register_frames(_ext(_shm(extra=1))), MalformedKind.BAD_PAYLOAD, "extra"),
    ("descriptor version 2", _register_frames(_ext(_shm(version=2))), MalformedKind.BAD_PAYLOAD, "version"),
    ("descriptor no version", _register_frames(_ext(_shm(version=...))), MalformedKind.BAD_PAYLOAD, "version"),
    (
        "descriptor bad dtype",
        _register_frames(_ext(_shm(metadata=_meta(dtype="float17")))),
        MalformedKind.BAD_PAYLOAD,
        "float17",
    ),
    (
        "descriptor rank mismatch",
        _register_frames(_ext(_shm(metadata=_meta(stride=[1])))),
        MalformedKind.BAD_PAYLOAD,
        "rank",
    ),
    (
        "descriptor negative dim",
        _register_frames(_ext(_shm(metadata=_meta(shape=[2, -64, 16, 2, 8])))),
        MalformedKind.BAD_PAYLOAD,
        "shape",
    ),
    ("descriptor metadata extra", _register_frames(_ext(_shm(metadata=_meta(x=1)))), MalformedKind.BAD_PAYLOAD, "x"),
    ("view exceeds segment", _register_frames(_ext(_shm(nbytes=65535))), MalformedKind.BAD_PAYLOAD, "65536 bytes"),
    (
        "offset pushes view out",
        _register_frames(_ext(_shm(metadata=_meta(storage_offset=1)))),
        MalformedKind.BAD_PAYLOAD,
        "65538",
    ),
    (
        "shm name traversal",
        _register_frames(_ext(_shm(shm_name="/../etc/passwd"))),
        MalformedKind.BAD_PAYLOAD,
        "shm_name",
    ),
    ("shm name dotdot", _register_frames(_ext(_shm(shm_name=".."))), MalformedKind.BAD_PAYLOAD, "shm_name"),
    ("second layer bad", _register_frames(_ext(SHM), _ext(_shm(nbytes=1))), MalformedKind.BAD_PAYLOAD, "$[1]"),
    (
        "cuda span",
        _register_frames(
            _ext(
                {
                    "type": "cuda",
                    "handle": [0, None, 10, 0, None, 0, None, False],
                    "version": 1,
                    "metadata": SHM["metadata"],
                }
            )
        ),
        MalformedKind.BAD_PAYLOAD,
        "CUDA storage",
    ),
    (
        "cuda_raw short handle",
        _register_frames(
            _ext(
                {
                    "type": "cuda_raw",
                    "ipc_handle": b"x" * 63,
                    "alloc_offset": 0,
                    "nbytes": 65536,
                    "version": 1,
                    "metadata": SHM["metadata"],
                }
            )
        ),
        MalformedKind.BAD_PAYLOAD,
        "ipc_handle",
    ),
    (
        "cuda_vmm fabric mismatch",
        _register_frames(
            _ext(
                {
                    "type": "cuda_vmm",
                    "export_id": b"e" * 16,
                    "kind": "fabric",
                    "fabric_blob": None,
                    "alloc_size": 65536,
                    "alloc_offset": 0,
                    "nbytes": 65536,
                    "version": 1,
                    "metadata": SHM["metadata"],
                }
            )
        ),
        MalformedKind.BAD_PAYLOAD,
        "fabric",
    ),
    (
        "cuda_vmm range",
        _register_frames(
            _ext(
                {
                    "type": "cuda_vmm",
                    "export_id": b"e" * 16,
                    "kind": "posix_fd",
                    "fabric_blob": None,
                    "alloc_size": 65536,
                    "alloc_offset": 1,
                    "nbytes": 65536,
                    "version": 1,
                    "metadata": SHM["metadata"],
                }
            )
        ),
        MalformedKind.BAD_PAYLOAD,
        "allocation",
    ),
    ("engine-driven payload", [b"\x01", enc(14), enc({"instance_id": 1})], MalformedKind.BAD_PAYLOAD, "model_name"),
    (
        "record shape",
        [b"\x01", enc(23), enc(1), enc("m"), enc([{"req_id": "r"}])],
        MalformedKind.BAD_PAYLOAD,
        "new_block_ids",
    ),
]


@pytest.mark.parametrize(("name", "frames", "kind", "needle"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_request(name: str, frames: list[bytes], kind: MalformedKind, needle: str) -> None:
    """Each malformed class raises MalformedRequest with its kind and a reason naming the culprit."""
    with pytest.raises(MalformedRequest) as info:
        wire.decode_request(frames)
    error = info.value
    assert error.kind is kind, error.reason
    assert needle in error.reason, error.reason
    assert error.uid_frame == (frames[0] if frames else None)
    if kind in (MalformedKind.ARITY, MalformedKind.BAD_PAYLOAD):
        assert error.op is not None and error.op_name == error.op.wire_name and error.op_name in error.reason
    else:
        assert error.op is None and error.op_name is None
    if kind is MalformedKind.BAD_PAYLOAD:
        assert error.param is not None and error.param in error.reason
    reply = wire.encode_error_reply(error.uid_frame or b"", error.reason)
    with pytest.raises(ErrorReply, match=re.escape(error.reason[:40])):
        wire.decode_reply(Op.NOOP, reply)


def test_valid_baselines_of_the_malformed_table_decode() -> None:
    """The frames the table mutates are valid before mutation (so each case tests one defect)."""
    assert isinstance(wire.decode_request(_store_frames()), Request)
    assert isinstance(wire.decode_request(_register_frames(_ext(SHM), _ext(SHM))), Request)
    for descriptor in (_shm(shm_name="lmcache_kv_1"), _shm(metadata=_meta(shape=[0, 64], stride=[1, 1]))):
        assert isinstance(wire.decode_request(_register_frames(_ext(descriptor))), Request)


# -- fuzzing: nothing but MalformedRequest escapes --------------------------------------------------------


def _decode_or_malformed(frames: list[bytes]) -> None:
    try:
        result = wire.decode_request(frames)
    except MalformedRequest as error:
        assert isinstance(error.kind, MalformedKind) and error.reason
        assert error.uid_frame == (frames[0] if frames else None)
        return
    assert isinstance(result, (Request, StreamControl))
    if isinstance(result, Request):
        assert result.uid_frame is frames[0] and result.op_frame is frames[1]


@settings(deadline=None, max_examples=300)
@given(st.lists(st.binary(max_size=40), max_size=9))
def test_fuzz_random_frames(frames: list[bytes]) -> None:
    """Arbitrary byte frames."""
    _decode_or_malformed(frames)


msgpack_values = st.recursive(
    json_scalars
    | st.binary(max_size=8)
    | st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=8)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | INT64, inner, max_size=4),
    max_leaves=12,
)


@settings(deadline=None, max_examples=300)
@given(
    uid=msgpack_values.map(enc),
    op=st.sampled_from([wire.encode_operation(op) for op in Op] + [enc(11), enc(0), enc("noop")]),
    payloads=st.lists(msgpack_values.map(enc) | st.binary(max_size=16), max_size=9),
)
def test_fuzz_well_framed_random_payloads(uid: bytes, op: bytes, payloads: list[bytes]) -> None:
    """A valid op with random msgpack payloads (ext values included) of any count."""
    _decode_or_malformed([uid, op, *payloads])


def _golden_like() -> list[list[bytes]]:
    descriptor = shm_descriptor()
    return [
        _store_frames(),
        wire.encode_request(
            2,
            Op.REGISTER_KV_CACHE,
            5,
            [descriptor, descriptor],
            "m",
            1,
            "vllm",
            {"kv_layout": "NHD"},
            [m.EngineGroupInfo(0, (0, 1), 16)],
        ),
        wire.encode_request(3, Op.RETRIEVE, key(request_configs={"a": [1]}), 1, [[0, 1]], b"h", 256),
        wire.encode_request(
            4,
            Op.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT,
            m.RegisterEngineDrivenContextPayload(1, "m", 1, 16, 2, 8, "float16", False, 256),
        ),
        wire.encode_request(5, Op.REPORT_BLOCK_ALLOCATION, 1, "m", [m.BlockAllocationRecord("r", [1], [2])]),
    ]


@settings(deadline=None, max_examples=400)
@given(
    base=st.sampled_from(_golden_like()),
    frame_pick=st.integers(0, 20),
    position=st.integers(0, 10_000),
    byte=st.integers(0, 255),
    truncate=st.booleans(),
)
def test_fuzz_mutated_valid_requests(
    base: list[bytes], frame_pick: int, position: int, byte: int, truncate: bool
) -> None:
    """One byte of one frame of a valid request changed (or the frame cut there)."""
    frames = list(base)
    index = frame_pick % len(frames)
    frame = frames[index]
    assume(frame)
    at = position % len(frame)
    frames[index] = frame[:at] if truncate else frame[:at] + bytes([byte]) + frame[at + 1 :]
    _decode_or_malformed(frames)


def test_deeply_nested_payload_is_malformed_not_a_crash() -> None:
    """A payload nested far past any sane depth is refused with a typed error."""
    _decode_or_malformed([b"\x01", enc(13), b"\x91" * 100_000 + b"\x00"])
    _decode_or_malformed([b"\x91" * 100_000 + b"\x00", enc(24)])
