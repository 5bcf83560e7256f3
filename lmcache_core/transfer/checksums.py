"""KV-cache checksums by block: ``POST /cache/checksums`` (LMCache 0.5.6) and the seed's ``GET /kvcache/check``.

Both routes compute the same digests (LMCache 0.5.6's checksum rule): the block
ids are cut into chunks of ``chunk_size`` *blocks* (the last chunk may be
short), and

* ``layerwise=false``: chunk ``c``'s digest is one MD5 over, for every registered
  layer tensor in registration order, the C-contiguous bytes of
  ``layer.index_select(block_axis, chunk_c_ids)``: for ``(2, NB, BS, NH, HS)``
  that is all of K for the chunk's blocks, then all of V;
* ``layerwise=true``: one MD5 per layer per chunk, keyed ``"layer_<i>"``.

``bfloat16`` layers are upcast to ``float32`` before hashing (LMCache does,
because its digest goes through NumPy, which has no bfloat16). Verified against
the captured responses: ``tests/data/golden/http_cache_checksums.json`` (the
bench's ``torch.manual_seed(42)`` + ``randn`` KV) and
``test_vectors.json`` → ``end_to_end_store.cache_checksums_response``.

The two routes differ only in how block ids travel: 0.5.6 takes a JSON list and
answers ``block_id_ranges`` as a list (``[[0, 31]]``); the seed takes and
answers the mixed string format ``"0,[2,5],8"`` (inclusive ranges).
:func:`parse_block_ids`, :func:`compress_block_ids` and
:func:`format_block_ids` convert between them.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from lmcache_core.transfer.layout import TransferError

__all__ = [
    "BlockIdParseError",
    "ChecksumError",
    "checksum_response",
    "compress_block_ids",
    "compute_block_checksums",
    "format_block_ids",
    "kvcache_checksums",
    "parse_block_ids",
]

DEFAULT_MAX_BLOCK_IDS = 1 << 20  # a parsed "[0,N]" range may not expand past this many ids
MAX_ID_DIGITS = 18  # an id has at most this many ASCII digits (< 10**18 < 2**63): "9"*5000 is refused, not parsed
MAX_BLOCK_IDS_TEXT = 1 << 22  # characters: a longer string is refused before it is scanned


class ChecksumError(TransferError):
    """A checksum request that cannot be answered; ``status`` is the HTTP status to send."""

    def __init__(self, status: int, detail: str) -> None:
        """``status``: 400 (bad input), 404 (nothing registered) or 501 (unsupported format)."""
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BlockIdParseError(ChecksumError, ValueError):
    """A mixed-format block id string is malformed (always HTTP 400)."""

    def __init__(self, detail: str) -> None:
        """``detail`` names what is wrong."""
        super().__init__(400, detail)


# [0-9] rather than \d: "١٢" (Arabic-Indic digits) and "１" (fullwidth) are not ids, whatever the flags.
_RANGE = re.compile(r"\[([0-9]{1,%d}),([0-9]{1,%d})\]" % (MAX_ID_DIGITS, MAX_ID_DIGITS))
_NUMBER = re.compile(r"[0-9]{1,%d}" % MAX_ID_DIGITS)


def parse_block_ids(text: str, *, max_ids: int = DEFAULT_MAX_BLOCK_IDS) -> list[int]:
    """Parse ``"1,2,[5,8],10"`` into ``[1, 2, 5, 6, 7, 8, 10]`` (ranges are inclusive; order kept).

    Whitespace is ignored and empty items (``"1,,2"``) are skipped, as LMCache's
    parser does. Raises :class:`BlockIdParseError` for an empty result, nested or
    unbalanced brackets, a reversed range, anything that is not a non-negative
    integer written in ASCII digits (``"١"`` and ``"１"`` are refused), an id of
    more than ``MAX_ID_DIGITS`` digits, a string longer than
    ``MAX_BLOCK_IDS_TEXT`` characters, or more than ``max_ids`` ids.
    """
    if not isinstance(text, str):
        raise BlockIdParseError("block_ids must be a string")
    if len(text) > MAX_BLOCK_IDS_TEXT:
        raise BlockIdParseError(f"block_ids is longer than {MAX_BLOCK_IDS_TEXT} characters")
    clean = "".join(text.split())
    items: list[str] = []
    buf: list[str] = []
    depth = 0
    for ch in clean:
        if ch == "[":
            if depth:
                raise BlockIdParseError(f"nested brackets in block_ids {text!r}")
            if buf:
                raise BlockIdParseError(f"unexpected '[' after {''.join(buf)!r} in block_ids")
            depth = 1
            buf.append(ch)
        elif ch == "]":
            if not depth:
                raise BlockIdParseError(f"unmatched ']' in block_ids {text!r}")
            depth = 0
            buf.append(ch)
            items.append("".join(buf))
            buf = []
        elif ch == "," and not depth:
            if buf:
                items.append("".join(buf))
                buf = []
        else:
            buf.append(ch)
    if depth:
        raise BlockIdParseError(f"unclosed '[' in block_ids {text!r}")
    if buf:
        items.append("".join(buf))

    out: list[int] = []
    for item in items:
        m = _RANGE.fullmatch(item)
        if m:
            first, last = int(m.group(1)), int(m.group(2))
            if first > last:
                raise BlockIdParseError(f"range [{first},{last}] has start > end")
            if len(out) + (last - first + 1) > max_ids:
                raise BlockIdParseError(f"block_ids expands to more than {max_ids} ids")
            out.extend(range(first, last + 1))
        elif _NUMBER.fullmatch(item):
            if len(out) + 1 > max_ids:
                raise BlockIdParseError(f"block_ids expands to more than {max_ids} ids")
            out.append(int(item))
        else:
            shown = item if len(item) <= 40 else item[:37] + "..."
            raise BlockIdParseError(f"invalid block id {shown!r}: expected a non-negative integer of at most "
                                    f"{MAX_ID_DIGITS} ASCII digits, or [start,end]")
    if not out:
        raise BlockIdParseError("block_ids is required")
    return out


def compress_block_ids(block_ids: Sequence[int]) -> list[int | list[int]]:
    """Order-preserving compression: runs of ≥ 3 consecutive ids become ``[first, last]``.

    ``[0, 1, 2, 5, 7]`` → ``[[0, 2], 5, 7]`` (the ``block_id_ranges`` of 0.5.6's response).
    """
    out: list[int | list[int]] = []
    i, n = 0, len(block_ids)
    while i < n:
        j = i
        while j + 1 < n and block_ids[j + 1] == block_ids[j] + 1:
            j += 1
        if j - i + 1 >= 3:
            out.append([int(block_ids[i]), int(block_ids[j])])
        else:
            out.extend(int(b) for b in block_ids[i:j + 1])
        i = j + 1
    return out


def format_block_ids(block_ids: Sequence[int]) -> str:
    """The seed's mixed string: ``[0, 2, 3, 4, 5, 8]`` → ``"0,[2,5],8"``."""
    return ",".join(f"[{x[0]},{x[1]}]" if isinstance(x, list) else str(x) for x in compress_block_ids(block_ids))


def _md5_update(md5: Any, tensor: torch.Tensor) -> None:
    """Feed a CPU tensor's C-contiguous bytes to ``md5`` without copying them into Python bytes."""
    t = tensor.contiguous()
    n = t.numel() * t.element_size()
    if n == 0:
        return
    md5.update((ctypes.c_ubyte * n).from_address(t.data_ptr()))


def compute_block_checksums(
    layers: Sequence[torch.Tensor],
    block_axes: Sequence[int],
    block_ids: Sequence[int],
    chunk_size: int,
    layerwise: bool = False,
) -> list[str] | dict[str, list[str]]:
    """MD5 hex digests per chunk of ``chunk_size`` blocks (see the module docstring).

    ``layers``: the registered tensors in registration order; ``block_axes``: each
    one's block axis. Raises :class:`ChecksumError` (400) for an empty id list, a
    non-positive chunk size or an id out of range.
    """
    if not block_ids:
        raise ChecksumError(400, "block_ids is required")
    if chunk_size <= 0:
        raise ChecksumError(400, "chunk_size must be positive")
    if not layers:
        raise ChecksumError(404, "kv_caches empty")
    if len(block_axes) != len(layers):
        raise ChecksumError(501, "checksum not supported: a layer has no block axis")
    try:
        idx = torch.tensor(list(block_ids), dtype=torch.int64)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        raise ChecksumError(400, "block_ids must be integers") from None
    for li, (t, axis) in enumerate(zip(layers, block_axes, strict=True)):
        nb = int(t.shape[axis])
        if int(idx.min()) < 0 or int(idx.max()) >= nb:
            bad = [b for b in block_ids if not 0 <= b < nb][:5]
            raise ChecksumError(400, f"block ids {bad} out of range for layer {li} (valid: 0 to {nb - 1})")

    most = max(int(t.shape[axis]) for t, axis in zip(layers, block_axes, strict=True))
    if len(block_ids) > most:
        raise ChecksumError(400, f"{len(block_ids)} block ids for a KV cache of {most} blocks "
                                 f"(at most one id per block)")

    n = len(block_ids)
    num_chunks = (n + chunk_size - 1) // chunk_size
    chunks = [idx[c * chunk_size:(c + 1) * chunk_size] for c in range(num_chunks)]
    if layerwise:
        per_layer: dict[str, list[str]] = {}
        for li, (t, axis) in enumerate(zip(layers, block_axes, strict=True)):
            digests = []
            for ids in chunks:
                md5 = hashlib.md5()
                _md5_blocks(md5, t, axis, ids)
                digests.append(md5.hexdigest())
            per_layer[f"layer_{li}"] = digests
        return per_layer
    out = []
    for ids in chunks:
        md5 = hashlib.md5()
        for t, axis in zip(layers, block_axes, strict=True):
            _md5_blocks(md5, t, axis, ids)
        out.append(md5.hexdigest())
    return out


HASH_BATCH_BYTES = 8 << 20
"""Most bytes gathered at once while hashing: memory stays bounded whatever the request names."""


def _md5_blocks(md5: Any, layer: torch.Tensor, axis: int, ids: torch.Tensor) -> None:
    """Feed ``md5`` the bytes of ``layer.index_select(axis, ids)`` (C order; bfloat16 as float32) without
    building that tensor: one slice of the dimensions before ``axis`` and a batch of ids at a time, which
    is the same byte sequence."""
    block_bytes = layer.element_size() * max(1, math.prod(layer.shape[axis + 1:]))
    if layer.dtype == torch.bfloat16:
        block_bytes *= 2
    batch = max(1, HASH_BATCH_BYTES // block_bytes)
    for outer in itertools.product(*(range(d) for d in layer.shape[:axis])):
        plane = layer[outer] if outer else layer
        for start in range(0, len(ids), batch):
            part = ids[start:start + batch].to(plane.device)
            g = plane.index_select(0, part).cpu()
            if g.dtype == torch.bfloat16:
                g = g.to(torch.float32)
            _md5_update(md5, g)


def kvcache_checksums(kv: Any, block_ids: Sequence[int], chunk_size: int,
                      layerwise: bool = False) -> list[str] | dict[str, list[str]]:
    """Checksums of a :class:`~lmcache_core.transfer.kvcache.RegisteredKVCache` (``kv.layers``, ``kv.layout``)."""
    return compute_block_checksums(kv.layers, kv.layout.block_axes, block_ids, chunk_size, layerwise)


def checksum_response(kv: Any, block_ids: Sequence[int], chunk_size: int, layerwise: bool = False, *,
                      ranges_as_string: bool = False) -> dict[str, Any]:
    """The 200 body, keys in the order LMCache serves them.

    ``ranges_as_string=False``: 0.5.6's ``POST /cache/checksums`` (``block_id_ranges``
    a list); ``True``: the seed's ``GET /kvcache/check`` (the mixed string).
    Raises :class:`ChecksumError` (with ``status``) for a request to refuse.
    """
    if not block_ids:
        raise ChecksumError(400, "block_ids is required")
    if chunk_size <= 0:
        raise ChecksumError(400, "chunk_size must be positive")
    digests = kvcache_checksums(kv, block_ids, chunk_size, layerwise)
    return {
        "status": "success",
        "chunk_size": chunk_size,
        "num_chunks": (len(block_ids) + chunk_size - 1) // chunk_size,
        "chunk_checksums": digests,
        "layerwise": bool(layerwise),
        "block_id_ranges": format_block_ids(block_ids) if ranges_as_string else compress_block_ids(block_ids),
    }
