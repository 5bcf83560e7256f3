"""What a DAX device holds: fixed-size slots, and (``persist_enabled``) a header at the start of each slot.

Slot ``i`` of a device starts at byte ``i * slot_bytes`` of the mapping. Without
persistence a slot holds the payload only, at its start (LMCache's layout): the
index lives in memory and a restart forgets it.

With ``persist_enabled: true`` each slot begins with a :data:`HEADER_BYTES` header and
the payload follows it, so a slot carries at most ``slot_bytes - HEADER_BYTES``
payload bytes. The header, little-endian::

    0   8s  magic  b"LMCDAX01"
    8   I   crc32 of bytes 12 .. 48 + key_len (the rest of the header, key included)
    12  I   key_len
    16  Q   generation (per adapter, increasing; the newest copy of a key wins)
    24  Q   slot_bytes (a device written with another slot size is not read back)
    32  Q   payload_len
    40  I   crc32 of the payload
    44  I   reserved (0)
    48  ..  the key, msgpack-encoded ObjectKey

A store writes the payload first and the header last (after clearing the magic);
a delete, an evict and the source side of a migration clear the magic. A process
killed at any point therefore leaves each slot either with no valid header (free
after restart) or with a header whose CRCs prove the payload whole: a torn slot is
never served. Both CRCs are checked when a device is scanned (at start and when a
device with a valid layout is added back); loads do not re-check them.

Scope: this covers a killed server. A power cut on a real persistent-memory device
also needs the CPU caches flushed in order (``clwb``/``sfence``), which Python
cannot issue; the payload CRC then turns a payload that did not reach the media
into a miss, but a header that did not reach it loses the object.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import zlib
from dataclasses import dataclass

import msgspec

from lmcache_core.api import ObjectKey

MAGIC = b"LMCDAX01"
HEADER = struct.Struct("<8sIIQQQII")
HEADER_BYTES = 4096
MAX_KEY_BYTES = HEADER_BYTES - HEADER.size
_CLEARED = b"\x00" * len(MAGIC)
_KEY_ENCODER = msgspec.msgpack.Encoder()
_KEY_DECODER = msgspec.msgpack.Decoder(ObjectKey)


def encode_key(key: ObjectKey) -> bytes:
    """The header's key bytes; ValueError when the key does not fit a header."""
    raw = _KEY_ENCODER.encode(key)
    if len(raw) > MAX_KEY_BYTES:
        raise ValueError(f"key too long for a persistent DAX slot header ({len(raw)} > {MAX_KEY_BYTES} bytes)")
    return raw


def pack_header(key_bytes: bytes, generation: int, slot_bytes: int, payload_len: int, payload_crc: int) -> bytes:
    """A complete header (magic first, header CRC filled in)."""
    body = HEADER.pack(MAGIC, 0, len(key_bytes), generation, slot_bytes, payload_len, payload_crc, 0) + key_bytes
    return body[:8] + struct.pack("<I", zlib.crc32(body[12:])) + body[12:]


@dataclass(frozen=True)
class SlotRecord:
    """A slot whose header and payload checked out."""

    slot: int
    key: ObjectKey
    generation: int
    payload_len: int


def read_slot(view: memoryview, slot: int, slot_bytes: int) -> SlotRecord | None:
    """The slot's record if its header is valid and its payload matches the header's CRC, else None."""
    base = slot * slot_bytes
    raw = bytes(view[base:base + HEADER.size])
    magic, hcrc, key_len, gen, sbytes, plen, pcrc, _ = HEADER.unpack(raw)
    if magic != MAGIC or key_len > MAX_KEY_BYTES or sbytes != slot_bytes or plen > slot_bytes - HEADER_BYTES:
        return None
    rest = raw[12:] + bytes(view[base + HEADER.size:base + HEADER.size + key_len])
    if zlib.crc32(rest) != hcrc:
        return None
    start = base + HEADER_BYTES
    if zlib.crc32(view[start:start + plen]) != pcrc:
        return None
    try:
        key = _KEY_DECODER.decode(rest[HEADER.size - 12:])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return SlotRecord(slot, key, gen, plen)


class Mapping:
    """One shared mapping of a device (a device has a new one after each resize).

    ``users`` counts copies in progress that read or write through :attr:`address`;
    a mapping is unmapped only when it is retired (replaced or its device closed) and
    no copy uses it, so a raw-pointer copy never touches unmapped memory. The caller
    serialises ``users``/``retire`` under the adapter's lock.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.size = size
        self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._anchor: ctypes.c_char | None = ctypes.c_char.from_buffer(self.mm)
        self.address = ctypes.addressof(self._anchor)
        self.users = 0
        self.retired = False

    def view(self) -> memoryview:
        """A memoryview of the whole mapping (release it before :meth:`close`)."""
        return memoryview(self.mm)

    def retire(self) -> bool:
        """No new copies will start on this mapping; unmapped now if none is running. True if unmapped."""
        self.retired = True
        return self.close_if_idle()

    def close_if_idle(self) -> bool:
        if not self.retired or self.users or self._anchor is None:
            return False
        self._anchor = None
        try:
            self.mm.close()
        except BufferError:  # a memoryview someone still holds: unmapped when it is released
            return False
        return True


def copy(dst: int, src: int, nbytes: int) -> None:
    """memcpy between two addresses (ctypes releases the GIL for the copy)."""
    ctypes.memmove(dst, src, nbytes)


def clear_header(mapping: Mapping, slot: int, slot_bytes: int) -> None:
    """Invalidate the slot's header (8 bytes: the magic)."""
    ctypes.memmove(mapping.address + slot * slot_bytes, _CLEARED, len(_CLEARED))


def write_header(mapping: Mapping, slot: int, slot_bytes: int, header: bytes) -> None:
    """Write a packed header at the slot's start: the body first, the magic last."""
    base = mapping.address + slot * slot_bytes
    ctypes.memmove(base + len(MAGIC), header[len(MAGIC):], len(header) - len(MAGIC))
    ctypes.memmove(base, header, len(MAGIC))


def header_payload_crc(mapping: Mapping, slot: int, slot_bytes: int) -> int:
    """The payload CRC a slot's (valid) header records: a migration copies it rather than recomputing it."""
    raw = ctypes.string_at(mapping.address + slot * slot_bytes, HEADER.size)
    return HEADER.unpack(raw)[6]


def payload_crc(mapping: Mapping, offset: int, nbytes: int) -> int:
    """crc32 of ``nbytes`` of the mapping at ``offset`` (zero copy; zlib releases the GIL)."""
    buf = (ctypes.c_char * nbytes).from_address(mapping.address + offset)
    return zlib.crc32(memoryview(buf))
