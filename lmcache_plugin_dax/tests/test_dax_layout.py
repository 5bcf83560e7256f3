"""The persistent slot format: a header round-trips, and no byte pattern in a slot is served unless it is whole."""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.api import ObjectKey
from lmcache_plugin_dax import layout

SLOT = 2 * layout.HEADER_BYTES

keys = st.builds(ObjectKey, st.binary(min_size=0, max_size=64), st.text(min_size=1, max_size=40).filter(
    lambda s: "@" not in s), st.integers(0, 2**32 - 1), st.integers(0, 2**16), st.text(max_size=20).filter(
    lambda s: not set(s) & set("@/\\\x00")))


def slot_with(key: ObjectKey, payload: bytes, generation: int) -> bytearray:
    header = layout.pack_header(layout.encode_key(key), generation, SLOT, len(payload), zlib.crc32(payload))
    buf = bytearray(SLOT)
    buf[:len(header)] = header
    buf[layout.HEADER_BYTES:layout.HEADER_BYTES + len(payload)] = payload
    return buf


@settings(max_examples=200, deadline=None)
@given(keys, st.binary(max_size=layout.HEADER_BYTES), st.integers(0, 2**63))
def test_a_written_slot_reads_back(key: ObjectKey, payload: bytes, generation: int) -> None:
    record = layout.read_slot(memoryview(slot_with(key, payload, generation)), 0, SLOT)
    assert record == layout.SlotRecord(0, key, generation, len(payload))


@settings(max_examples=300, deadline=None)
@given(keys, st.binary(min_size=1, max_size=512), st.data())
def test_any_changed_byte_of_header_or_payload_makes_the_slot_unreadable(key: ObjectKey, payload: bytes,
                                                                        data: st.DataObject) -> None:
    buf = slot_with(key, payload, 7)
    header_len = layout.HEADER.size + len(layout.encode_key(key))
    where = data.draw(st.one_of(st.integers(0, header_len - 1),
                                st.integers(layout.HEADER_BYTES, layout.HEADER_BYTES + len(payload) - 1)))
    flip = data.draw(st.integers(1, 255))
    buf[where] ^= flip
    assert layout.read_slot(memoryview(buf), 0, SLOT) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=SLOT, max_size=SLOT))
def test_arbitrary_bytes_are_not_a_slot(raw: bytes) -> None:
    # garbage, even behind a valid magic, never parses (and never raises)
    assert layout.read_slot(memoryview(layout.MAGIC + raw[8:]), 0, SLOT) is None


def test_another_slot_size_is_not_read_back() -> None:
    buf = slot_with(ObjectKey(b"k", "m", 0), b"payload", 1)
    assert layout.read_slot(memoryview(buf + bytearray(SLOT)), 0, SLOT + 4096) is None
