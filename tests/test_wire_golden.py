"""The wire codec against frames captured between the real lmcache 0.5.6 client and server.

``tests/data/golden`` (captured from the real 0.5.6 client and server) holds every request and reply of
a live session, the raw-socket probes, and three whole sessions (the lmcache-driven
bench, the engine-driven bench, an L2-prefetch session). For each request we check
that our decoder yields exactly the values the capture decoded, field by field and
in wire order, and that our encoder reproduces the client's bytes. For each reply we
build the value from the capture's decoded view and check that ``encode_reply``
reproduces the server's bytes, and that ``decode_reply`` reads them back.
"""

from __future__ import annotations

import base64
import enum
import json
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import pytest

from lmcache_core.hashing import PackedTokens
from lmcache_core.transport import wire
from lmcache_core.transport.messages import DeviceIPCWrapper, IPCCacheServerKey, RegisterKVCacheArgs
from lmcache_core.transport.wire import MalformedKind, MalformedRequest, Op, Request

GOLDEN = Path(__file__).parent / "data" / "golden"
SESSIONS = ("bench_session.json", "engine_driven_bench_session.json", "l2_prefetch_pending_session.json")

# The probes the real server never answered, and what our codec says about them.
# lookup_num_kv_readers_0 is well-formed on the wire: refusing it is the handler's job.
NO_REPLY_EXPECTED: dict[str, MalformedKind | None] = {
    "raw_unknown_legacy_id_11": MalformedKind.RETIRED_OP,
    "raw_ping_missing_payload": MalformedKind.ARITY,
    "lookup_num_kv_readers_0": None,
}
# Requests written by hand on a raw socket: their bytes are not the client's encoding.
RAW_PROBES = {"raw_get_chunk_size_by_name", "raw_get_chunk_size_uid_str", "raw_noop_by_name"}


@cache
def _load(name: str) -> Any:
    return json.loads((GOLDEN / name).read_text())


def _frames(doc: dict[str, Any]) -> list[bytes]:
    return [base64.b64decode(frame["b64"]) for frame in doc["frames"]]


def _label(path: Path) -> str:
    return path.name.split(".")[0]


REQUEST_LABELS = sorted(_label(p) for p in GOLDEN.glob("*.request.json"))
REPLY_LABELS = sorted(_label(p) for p in GOLDEN.glob("*.reply.json"))


# -- comparing our values with the capture's decoded view ------------------------------------------


def _struct_items(value: msgspec.Struct) -> list[tuple[str, Any]]:
    config = value.__struct_config__
    items = [(config.tag_field, config.tag)] if config.tag is not None else []
    return items + [(name, getattr(value, name)) for name in value.__struct_fields__]


def match(ours: Any, golden: Any, path: str = "$") -> None:
    """Assert that a value we decoded equals the capture's JSON view of the same frame.

    Understands the capture's notation: ``$bin_hex``/``$bin_ascii`` and
    ``$bin_len``/``$bin_head_hex`` for bin, ``$ext``/``$ext_data_hex``/``$ext_decoded``
    for ext 1, and ``$abbrev`` (length, head, tail) for long int arrays. Maps must
    also agree on key order, since the capture lists keys as they were on the wire.
    """
    if isinstance(golden, dict) and "$abbrev" in golden:
        count = int(golden["$abbrev"].split()[0])
        assert isinstance(ours, (list, PackedTokens)) and len(ours) == count, path
        assert ours[: len(golden["head"])] == golden["head"], path
        assert ours[len(ours) - len(golden["tail"]) :] == golden["tail"], path
    elif isinstance(golden, dict) and "$ext" in golden:
        assert golden["$ext"] == 1 and isinstance(ours, DeviceIPCWrapper), path
        if "$ext_data_hex" in golden:
            assert wire.encode_descriptor(ours.descriptor).data.hex() == golden["$ext_data_hex"], path
        match(ours.descriptor, golden["$ext_decoded"], path + ".$ext")
    elif isinstance(golden, dict) and any(key.startswith("$bin") for key in golden):
        assert type(ours) is bytes, f"{path}: {type(ours).__name__} is not bytes"
        if "$bin_hex" in golden:
            assert ours.hex() == golden["$bin_hex"], path
        if "$bin_ascii" in golden:
            assert ours == golden["$bin_ascii"].encode("ascii"), path
        if "$bin_len" in golden:
            assert len(ours) == golden["$bin_len"], path
            assert ours.hex().startswith(golden["$bin_head_hex"]), path
    elif isinstance(golden, dict):
        items = _struct_items(ours) if isinstance(ours, msgspec.Struct) else list(ours.items())
        assert [k for k, _ in items] == list(golden), f"{path}: keys {[k for k, _ in items]} != {list(golden)}"
        for key, value in items:
            match(value, golden[key], f"{path}.{key}")
    elif isinstance(golden, list):
        # a key's token list decodes to PackedTokens, a read-only int sequence (transport/tokens.py)
        assert isinstance(ours, (list, tuple, PackedTokens)) and len(ours) == len(golden), path
        for index, (a, b) in enumerate(zip(ours, golden)):
            match(a, b, f"{path}[{index}]")
    else:
        if isinstance(ours, enum.Enum):
            ours = ours.value
        assert ours == golden and type(ours) is type(golden), f"{path}: {ours!r} != {golden!r}"


def _unbin(golden: Any) -> Any:
    """The capture's JSON view with bins turned back into bytes (for building reply values)."""
    if isinstance(golden, dict):
        if "$bin_hex" in golden:
            return bytes.fromhex(golden["$bin_hex"])
        if "$bin_ascii" in golden and "$bin_len" not in golden:
            return golden["$bin_ascii"].encode("ascii")
        return {key: _unbin(value) for key, value in golden.items()}
    if isinstance(golden, list):
        return [_unbin(value) for value in golden]
    return golden


def _arg_values(request: Request) -> list[Any]:
    return [getattr(request.args, name) for name in request.args.__struct_fields__]


def _decode(label: str) -> Request:
    result = wire.decode_request(_frames(_load(f"{label}.request.json")))
    assert isinstance(result, Request)
    return result


# -- single request / reply files ------------------------------------------------------------


def test_index_lists_every_golden_file() -> None:
    """INDEX.json and the files agree, so a parametrized test never silently misses a frame."""
    entries = _load("INDEX.json")["entries"]
    listed = {name for entry in entries for name in entry["files"]}
    on_disk = {p.name for p in GOLDEN.glob("*.request.json")} | {p.name for p in GOLDEN.glob("*.reply.json")}
    assert listed == on_disk
    assert len(REQUEST_LABELS) == len(REPLY_LABELS) == len(entries) == 48


@pytest.mark.parametrize("label", REQUEST_LABELS)
def test_request_decodes_like_the_capture(label: str) -> None:
    """uid, op and every payload decode to the values the capture shows, in wire order."""
    doc = _load(f"{label}.request.json")
    frames = _frames(doc)
    expected_failure = NO_REPLY_EXPECTED.get(label)
    if expected_failure is not None:
        with pytest.raises(MalformedRequest) as info:
            wire.decode_request(frames)
        assert info.value.kind is expected_failure
        assert info.value.uid_frame == frames[0]  # so the error reply can echo it
        return
    request = wire.decode_request(frames)
    assert isinstance(request, Request)
    assert request.uid_frame == frames[0] and request.op_frame == frames[1]
    assert request.uid == doc["frames"][0]["decoded"]
    assert request.op.wire_value == doc["op"] or request.op.wire_name == doc["op"]
    assert request.op.wire_name == doc["op_name"]
    values = _arg_values(request)
    payload_docs = doc["frames"][2:]
    assert len(values) == len(payload_docs)
    for index, (value, frame_doc) in enumerate(zip(values, payload_docs)):
        name = request.args.__struct_fields__[index]
        assert frame_doc["role"].startswith(f"payload[{index}] {name}:")
        match(value, frame_doc["decoded"], f"{label}.{name}")


CLIENT_ENCODED = sorted(
    label for label in REQUEST_LABELS if label not in RAW_PROBES and NO_REPLY_EXPECTED.get(label) is None
)


@pytest.mark.parametrize("label", CLIENT_ENCODED)
def test_encode_request_reproduces_client_bytes(label: str) -> None:
    """Our client encoding of the decoded call is byte-identical to the 0.5.6 client's."""
    frames = _frames(_load(f"{label}.request.json"))
    request = _decode(label)
    assert wire.encode_request(request.uid, request.op, *_arg_values(request)) == frames


@pytest.mark.parametrize("label", REPLY_LABELS)
def test_reply_encodes_to_captured_bytes(label: str) -> None:
    """``encode_reply`` of the captured value gives the server's bytes; ``decode_reply`` reads them back."""
    doc = _load(f"{label}.reply.json")
    if doc.get("no_reply"):
        assert label in NO_REPLY_EXPECTED
        return
    request = _decode(label)
    frames = _frames(doc)
    response_type = wire.OP_SPECS[request.op].response_type
    if len(frames) == 2:
        value = None
    else:
        value = msgspec.convert(_unbin(doc["frames"][2]["decoded"]), response_type)
    assert wire.encode_reply(request, value) == frames
    if isinstance(request.uid, int):  # a 0.5.6 client could not even route the "abc" uid
        assert wire.reply_uid(frames) == request.uid
        decoded = wire.decode_reply(request.op, frames)
        assert decoded == value
        if value is not None:
            match(decoded, doc["frames"][2]["decoded"])


def test_string_uid_is_echoed_verbatim() -> None:
    """The real server never decodes the uid; neither do we beyond checking it is msgpack."""
    request = _decode("raw_get_chunk_size_uid_str")
    assert request.uid == "abc" and request.uid_frame == b"\xa3abc"
    assert wire.encode_reply(request, 256)[0] == b"\xa3abc"


def test_ops_sent_by_name_are_echoed_by_name() -> None:
    """A request naming its op by string gets that string back, as the real server does."""
    request = _decode("raw_get_chunk_size_by_name")
    assert request.op is Op.GET_CHUNK_SIZE and request.op_frame == b"\xaeget_chunk_size"
    assert wire.encode_reply(request, 256) == _frames(_load("raw_get_chunk_size_by_name.reply.json"))


def test_golden_descriptors_are_validated_cpu_shm() -> None:
    """The captured register_kv_cache carries two cpu_shm views that exactly fill their segments."""
    args = _decode("register_kv_cache").args
    assert isinstance(args, RegisterKVCacheArgs)
    for wrapper in args.kv_cache:
        descriptor = wrapper.descriptor
        assert type(descriptor).__name__ == "CpuShmIPCData"
        assert descriptor.metadata.byte_span() == descriptor.nbytes == 65536


def test_golden_key_fields() -> None:
    """The lookup key: nil worker, 512 tokens, defaults present on the wire."""
    key = _decode("lookup").args.key  # type: ignore[attr-defined]
    assert key == IPCCacheServerKey("golden-model", 1, None, list(range(512)), 0, 512, "req-A", "", None, 1)


# -- whole sessions --------------------------------------------------------------------------------


def _session_cases() -> list[tuple[str, int]]:
    return [(name, index) for name in SESSIONS for index in range(len(_load(name)["messages"]))]


@pytest.mark.parametrize(("session", "index"), _session_cases())
def test_session_message(session: str, index: int) -> None:
    """Every frame of the three captured sessions: requests decode and re-encode, replies re-encode."""
    messages = _load(session)["messages"]
    message = messages[index]
    frames = [base64.b64decode(frame) for frame in message["frames_b64"]]
    if message["dir"] == "c2s":
        request = wire.decode_request(frames)
        assert isinstance(request, Request)
        assert (request.uid, int(request.op), request.op.wire_name) == (
            message["uid"],
            message["op"],
            message["op_name"],
        )
        match(_arg_values(request), message["payloads_decoded"], f"{session}[{index}]")
        assert wire.encode_request(request.uid, request.op, *_arg_values(request)) == frames
        return
    # A reply: pair it with the request of the same uid, sent just before.
    sent = next(m for m in reversed(messages[:index]) if m["dir"] == "c2s" and m["uid"] == message["uid"])
    request = wire.decode_request([base64.b64decode(frame) for frame in sent["frames_b64"]])
    assert isinstance(request, Request) and int(request.op) == message["op"]
    value = wire.decode_reply(request.op, frames)
    match([] if value is None else [value], message["payloads_decoded"], f"{session}[{index}]")
    assert wire.encode_reply(request, value) == frames


def test_sessions_cover_pending_status_and_engine_driven_ops() -> None:
    """The sessions include the none-valued status reply and ops 14-19 (so the cases above test them)."""
    ops = {m["op"] for name in SESSIONS for m in _load(name)["messages"]}
    assert {14, 15, 16, 17, 18, 19} <= ops
    pending = [
        m
        for name in SESSIONS
        for m in _load(name)["messages"]
        if m["dir"] == "s2c" and m["op"] == 9 and len(m["frames_b64"]) == 2
    ]
    assert len(pending) == 3
