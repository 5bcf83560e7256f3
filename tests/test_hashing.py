"""Chunk hashing: LMCache 0.5.6 vectors, continuation, input forms, errors, the benchmark's shape."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.hashing import (
    NONE_HASH,
    InvalidTokenError,
    TokenHasher,
    TokenHashingError,
    UnsupportedHashAlgorithmError,
    pack_tokens,
    prefix_bytes,
    token_count,
)

# protocol/test_vectors.json (lmcache==0.5.6, chunk 256), embedded so the suite runs anywhere.
NONE_HASH_HEX = "7e3eff9ef7613a50340eb12677ee03b83ac759fcba9bb32705f07248d56d473b"
VECTORS: list[tuple[str, list[int], int, int | None, list[str]]] = [
    # (name, tokens, start token, end token or None, expected chunk hashes)
    ("range512", list(range(512)), 0, None, [
        "084547b6c40ed5b05ba8cd0305db5bf74d5617673948d9ed193ab7d6cbc484d4",
        "e5ffee45c2b9db326814c9692dc594369887ba3b0df5761817820b60f864c8e0",
    ]),
    ("bench_seq0", [0] + [9906] * 512, 0, None, [
        "d65391f7dcbfb7f8472e8942ce76f5ca70a3ab0ffd0978c0640a27d07a9a336f",
        "4d033f8a28112da0d40257c88d086c2816f3827becdbb9056a484d19d8ea4b64",
    ]),
    ("bench_seq1", [1] + [9906] * 512, 0, None, [
        "a8564142a68a3bda3362424182f768bda1cbd41925dd4e6f4dc5d20c38e7af5d",
        "520c53219ad3dedea1fa4608ec3612c6d6a07a6b93afcd79c4eeea68b2197e32",
    ]),
    ("zeros300", [0] * 300, 0, None, [
        "03edbe7e49c9198da23fa92679fd592f12679bb4ccc65b5c91f31dda79bf1fa9",
    ]),
    ("max_uint32", [151643, 4294967295] + [100000] * 254, 0, None, [
        "a98e276523face1f70fe187741c8142f131bc01ba6961e0024e1a8e924e7f58c",
    ]),
    ("range512_second_chunk", list(range(512)), 256, 512, [
        "e5ffee45c2b9db326814c9692dc594369887ba3b0df5761817820b60f864c8e0",
    ]),
]
# How each vector's "tokens" text in test_vectors.json maps to the lists above.
VECTOR_TEXT_PREFIX = {
    "list(range(512))": "range512",
    "[0] + [9906]*512": "bench_seq0",
    "[1] + [9906]*512": "bench_seq1",
    "[0]*300": "zeros300",
    "[151643, 4294967295]": "max_uint32",
    "list(range(512)), start=256": "range512_second_chunk",
}


def reference_hashes(tokens: list[int], chunk_size: int) -> list[bytes]:
    """LMCache 0.5.6's chunk hash rule, written independently with struct."""
    out, prefix = [], blake3((0).to_bytes(8, "big", signed=True) + struct.pack(">I", 0)).digest()
    for i in range(len(tokens) // chunk_size):
        chunk = tokens[i * chunk_size : (i + 1) * chunk_size]
        prefix = blake3(prefix + struct.pack(f">{chunk_size}I", *chunk)).digest()
        out.append(prefix)
    return out


def _vector_hashes(hasher: TokenHasher, tokens: list[int], start: int, end: int | None) -> list[str]:
    stop = None if end is None else end // hasher.chunk_size
    return [h.hex() for h in hasher.hash_chunks(tokens, start // hasher.chunk_size, stop)]


def test_none_hash() -> None:
    assert NONE_HASH.hex() == NONE_HASH_HEX
    assert NONE_HASH == blake3(bytes(12)).digest()
    assert TokenHasher().none_hash == NONE_HASH


@pytest.mark.parametrize(("name", "tokens", "start", "end", "expected"), VECTORS, ids=[v[0] for v in VECTORS])
def test_lmcache_vectors(name: str, tokens: list[int], start: int, end: int | None, expected: list[str]) -> None:
    hasher = TokenHasher(256)
    assert _vector_hashes(hasher, tokens, start, end) == expected
    assert [h.hex() for h in reference_hashes(tokens, 256)][start // 256 : None if end is None else end // 256] == (
        expected
    )


def _vectors_file() -> Path:
    # Vectors computed with lmcache==0.5.6 (facts about its hashing and keys),
    # kept in the repository so the check needs nothing beside it.
    return Path(__file__).resolve().parent / "data" / "test_vectors.json"


def test_vectors_file_matches_bit_for_bit() -> None:
    path = _vectors_file()
    doc = json.loads(path.read_text())["hashing"]
    assert doc["chunk_size"] == 256
    assert doc["none_hash_hex"] == NONE_HASH.hex()
    by_name = {v[0]: v for v in VECTORS}
    seen = set()
    for vector in doc["vectors"]:
        matches = [text for text in VECTOR_TEXT_PREFIX if vector["tokens"].startswith(text)]
        assert matches, f"unmapped vector {vector['tokens']!r}"
        name = VECTOR_TEXT_PREFIX[max(matches, key=len)]  # the most specific description
        _, tokens, start, end, _ = by_name[name]
        assert _vector_hashes(TokenHasher(256), tokens, start, end) == vector["chunk_hashes_hex"]
        seen.add(name)
    assert seen == set(by_name)


def test_e2e_vector_chunk_hashes_name_the_l2_files() -> None:
    hashes = TokenHasher(256).hash_chunks(list(range(512)))
    assert [h.hex() for h in hashes] == VECTORS[0][4]


# -- continuation and input forms ----------------------------------------------------

token_lists = st.lists(st.integers(0, 2**32 - 1), max_size=80)


@given(token_lists, st.integers(1, 9), st.data())
@settings(max_examples=200, deadline=None)
def test_matches_reference_and_continues_from_any_prefix(tokens: list[int], chunk_size: int, data: st.DataObject) -> None:
    hasher = TokenHasher(chunk_size)
    full = hasher.hash_chunks(tokens)
    assert full == reference_hashes(tokens, chunk_size)
    assert len(full) == len(tokens) // chunk_size
    start = data.draw(st.integers(0, len(full)))
    end = data.draw(st.integers(start, len(full) + 2))
    expected = full[start:end]
    assert hasher.hash_chunks(tokens, start, end) == expected  # computed from chunk 0
    prefix = full[start - 1] if start else None
    assert hasher.hash_chunks(tokens, start, end, prefix=prefix) == expected  # continued
    packed = pack_tokens(tokens)
    assert hasher.hash_packed(packed, start, end) == expected
    assert hasher.hash_packed(packed, start, end, prefix=prefix) == expected
    assert hasher.hash_chunks(tuple(tokens), start, end) == expected


def test_prefix_changes_the_chain() -> None:
    hasher = TokenHasher(4)
    tokens = list(range(8))
    assert hasher.hash_chunks(tokens, 0, prefix=NONE_HASH) == hasher.hash_chunks(tokens)
    other = hasher.hash_chunks(tokens, 0, prefix=b"\x01" * 32)
    assert other != hasher.hash_chunks(tokens)
    # An int prefix is LMCache's 8-byte big-endian signed form.
    assert hasher.hash_chunks(tokens, 0, prefix=-2) == hasher.hash_chunks(tokens, 0, prefix=(-2).to_bytes(8, "big", signed=True))
    assert prefix_bytes(0) == bytes(8)
    with pytest.raises(TokenHashingError):
        prefix_bytes(2**63)
    with pytest.raises(TokenHashingError):
        prefix_bytes("ab")  # type: ignore[arg-type]


def test_trailing_partial_chunk_is_ignored_and_start_beyond_end_is_empty() -> None:
    hasher = TokenHasher(4)
    assert hasher.hash_chunks([1, 2, 3]) == []
    assert hasher.hash_chunks(list(range(7))) == hasher.hash_chunks(list(range(4)))
    assert hasher.hash_chunks(list(range(8)), 3) == []
    assert hasher.num_full_chunks(7) == 1


def test_torch_tensors_hash_like_lists() -> None:
    import torch
    tokens = [151643, 4294967295] + list(range(2000, 2000 + 510))
    hasher = TokenHasher(256)
    expected = hasher.hash_chunks(tokens)
    assert hasher.hash_chunks(torch.tensor(tokens, dtype=torch.int64)) == expected
    small = list(range(512))
    for dtype in (torch.int32, torch.int16, torch.int64):
        assert hasher.hash_chunks(torch.tensor(small, dtype=dtype)) == hasher.hash_chunks(small)
    assert hasher.hash_chunks(torch.tensor(tokens)[::1], 1, prefix=expected[0]) == expected[1:]
    strided = torch.tensor(tokens * 2)[::2]
    assert hasher.hash_chunks(strided) == hasher.hash_chunks((tokens * 2)[::2])
    assert pack_tokens(torch.tensor([], dtype=torch.int64)) == b""


def test_torch_bad_tokens() -> None:
    import torch
    hasher = TokenHasher(2)
    cases = [
        (torch.tensor([1, -1]), "token_ids[1] = -1"),
        (torch.tensor([1, 2**32]), "token_ids[1] = 4294967296"),
        (torch.tensor([1.0, 2.0]), "integer dtype"),
        (torch.tensor([True, False]), "integer dtype"),
        (torch.tensor([[1, 2]]), "1-D"),
        (torch.tensor(5), "1-D"),
    ]
    for tensor, message in cases:
        with pytest.raises(InvalidTokenError, match=message.replace("[", r"\[").replace("]", r"\]")):
            hasher.hash_chunks(tensor)


@pytest.mark.parametrize(
    ("tokens", "index"),
    [([1, -1], 1), ([2**32, 1], 0), ([1, 2, 1.5, 4], 2), ([1, None], 1), ([0, "1"], 1), ((3, -3), 1)],
)
def test_bad_tokens_are_named(tokens: list, index: int) -> None:
    with pytest.raises(InvalidTokenError, match=rf"token_ids\[{index}\]"):
        TokenHasher(2).hash_chunks(tokens)
    with pytest.raises(InvalidTokenError):
        pack_tokens(tokens)


@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20), st.data())
def test_every_out_of_range_token_is_rejected(tokens: list[int], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(tokens) - 1))
    tokens[index] = data.draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32)))
    with pytest.raises(InvalidTokenError, match=rf"token_ids\[{index}\]"):
        pack_tokens(tokens)


def test_tokens_outside_the_hashed_chunks_are_not_inspected() -> None:
    # Only the packed range is checked (callers that hold the whole list, like sessions, pack it all).
    assert TokenHasher(2).hash_chunks([1, 2, -1]) == TokenHasher(2).hash_chunks([1, 2])


@pytest.mark.parametrize("tokens", ["abc", b"abc", 5, None])
def test_non_sequences_are_refused(tokens: object) -> None:
    with pytest.raises(InvalidTokenError):
        token_count(tokens)
    with pytest.raises(InvalidTokenError):
        TokenHasher(2).hash_chunks(tokens)


def test_pack_is_big_endian_uint32() -> None:
    assert pack_tokens([1, 0x01020304, 2**32 - 1]) == bytes.fromhex("00000001" "01020304" "ffffffff")
    assert pack_tokens(range(3)) == bytes.fromhex("000000000000000100000002")
    assert pack_tokens([5, 6, 7], 1, 2) == bytes.fromhex("00000006")


def test_hash_packed_checks_its_input() -> None:
    with pytest.raises(TokenHashingError):
        TokenHasher(2).hash_packed(b"\x00" * 6)


# -- construction ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["builtin", "sha256_cbor", "sha256_cbor_64bit", "sha256", "xxhash"])
def test_non_deterministic_algorithms_are_refused_with_a_reason(name: str) -> None:
    with pytest.raises(UnsupportedHashAlgorithmError, match="blake3") as info:
        TokenHasher(256, name)
    assert "process" in str(info.value)


@pytest.mark.parametrize("name", ["md5", "", "BLAKE3", None])
def test_unknown_algorithms_are_refused(name: object) -> None:
    with pytest.raises(UnsupportedHashAlgorithmError, match="supported: blake3"):
        TokenHasher(256, name)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "256"])
def test_chunk_size_must_be_a_positive_int(size: object) -> None:
    with pytest.raises(TokenHashingError):
        TokenHasher(size)  # type: ignore[arg-type]


@pytest.mark.parametrize(("start", "end"), [(-1, None), (0, -1), (1.0, None), (True, None)])
def test_chunk_indices_are_checked(start: object, end: object) -> None:
    with pytest.raises(TokenHashingError):
        TokenHasher(2).hash_chunks([1, 2, 3, 4], start, end)  # type: ignore[arg-type]


def test_hasher_describes_itself() -> None:
    hasher = TokenHasher(16)
    assert (hasher.chunk_size, hasher.algorithm) == (16, "blake3")
    assert repr(hasher) == "TokenHasher(chunk_size=16, algorithm='blake3')"


# -- benchmark ------------------------------------------------------------------------------


def test_bench_rows_are_complete_and_json_able() -> None:
    from lmcache_core.bench import hashing as bench

    rows = bench.run(repeat=3)
    assert [r["bench"] for r in rows] == [
        "hash_128k_tokens", "hash_128k_tokens_prepacked", "session_rehash_128k_cached", "session_extend_one_chunk",
    ]
    for row in rows:
        json.dumps(row)
        assert row["ms_p50"] > 0 and row["baseline_ms"] > 0 and row["ratio"] > 0
        assert row["baseline"] == "blake3 of the same bytes in one call"
    assert rows[0]["target_ms"] == 2.0 and rows[0]["tokens"] == 131072


# -- chunk_span: the one rule for token ranges → chunks ---------------------------------------------

@pytest.mark.parametrize(("start", "end", "num_tokens", "expected"), [
    (0, 0, None, (0, 0)),
    (0, 255, None, (0, 0)),       # a partial chunk is not a chunk
    (0, 256, None, (0, 1)),
    (0, 257, None, (0, 1)),       # the unaligned end's chunk is excluded
    (0, 272, None, (0, 1)),       # vLLM's prefix-cache free: chunk 0 only
    (16, 512, None, (0, 2)),      # the unaligned start's chunk is included
    (256, 512, None, (1, 2)),
    (300, 256, None, (1, 1)),     # inverted: empty
    (-5, 512, None, (0, 2)),
    (0, 1024, 600, (0, 2)),       # end clamped to the token count first
])
def test_chunk_span_boundaries(start, end, num_tokens, expected):
    from lmcache_core.hashing import chunk_span

    assert chunk_span(start, end, 256, num_tokens) == expected


@given(st.integers(-1000, 5000), st.integers(-1000, 5000), st.integers(1, 512))
@settings(max_examples=300, deadline=None)
def test_chunk_span_covers_exactly_the_chunks_that_start_in_range_and_end_by_end(start, end, chunk):
    from lmcache_core.hashing import chunk_span

    first, stop = chunk_span(start, end, chunk)
    assert first <= stop
    for c in range(first, stop):  # every chunk named ends by `end`, and the first holds `start`
        assert (c + 1) * chunk <= max(end, 0)
    assert first * chunk <= max(start, 0) < (first + 1) * chunk
