"""Replay the golden main session (``tests/data/golden/INDEX.json``) against a live server.

The golden session was captured between the real LMCache 0.5.6 client and the real 0.5.6 server
(``tests/data/golden/INDEX.json``). Here every request goes, in capture order and with its captured frames,
through a real ZMQ DEALER socket to our server, and every reply must decode (``wire.decode_reply``)
to the value the real server answered, and be byte-identical to it, except where a table below
says why our server deliberately answers otherwise.

Only the ``register_kv_cache`` frames are changed: their ``cpu_shm`` descriptors name the capturing
client's segments (``/lmcache_kv_13915_<n>``). We create segments of the same size and view under
our own unique names (another run of this test, or any other process, may hold the golden names)
and re-encode the request with ``wire.encode_request``, after checking that re-encoding the
unchanged arguments reproduces the captured frames exactly, so the names are the only difference.
The segments are filled with a known pattern so STORE really copies bytes and RETRIEVE is checked
to write them back.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import torch
import zmq

from lmcache_core.config import MPConfig, StorageManagerConfig
from lmcache_core.server import CacheServer
from lmcache_core.testing import free_port
from lmcache_core.transfer.layout import parse_dtype
from lmcache_core.transfer.shm import SharedSegment
from lmcache_core.transport import messages as m
from lmcache_core.transport import wire
from lmcache_core.transport.wire import Op

GOLDEN = Path(__file__).parent / "data" / "golden"
INDEX = json.loads((GOLDEN / "INDEX.json").read_text())["entries"]
FACTS = json.loads((GOLDEN / "session_facts.json").read_text())
REPLY_TIMEOUT_MS = 10_000  # per request: bounds the whole replay (48 requests) even if the server hangs
MAIN_IID = 7000000000000000001
MLA_IID = 7000000000000000002

# The handle our server puts in store/retrieve replies. 0.5.6 echoes the client's CPU stub event
# (b"stub_ipc_handle"); an empty handle means "the copy is done, nothing to wait on" (protocol §6),
# which is true of our server: it replies after the copy. The ok flag must match the capture.
NO_EVENT = b""

# Replies that differ on purpose: label -> (our decoded value, why).
DEVIATIONS: dict[str, tuple[Any, str]] = {
    "get_experimental": ([], ("0.5.6 advertises 'kv_event_stream' (the subscribe_kv_events stream); we serve no "
                             "experimental feature, and clients treat [] as 'none offered'")),
}

# Requests the real server never answered (its handler raised, or it dropped the frames): the
# 0.5.6 client then waits for its timeout. Ours answers each one at once.
# label -> (what we answer, why); "error" means our ["error", {"error": reason}] reply.
SILENT: dict[str, tuple[Any, str]] = {
    "lookup_num_kv_readers_0": (None, ("a lookup with num_kv_readers < 1 is refused in-band: we reply like any "
                                      "lookup (void) and record 0 hits, which the next query_prefetch_status "
                                      "returns (query_after_bad_lookup answers 0 in the capture too)")),
    "raw_unknown_legacy_id_11": ("error", ("retired op id 11: the error reply is the only one a 0.5.6 client "
                                          "fails fast on instead of timing out")),
    "raw_ping_missing_payload": ("error", "ping without its payload frame: same error reply"),
}


@dataclass(frozen=True)
class Step:
    """One captured request and the captured reply (``None`` when the real server was silent)."""

    label: str
    request: list[bytes]
    reply: list[bytes] | None


def _frames(name: str) -> tuple[list[bytes] | None, dict[str, Any]]:
    doc = json.loads((GOLDEN / name).read_text())
    if doc.get("no_reply"):
        return None, doc
    return [base64.b64decode(f["b64"]) for f in doc["frames"]], doc


def load_steps() -> list[Step]:
    steps = []
    for entry in INDEX:
        request_file, reply_file = entry["files"]
        request, _ = _frames(request_file)
        reply, _ = _frames(reply_file)
        assert request is not None and len(request) == entry["request_frames"]
        assert (reply is None) == (entry["reply_frames"] is None)
        steps.append(Step(entry["label"], request, reply))
    return steps


STEPS = load_steps()


def test_index_covers_the_documented_session() -> None:
    labels = [s.label for s in STEPS]
    assert len(labels) == len(set(labels)) == 48
    assert labels[0] == "noop" and labels[41] == "noop_end"
    assert {s.label for s in STEPS if s.reply is None} == set(SILENT)
    assert set(DEVIATIONS) <= set(labels)


# -- the worker's shared memory -------------------------------------------------------------------


class Segments:
    """Our stand-ins for the capturing client's ``cpu_shm`` segments, by golden name."""

    def __init__(self) -> None:
        self.by_golden_name: dict[str, tuple[SharedSegment, torch.Tensor]] = {}

    def rewrite_register(self, frames: list[bytes]) -> list[bytes]:
        """The register request with each descriptor pointing at a fresh segment of ours."""
        request = wire.decode_request(frames)
        assert isinstance(request, wire.Request) and request.op is Op.REGISTER_KV_CACHE
        args = request.args
        values = [getattr(args, f) for f in args.__struct_fields__]
        # Our codec reproduces the captured frames from the decoded arguments, byte for byte.
        assert wire.encode_request(request.uid, request.op, *values) == frames
        wrappers = []
        for wrapper in args.kv_cache:
            d = wrapper.descriptor
            assert isinstance(d, m.CpuShmIPCData)
            segment = SharedSegment(d.nbytes)
            view, _ = segment.tensor(d.metadata.shape, parse_dtype(d.metadata.dtype), d.metadata.storage_offset,
                                     d.metadata.stride)
            self.by_golden_name[d.shm_name] = (segment, view)
            wrappers.append(m.DeviceIPCWrapper(msgspec.structs.replace(d, shm_name=segment.name)))
        values[values.index(args.kv_cache)] = wrappers
        return wire.encode_request(request.uid, request.op, *values)

    def layers(self, golden_names: list[str]) -> list[torch.Tensor]:
        return [self.by_golden_name[n][1] for n in golden_names]

    def close(self) -> None:
        for segment, _ in self.by_golden_name.values():
            segment.close()


def _golden_shm_names(label: str) -> list[str]:
    doc = json.loads((GOLDEN / f"{label}.request.json").read_text())
    [kv_frame] = [f for f in doc["frames"] if "kv_cache" in f["role"]]
    return [ext["$ext_decoded"]["shm_name"] for ext in kv_frame["decoded"]]


def fill_pattern(layers: list[torch.Tensor], salt: int) -> None:
    """A deterministic, position-dependent pattern (``test_vectors.json``'s KV formula, salted per cache)."""
    for index, layer in enumerate(layers):
        i = torch.arange(layer.numel(), dtype=torch.int64)
        values = (((i * 31 + index * 7 + salt) % 2039 - 1019).to(torch.float32) / 64).to(layer.dtype)
        layer.copy_(values.reshape(layer.shape))


# -- the replay ----------------------------------------------------------------------------------------


class Dealer:
    """A bare DEALER socket: sends captured frames, returns the next reply's frames (or None on timeout)."""

    def __init__(self, url: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(url)

    def exchange(self, frames: list[bytes]) -> list[bytes] | None:
        self.sock.send_multipart(frames)
        if not self.sock.poll(REPLY_TIMEOUT_MS, zmq.POLLIN):
            return None
        return self.sock.recv_multipart()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def replay_env(lmcache_server_factory: Any) -> Iterator[tuple[CacheServer, Dealer, Segments]]:
    port = free_port()
    server = lmcache_server_factory(configs={
        "mp": MPConfig(host="127.0.0.1", port=port, worker_reap_timeout_seconds=0),
        "storage_manager": StorageManagerConfig(l1_size_gb=0.25),
    })
    assert server.mp_config.chunk_size == FACTS["get_chunk_size"] == 256
    segments = Segments()
    dealer = Dealer(f"tcp://127.0.0.1:{port}")
    with contextlib.ExitStack() as stack:
        stack.callback(segments.close)
        stack.callback(dealer.close)
        yield server, dealer, segments


def _op_of(frames: list[bytes]) -> Op | None:
    try:
        return wire.decode_operation(frames[1])
    except wire.MalformedRequest:
        return None  # the retired id 11


def _l1(server: CacheServer) -> dict[str, Any]:
    return server.status()["storage_manager"]["l1_manager"]


def test_golden_main_session_replays_with_the_same_replies(
        replay_env: tuple[CacheServer, Dealer, Segments]) -> None:
    server, dealer, segments = replay_env
    main_names = _golden_shm_names("register_kv_cache")
    mla_names = _golden_shm_names("register_kv_cache_mla")

    # What the session's data ops must do to the worker's memory, checked right after each reply.
    def after_register() -> None:
        assert server.status()["registered_gpu_ids"] == [MAIN_IID]
        layers = segments.layers(main_names)
        fill_pattern(layers, salt=0)
        for layer in layers:
            layer[:, 32:].zero_()  # the retrieve's destination starts empty

    def after_store() -> None:
        assert _l1(server)["total_object_count"] == 2  # two 256-token chunks

    def after_retrieve() -> None:
        for layer in segments.layers(main_names):  # session_facts: retrieved_equal
            assert torch.equal(layer[:, 32:64], layer[:, 0:32])
            assert bool(layer[:, 32:64].ne(0).any())

    def after_register_mla() -> None:
        assert server.status()["registered_gpu_ids"] == [MAIN_IID, MLA_IID]
        fill_pattern(segments.layers(mla_names), salt=1)

    def before_clear() -> None:
        golden = FACTS["status_before_clear"]
        l1 = _l1(server)
        for field in ("total_object_count", "read_locked_count", "write_locked_count", "temporary_count"):
            assert l1[field] == golden[field], field

    def after_clear() -> None:
        assert _l1(server)["total_object_count"] == 0

    def after_unregister() -> None:
        assert server.status()["registered_gpu_ids"] == []

    checks_after: dict[str, Callable[[], None]] = {
        "register_kv_cache": after_register, "store": after_store, "store_unregistered": after_store,
        "store_short_block_ids": after_store, "retrieve": after_retrieve,
        "register_kv_cache_mla": after_register_mla, "clear": after_clear,
        "unregister_kv_cache": after_unregister,
    }
    checks_before: dict[str, Callable[[], None]] = {"clear": before_clear}

    answered: dict[str, Any] = {}
    ran: set[str] = set()
    for step in STEPS:
        frames = step.request
        if step.label.startswith("register_kv_cache"):
            frames = segments.rewrite_register(frames)
        if step.label in checks_before:
            checks_before[step.label]()
            ran.add(f"before {step.label}")
        reply = dealer.exchange(frames)
        assert reply is not None, f"{step.label}: no reply within {REPLY_TIMEOUT_MS} ms"
        assert reply[0] == frames[0], f"{step.label}: the uid frame must be echoed byte for byte"
        op = _op_of(frames)

        if step.reply is None:
            expected, _why = SILENT[step.label]
            if expected == "error":
                assert reply[1] == b"\xa5error", step.label
                with pytest.raises(wire.ErrorReply):
                    wire.decode_reply(op or Op.NOOP, reply)  # an error reply is decoded before the op is checked
            else:
                assert op is not None and reply[1] == frames[1]
                assert wire.decode_reply(op, reply) == expected, step.label
            answered[step.label] = expected
            continue

        assert op is not None
        assert reply[1] == frames[1], f"{step.label}: the operation frame must be echoed byte for byte"
        ours = wire.decode_reply(op, reply)
        theirs = wire.decode_reply(op, step.reply)
        if step.label in DEVIATIONS:
            assert ours == DEVIATIONS[step.label][0], step.label
            assert ours != theirs
        elif op in (Op.STORE, Op.RETRIEVE):
            assert ours == (NO_EVENT, theirs[1]), step.label  # same ok flag, completion handle
        else:
            assert ours == theirs, step.label
            assert reply == step.reply, f"{step.label}: reply frames differ from the capture"
        answered[step.label] = ours
        if step.label in checks_after:
            checks_after[step.label]()
            ran.add(step.label)

    # The session's results as the client saw them (session_facts.json), where they are replies.
    assert answered["query_prefetch_status"] == FACTS["query_miss"] == 0
    assert answered["query_prefetch_status_hit"] == FACTS["query_hit"] == 2
    assert answered["wait_prefetch_status"] == FACTS["wait_prefetch_status"] == 2
    assert answered["query_prefetch_status_partial"] == FACTS["query_partial"] == 1
    assert answered["query_prefetch_status_salt"] == FACTS["query_salt"] == 0
    assert answered["query_prefetch_status_unknown"] == FACTS["query_unknown"] == 0
    assert answered["query_after_bad_lookup"] == FACTS["query_after_bad_lookup"] == 0
    assert answered["store"] == (NO_EVENT, True) and answered["retrieve"] == (NO_EVENT, True)
    assert answered["store_unregistered"] == answered["retrieve_unregistered"] == (b"", False)
    assert answered["store_short_block_ids"] == (NO_EVENT, False)
    assert answered["store_mla"] == (NO_EVENT, True)
    assert answered["noop_end"] == FACTS["noop_end"] == "OK"
    assert len(answered) == len(STEPS)
    assert ran == set(checks_after) | {f"before {label}" for label in checks_before}
