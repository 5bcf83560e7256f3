"""KV checksums (POST /cache/checksums, GET /kvcache/check) and the mixed block-id format."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lmcache_core.transfer.checksums import (
    BlockIdParseError,
    ChecksumError,
    checksum_response,
    compress_block_ids,
    compute_block_checksums,
    format_block_ids,
    kvcache_checksums,
    parse_block_ids,
)
from lmcache_core.transfer.kvcache import KVCacheClosedError, RegisteredKVCache
from lmcache_core.transfer.shm import SharedSegment, ShmSegmentCache

DATA = Path(__file__).parent / "data"
GOLDEN = json.loads((DATA / "golden" / "http_cache_checksums.json").read_text())
VECTORS = json.loads((DATA / "test_vectors.json").read_text())


class Registered:
    """Layers in real shared memory, registered the way the bench registers them."""

    def __init__(self, shape: tuple[int, ...], num_layers: int, dtype: torch.dtype = torch.float16) -> None:
        self.cache = ShmSegmentCache()
        self.segments = []
        self.client = []
        fields = []
        numel = 1
        for s in shape:
            numel *= s
        for _ in range(num_layers):
            seg = SharedSegment(numel * dtype.itemsize)
            t, f = seg.tensor(shape, dtype)
            self.segments.append(seg)
            self.client.append(t)
            fields.append(f)
        infos = [{"engine_group_id": 0, "layer_indices": list(range(num_layers)), "tokens_per_block": shape[2],
                  "sw_size_tokens": -1, "extra_object_group_tag": 0, "recurrent_state": False}]
        self.kv = RegisteredKVCache.from_cpu_shm(self.cache, 1000, "test-model", 1, fields, {"kv_layout": "NHD"},
                                                 infos, 256)

    def close(self) -> None:
        self.kv.close()
        for seg in self.segments:
            seg.close()


@pytest.fixture
def bench_kv() -> Iterator[Registered]:
    """The golden bench run's KV: ``(2,64,16,2,64):float16:2``, filled as its client fills it
    (``torch.random.manual_seed(42)`` then one ``torch.randn`` per layer)."""
    reg = Registered((2, 64, 16, 2, 64), 2)
    torch.random.manual_seed(42)
    for t in reg.client:
        t.copy_(torch.randn(t.shape, dtype=torch.float16))
    yield reg
    reg.close()


def _compact(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


@pytest.mark.parametrize("case", ["ok", "ok_layerwise"])
def test_golden_responses_are_reproduced_byte_for_byte(bench_kv: Registered, case: str) -> None:
    req = GOLDEN[case]["request"]["body"]
    body = checksum_response(bench_kv.kv, req["block_ids"], req["chunk_size"], req["layerwise"])
    assert _compact(body) == GOLDEN[case]["response"]["body_text"]


def test_end_to_end_vector_checksums() -> None:
    e2e = VECTORS["end_to_end_store"]
    reg = Registered((2, 64, 16, 2, 8), e2e["layers"])
    try:
        for layer_idx, t in enumerate(reg.client):
            i = torch.arange(t.numel(), dtype=torch.int64)
            t.copy_((((i * 31 + layer_idx * 7) % 2039 - 1019).to(torch.float32) / 64).to(torch.float16)
                    .reshape(t.shape))
        req = e2e["cache_checksums_request"]
        body = checksum_response(reg.kv, list(range(32)), req["chunk_size"], req["layerwise"])
        assert body == e2e["cache_checksums_response"]
    finally:
        reg.close()


def test_seed_route_answers_ranges_as_the_mixed_string(bench_kv: Registered) -> None:
    ids = [0, 2, 3, 4, 5, 8]
    body = checksum_response(bench_kv.kv, ids, 2, ranges_as_string=True)
    assert body["block_id_ranges"] == "0,[2,5],8"
    assert body["num_chunks"] == 3 and len(body["chunk_checksums"]) == 3
    assert list(body) == ["status", "chunk_size", "num_chunks", "chunk_checksums", "layerwise", "block_id_ranges"]


def test_digest_definition_and_short_last_chunk(bench_kv: Registered) -> None:
    """MD5 over each layer's K-then-V bytes of the chunk's blocks; the last chunk may be short."""
    ids = [9, 1, 4, 7, 2]
    got = kvcache_checksums(bench_kv.kv, ids, 3)
    want = []
    for chunk in ([9, 1, 4], [7, 2]):
        md5 = hashlib.md5()
        for t in bench_kv.client:
            md5.update(bytes(t[:, chunk].contiguous().view(torch.uint8).flatten().tolist()))
        want.append(md5.hexdigest())
    assert got == want
    lw = kvcache_checksums(bench_kv.kv, ids, 3, layerwise=True)
    assert list(lw) == ["layer_0", "layer_1"] and all(len(v) == 2 for v in lw.values())


def test_checksums_follow_the_kv_contents(bench_kv: Registered) -> None:
    before = kvcache_checksums(bench_kv.kv, list(range(32)), 16)
    bench_kv.client[1][1, 20, 3, 0, 5] += 1  # one element of V, layer 1, block 20 (chunk 1)
    after = kvcache_checksums(bench_kv.kv, list(range(32)), 16)
    assert after[0] == before[0] and after[1] != before[1]


def test_bfloat16_is_hashed_as_float32() -> None:
    reg = Registered((2, 8, 16, 2, 8), 1, torch.bfloat16)
    try:
        reg.client[0].copy_(torch.linspace(-3, 3, reg.client[0].numel()).reshape(reg.client[0].shape))
        got = kvcache_checksums(reg.kv, [1, 2], 2)
        f32 = reg.client[0][:, [1, 2]].to(torch.float32).contiguous()
        assert got == [hashlib.md5(bytes(f32.view(torch.uint8).flatten().tolist())).hexdigest()]
    finally:
        reg.close()


def test_mla_uses_block_axis_zero() -> None:
    layer = torch.arange(8 * 4 * 3, dtype=torch.float32).reshape(8, 4, 3)
    got = compute_block_checksums([layer], [0], [5, 6], 2)
    assert got == [hashlib.md5(bytes(layer[[5, 6]].view(torch.uint8).flatten().tolist())).hexdigest()]


@pytest.mark.parametrize(("ids", "chunk", "status", "detail"), [
    ([], 16, 400, "block_ids is required"),
    ([0], 0, 400, "chunk_size must be positive"),
    ([0], -3, 400, "chunk_size must be positive"),
    ([0, 64], 16, 400, "out of range"),
    ([-1], 16, 400, "out of range"),
])
def test_refusals_carry_status_and_detail(bench_kv: Registered, ids: list[int], chunk: int, status: int,
                                          detail: str) -> None:
    with pytest.raises(ChecksumError) as err:
        checksum_response(bench_kv.kv, ids, chunk)
    assert err.value.status == status and detail in err.value.detail


def test_golden_error_details_match(bench_kv: Registered) -> None:
    for case in ("empty_block_ids", "bad_chunk_size"):
        req = GOLDEN[case]["request"]["body"]
        with pytest.raises(ChecksumError) as err:
            checksum_response(bench_kv.kv, req["block_ids"], req["chunk_size"], req.get("layerwise", False))
        resp = GOLDEN[case]["response"]
        assert err.value.status == resp["status"]
        assert json.dumps({"detail": err.value.detail}, separators=(",", ":")) == resp["body_text"]


def test_unregistered_kv_cannot_be_checksummed(bench_kv: Registered) -> None:
    bench_kv.kv.close()
    with pytest.raises(KVCacheClosedError):
        kvcache_checksums(bench_kv.kv, [0], 1)


def test_empty_kv_is_404() -> None:
    with pytest.raises(ChecksumError) as err:
        compute_block_checksums([], [], [0], 1)
    assert err.value.status == 404


# -- block id formats ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ids"), [
    ("0,1,2,3", [0, 1, 2, 3]),
    ("0,[2,5],8", [0, 2, 3, 4, 5, 8]),
    ("1, 2,3,[9, 12] ,17,19", [1, 2, 3, 9, 10, 11, 12, 17, 19]),
    ("[4,4]", [4]),
    ("5,3,1", [5, 3, 1]),
    ("1,,2,", [1, 2]),
    ("[9,12]3", [9, 10, 11, 12, 3]),
])
def test_parse_block_ids(text: str, ids: list[int]) -> None:
    assert parse_block_ids(text) == ids


@pytest.mark.parametrize(("text", "match"), [
    ("", "required"),
    (" , ", "required"),
    ("[1,[2,3]]", "nested"),
    ("1,2]", "unmatched"),
    ("[1,2", "unclosed"),
    ("[5,2]", "start > end"),
    ("-1", "invalid block id"),
    ("a", "invalid block id"),
    ("1.5", "invalid block id"),
    ("[1,2,3]", "invalid block id"),
    ("3[1,2]", "unexpected"),
    ("[0,2000000]", "more than"),
    ("\u0661\u0662", "invalid block id"),  # Arabic-Indic digits: int() would read 12
    ("[\uff11,3]", "invalid block id"),  # a fullwidth 1
])
def test_parse_block_ids_errors(text: str, match: str) -> None:
    with pytest.raises(BlockIdParseError, match=match) as err:
        parse_block_ids(text)
    assert err.value.status == 400


def test_compress_examples() -> None:
    assert compress_block_ids([1, 2, 3, 4, 5, 9, 10, 11, 12]) == [[1, 5], [9, 12]]
    assert compress_block_ids([5, 3, 1, 2, 4]) == [5, 3, 1, 2, 4]
    assert compress_block_ids([1, 2, 3, 4, 5, 7, 8]) == [[1, 5], 7, 8]
    assert compress_block_ids([0, 1, 2, 5, 7]) == [[0, 2], 5, 7]
    assert compress_block_ids([]) == []
    assert format_block_ids([0, 2, 3, 4, 5, 8]) == "0,[2,5],8"


@given(st.lists(st.integers(0, 200), min_size=1, max_size=60))
def test_format_then_parse_is_identity(ids: list[int]) -> None:
    assert parse_block_ids(format_block_ids(ids)) == ids


@given(st.lists(st.integers(0, 200), min_size=1, max_size=60))
def test_compress_keeps_order_and_only_merges_runs_of_three(ids: list[int]) -> None:
    packed = compress_block_ids(ids)
    flat: list[int] = []
    for item in packed:
        if isinstance(item, list):
            assert item[1] - item[0] >= 2
            flat.extend(range(item[0], item[1] + 1))
        else:
            flat.append(item)
    assert flat == ids


@given(st.text(alphabet="0123456789[], -x", max_size=30))
def test_parser_never_fails_with_anything_but_a_parse_error(text: str) -> None:
    try:
        ids = parse_block_ids(text, max_ids=10_000)
    except BlockIdParseError:
        return
    assert ids and all(isinstance(b, int) and b >= 0 for b in ids)
