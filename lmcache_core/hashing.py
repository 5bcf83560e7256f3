"""Prefix-chained chunk hashing, bit-identical to LMCache 0.5.6's ``TokenHasher`` (blake3).

Only full chunks are hashed; a trailing partial chunk never gets a hash and so
can never hit. With ``C = chunk_size``::

    NONE_HASH = blake3(int64_be(0) || uint32_be(0))         # 12 zero bytes
    h_i       = blake3(h_{i-1} || uint32_be(t) for t in tokens[i*C:(i+1)*C])
    h_-1      = NONE_HASH

(LMCache 0.5.6's token hashing; vectors it computed: ``tests/data/test_vectors.json``). The chain
always starts at token 0: the hash of chunk ``i`` depends on every earlier
token, so a range ``[start, end)`` either continues from a known prefix hash or
is computed from chunk 0.

Algorithms. LMCache 0.5.6's ``--hash-algorithm`` takes ``blake3`` (its
default, needs nothing else) or a name that it looks up in vLLM
(``sha256_cbor``, ``sha256_cbor_64bit``, ``builtin``, ...). Without vLLM those
fall back to Python's ``hash()``, which is salted per process unless
``PYTHONHASHSEED`` is set, and even with vLLM its ``NONE_HASH`` is 32 random
bytes per process when the seed is unset. Keys made that way differ between
runs and between servers, so an L2 tier could never hit across restarts. We
therefore implement ``blake3`` only, and refuse the others at construction
with :class:`UnsupportedHashAlgorithmError` saying why.

Speed. Tokens are packed once into big-endian ``uint32`` bytes by C code
(``array.fromlist`` + ``byteswap``; no per-token Python loop), then each chunk
is one blake3 call over ``prefix || chunk bytes`` taken from a memoryview.
"""

from __future__ import annotations

import ctypes
import sys
from array import array
from collections.abc import Sequence
from typing import Any, Union

from blake3 import blake3

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "NONE_HASH",
    "SUPPORTED_ALGORITHMS",
    "InvalidTokenError",
    "PackedTokens",
    "TokenHasher",
    "TokenHashingError",
    "UnsupportedHashAlgorithmError",
    "Tokens",
    "pack_tokens",
    "prefix_bytes",
    "token_count",
]

DEFAULT_CHUNK_SIZE = 256
SUPPORTED_ALGORITHMS = ("blake3",)
TOKEN_MAX = 0xFFFFFFFF

Tokens = Union[Sequence[int], Any]
"""A token sequence: a list or tuple of ints (or any int sequence), or a 1-D integer torch tensor."""

# The packing relies on a 4-byte unsigned C type; every platform CPython and
# torch support has one of these two.
_U32 = "I" if array("I").itemsize == 4 else "L"
assert array(_U32).itemsize == 4, "no 4-byte unsigned array type on this platform"
_SWAP = sys.byteorder == "little"


class TokenHashingError(ValueError):
    """Base class for hashing errors."""


class UnsupportedHashAlgorithmError(TokenHashingError):
    """The requested hash algorithm is unknown or not deterministic without vLLM."""


class InvalidTokenError(TokenHashingError):
    """A token is not an integer in ``[0, 2**32)`` (LMCache packs tokens as big-endian uint32)."""


_NOT_DETERMINISTIC = {
    "builtin": "is Python's hash(), salted per process unless PYTHONHASHSEED is set",
    "builtin-hash": "is Python's hash(), salted per process unless PYTHONHASHSEED is set",
    "sha256": "comes from vLLM in LMCache 0.5.6 (falling back to Python's salted hash() without it)",
    "sha256_cbor": "comes from vLLM in LMCache 0.5.6 (falling back to Python's salted hash() without it)",
    "sha256_cbor_64bit": "comes from vLLM in LMCache 0.5.6 (falling back to Python's salted hash() without it)",
    "xxhash": "comes from vLLM in LMCache 0.5.6 (falling back to Python's salted hash() without it)",
    "xxhash_cbor": "comes from vLLM in LMCache 0.5.6 (falling back to Python's salted hash() without it)",
}


def _check_algorithm(algorithm: object) -> str:
    if algorithm in SUPPORTED_ALGORITHMS:
        return algorithm  # type: ignore[return-value]
    why = _NOT_DETERMINISTIC.get(algorithm) if isinstance(algorithm, str) else None
    if why is not None:
        raise UnsupportedHashAlgorithmError(
            f"hash algorithm {algorithm!r} {why}; its chunk hashes (and vLLM's NONE_HASH) change from "
            "process to process, so keys would not match across restarts or servers. lmcache-server "
            "supports only 'blake3', LMCache's default, which is deterministic"
        )
    raise UnsupportedHashAlgorithmError(
        f"unknown hash algorithm {algorithm!r}; supported: {', '.join(SUPPORTED_ALGORITHMS)}"
    )


def prefix_bytes(prefix: bytes | int) -> bytes:
    """A chain prefix as bytes, LMCache's way: bytes as-is, an int as 8 bytes big-endian signed."""
    if isinstance(prefix, bytes):
        return prefix
    if isinstance(prefix, int) and not isinstance(prefix, bool):
        try:
            return prefix.to_bytes(8, "big", signed=True)
        except OverflowError:
            raise TokenHashingError(f"an int prefix must fit in 8 signed bytes, got {prefix}") from None
    raise TokenHashingError(f"prefix must be bytes or int, got {type(prefix).__name__}")


NONE_HASH: bytes = blake3(prefix_bytes(0) + (0).to_bytes(4, "big")).digest()
"""The prefix of chunk 0: LMCache's fallback ``hash_fn((0, (0,), None))`` = blake3 of 12 zero bytes."""


# -- packing ------------------------------------------------------------------------


def _bad_token_error(tokens: Sequence[Any], offset: int) -> InvalidTokenError:
    # Error path only: convert one token at a time, exactly as the bulk call did, to name the culprit.
    probe = array(_U32)
    for index, token in enumerate(tokens):
        try:
            probe.append(token)
        except (OverflowError, TypeError, ValueError):
            return InvalidTokenError(
                f"token_ids[{offset + index}] = {token!r} is not a token id: tokens must be integers in [0, 2**32)"
            )
    return InvalidTokenError("token_ids contains a value that is not an integer in [0, 2**32)")


def _is_tensor(tokens: object) -> bool:
    # Checked without importing torch: a server that never sees tensors never pays for the import.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(tokens, torch.Tensor)


def _pack_tensor(tokens: Any, start: int, end: int) -> bytes:
    import torch

    if tokens.dim() != 1:
        raise InvalidTokenError(f"a token tensor must be 1-D, got shape {tuple(tokens.shape)}")
    if tokens.dtype == torch.bool or tokens.is_floating_point() or tokens.is_complex():
        raise InvalidTokenError(f"a token tensor must have an integer dtype, got {tokens.dtype}")
    values = tokens[start:end].detach().to(device="cpu", dtype=torch.int64).contiguous()
    if values.numel() == 0:
        return b""
    bad = ((values < 0) | (values > TOKEN_MAX)).nonzero()
    if bad.numel():
        index = int(bad[0, 0])
        raise InvalidTokenError(
            f"token_ids[{start + index}] = {int(values[index])} is not a token id: "
            "tokens must be integers in [0, 2**32)"
        )
    # Each int64 holds the uint32 in its low 4 bytes; pick them and order them big-endian.
    octets = values.view(torch.uint8).view(-1, 8)
    low = octets[:, :4].flip(1) if _SWAP else octets[:, 4:]
    low = low.contiguous()
    return ctypes.string_at(low.data_ptr(), low.numel())


def token_count(tokens: Tokens) -> int:
    """``len(tokens)``, refusing what cannot be a token sequence (strings, bytes, non-1-D tensors)."""
    if _is_tensor(tokens):
        if tokens.dim() != 1:
            raise InvalidTokenError(f"a token tensor must be 1-D, got shape {tuple(tokens.shape)}")
        return int(tokens.shape[0])
    if isinstance(tokens, (str, bytes, bytearray, memoryview)):
        raise InvalidTokenError(f"tokens must be a sequence of ints, got {type(tokens).__name__}")
    try:
        return len(tokens)
    except TypeError:
        raise InvalidTokenError(f"tokens must be a sequence of ints, got {type(tokens).__name__}") from None


class PackedTokens(Sequence[int]):
    """A token sequence held as its big-endian uint32 bytes (what :func:`pack_tokens` makes), immutable.

    The data path decodes a request's token list straight into this form
    (:mod:`lmcache_core.transport.tokens`): no Python int per token, and
    :func:`pack_tokens` of it is the bytes themselves. It reads like a sequence
    of ints (``len``, indexing, iteration, ``==`` with a list or tuple of the same
    values); the int list is only built if someone indexes or iterates it.
    ``hash_memo`` lets every request carrying the same tokens share one
    computation of the chunk hashes (see :meth:`memo_hashes`).
    """

    __slots__ = ("_list", "_memo", "_n", "packed")

    def __init__(self, packed: bytes) -> None:
        if len(packed) % 4:
            raise InvalidTokenError(f"packed tokens must be a multiple of 4 bytes, got {len(packed)}")
        self.packed = packed
        self._n = len(packed) // 4
        self._list: list[int] | None = None
        self._memo: tuple[Any, list[bytes]] | None = None

    def __len__(self) -> int:
        return self._n

    def _values(self) -> list[int]:
        if self._list is None:
            values = array(_U32)
            values.frombytes(self.packed)
            if _SWAP:
                values.byteswap()
            self._list = values.tolist()
        return self._list

    def __getitem__(self, index: Any) -> Any:
        return self._values()[index]

    def __iter__(self) -> Any:
        return iter(self._values())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedTokens):
            return self.packed == other.packed
        if isinstance(other, (list, tuple)):
            return len(other) == self._n and self._values() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to lists, which are unhashable

    def __repr__(self) -> str:
        head = ", ".join(str(t) for t in self[:8])
        return f"PackedTokens([{head}{', ...' if self._n > 8 else ''}], n={self._n})"

    def memo_hashes(self, hasher: Any) -> list[bytes]:
        """The chunk hashes from chunk 0 that ``hasher`` computed for these tokens so far (may be empty)."""
        memo = self._memo
        return memo[1] if memo is not None and memo[0] is hasher else []

    def remember_hashes(self, hasher: Any, hashes: list[bytes]) -> None:
        """Keep ``hashes`` (chunks 0..n-1 by ``hasher``) when longer than what is kept (one atomic swap)."""
        memo = self._memo
        if memo is None or memo[0] is not hasher or len(memo[1]) < len(hashes):
            self._memo = (hasher, list(hashes))


def pack_tokens(tokens: Tokens, start: int = 0, end: int | None = None) -> bytes:
    """``tokens[start:end]`` as big-endian uint32 bytes; raises :class:`InvalidTokenError`.

    A list is packed with ``array.fromlist`` (the fastest C path); other
    sequences through the ``array`` constructor; torch tensors with tensor ops;
    :class:`PackedTokens` are already packed.
    """
    if type(tokens) is PackedTokens:
        n = len(tokens)
        begin, stop, _ = slice(start, end).indices(n)  # exactly a list's slice
        return tokens.packed if begin == 0 and stop == n else tokens.packed[begin * 4:max(begin, stop) * 4]
    count = token_count(tokens)
    if _is_tensor(tokens):
        return _pack_tensor(tokens, start, count if end is None else end)
    # Slicing a list touches every element it copies, so whole-list calls skip it.
    part = tokens if start == 0 and (end is None or end >= count) else tokens[start:end]
    packed = array(_U32)
    try:
        if isinstance(part, list):
            packed.fromlist(part)
        else:
            packed = array(_U32, part)
    except (OverflowError, TypeError, ValueError):
        raise _bad_token_error(part, start) from None
    if _SWAP:
        packed.byteswap()
    return packed.tobytes()


# -- hasher ---------------------------------------------------------------------------


def _chunk_index(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TokenHashingError(f"{name} must be a non-negative int, got {value!r}")
    return value


def chunk_span(start: int, end: int, chunk_size: int, num_tokens: int | None = None) -> tuple[int, int]:
    """The chunks ``[first, stop)`` that the token range ``[start, end)`` names.

    This is the LMCache client's rule, used for every token range the server turns
    into chunks (LOOKUP, FREE_LOOKUP_LOCKS, STORE, RETRIEVE, engine-driven
    transfers): the chunk holding ``start`` is included (round down), the chunk
    holding an unaligned ``end`` is not (round down too), as LMCache's
    ``free_lookup_locks`` contract and its ``compute_chunk_hashes`` (complete chunks
    only) say. ``end`` is first clamped to ``num_tokens`` when given. An empty or
    inverted range gives ``(first, first)``.

    vLLM's prefix cache is 16-token granular: with 272 tokens already computed its
    scheduler frees ``[0, 272)`` (chunk 0 only) and then retrieves ``[256, 512)``
    with ``skip_first_n_tokens=16``: chunk 1 must still be locked.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if num_tokens is not None and end > num_tokens:
        end = num_tokens
    first = max(start, 0) // chunk_size
    stop = max(end, 0) // chunk_size
    return first, max(first, stop)


class TokenHasher:
    """Chunk hashes of token sequences, identical to LMCache 0.5.6 for ``algorithm="blake3"``.

    Stateless and thread-safe. Per-request caching lives in
    :class:`lmcache_core.sessions.Session`.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, algorithm: str = "blake3") -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise TokenHashingError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self._algorithm = _check_algorithm(algorithm)
        self._chunk_size = chunk_size
        self._chunk_bytes = 4 * chunk_size

    @property
    def chunk_size(self) -> int:
        """Tokens per chunk."""
        return self._chunk_size

    @property
    def algorithm(self) -> str:
        """The algorithm name (``"blake3"``)."""
        return self._algorithm

    @property
    def none_hash(self) -> bytes:
        """The prefix used for chunk 0."""
        return NONE_HASH

    def __repr__(self) -> str:
        return f"TokenHasher(chunk_size={self._chunk_size}, algorithm={self._algorithm!r})"

    def num_full_chunks(self, num_tokens: int) -> int:
        """How many complete chunks ``num_tokens`` tokens make."""
        return num_tokens // self._chunk_size

    def pack(self, tokens: Tokens) -> bytes:
        """All of ``tokens`` as big-endian uint32 bytes (see :func:`pack_tokens`)."""
        return pack_tokens(tokens)

    def hash_chunks(
        self,
        tokens: Tokens,
        start_chunk: int = 0,
        end_chunk: int | None = None,
        prefix: bytes | int | None = None,
    ) -> list[bytes]:
        """Hashes of chunks ``[start_chunk, end_chunk)`` of ``tokens`` (the full sequence from token 0).

        ``end_chunk`` defaults to, and is capped at, the number of full chunks.
        ``prefix`` is the hash of chunk ``start_chunk - 1`` when the caller
        already knows it (incremental continuation): only the tokens of the
        requested chunks are then packed and hashed. Without it the chain is
        computed from chunk 0 (a ``start_chunk`` of 0 uses :data:`NONE_HASH`).
        """
        start, stop = self._range(token_count(tokens), start_chunk, end_chunk)
        if start >= stop:
            return []
        size = self._chunk_size
        if prefix is None and start > 0:
            packed = pack_tokens(tokens, 0, stop * size)
            return self._chain(memoryview(packed), NONE_HASH, 0, stop)[start:]
        seed = NONE_HASH if prefix is None else prefix_bytes(prefix)
        packed = pack_tokens(tokens, start * size, stop * size)
        return self._chain(memoryview(packed), seed, 0, stop - start)

    def hash_packed(
        self,
        packed: bytes | bytearray | memoryview,
        start_chunk: int = 0,
        end_chunk: int | None = None,
        prefix: bytes | int | None = None,
    ) -> list[bytes]:
        """:meth:`hash_chunks` over tokens already packed by :func:`pack_tokens` (from token 0)."""
        view = memoryview(packed).cast("B")
        if len(view) % 4:
            raise TokenHashingError(f"packed tokens must be a multiple of 4 bytes, got {len(view)}")
        start, stop = self._range(len(view) // 4, start_chunk, end_chunk)
        if start >= stop:
            return []
        if prefix is None and start > 0:
            return self._chain(view, NONE_HASH, 0, stop)[start:]
        seed = NONE_HASH if prefix is None else prefix_bytes(prefix)
        return self._chain(view, seed, start, stop)

    def _range(self, num_tokens: int, start_chunk: int, end_chunk: int | None) -> tuple[int, int]:
        full = num_tokens // self._chunk_size
        start = _chunk_index("start_chunk", start_chunk)
        stop = full if end_chunk is None else min(_chunk_index("end_chunk", end_chunk), full)
        return start, stop

    def _chain(self, data: memoryview, prefix: bytes, first: int, stop: int) -> list[bytes]:
        """Hash chunks ``first..stop-1`` of ``data`` (chunk 0 at byte 0), chaining from ``prefix``."""
        step = self._chunk_bytes
        out: list[bytes] = []
        append = out.append
        digest = prefix
        for offset in range(first * step, stop * step, step):
            # bytes + memoryview slice: one small copy, no per-token work.
            digest = blake3(digest + data[offset : offset + step]).digest()
            append(digest)
        return out
