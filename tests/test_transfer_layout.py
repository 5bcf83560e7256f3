"""KV layouts and block ↔ chunk-object copies, on real shared memory.

The expected object bytes are computed here straight from the §6.3 formula
(advanced indexing per format), independently of the code under test, and the
end-to-end vector proves byte identity with files LMCache wrote.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.transfer.kvcache import (
    BlockIdRangeError,
    GroupCountError,
    KVCacheClosedError,
    ObjectBufferError,
    RegisteredKVCache,
    ShortBlockIdsError,
)
from lmcache_core.transfer.layout import KVFormat, LayoutError, resolve_kv_layout
from lmcache_core.transfer.shm import SharedSegment, ShmMissingError, ShmSegmentCache

VECTORS = json.loads((Path(__file__).parent / "data" / "test_vectors.json").read_text())


def _bytes(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


class KVFixture:
    """Layers living in real /dev/shm segments (the client's side) and their registration (the server's)."""

    def __init__(self, shapes: Sequence[Sequence[int]], dtype: torch.dtype, *, shared_segment: bool = False,
                 hints: dict[str, Any] | None = None, infos: list[dict[str, Any]] | None = None,
                 chunk_size: int = 256, seed: int = 0, stack_layers: bool = True) -> None:
        self.cache = ShmSegmentCache()
        self.segments: list[SharedSegment] = []
        self.client: list[torch.Tensor] = []
        fields: list[dict[str, Any]] = []
        gen = torch.Generator().manual_seed(seed)
        if shared_segment:
            sizes = [_numel(s) for s in shapes]
            seg = SharedSegment(sum(sizes) * dtype.itemsize)
            self.segments.append(seg)
            offset = 0
            for shape, size in zip(shapes, sizes, strict=True):
                t, f = seg.tensor(shape, dtype, storage_offset=offset)
                offset += size
                self.client.append(t)
                fields.append(f)
        else:
            for shape in shapes:
                seg = SharedSegment(_numel(shape) * dtype.itemsize)
                self.segments.append(seg)
                t, f = seg.tensor(shape, dtype)
                self.client.append(t)
                fields.append(f)
        for t in self.client:  # random bits, every dtype (fp8 and bf16 included)
            t.view(torch.uint8).copy_(torch.randint(0, 256, t.view(torch.uint8).shape, dtype=torch.uint8,
                                                    generator=gen))
        self.kv = RegisteredKVCache.from_cpu_shm(self.cache, 1000, "test-model", 1, fields,
                                                 {"kv_layout": "NHD"} if hints is None else hints, infos or [],
                                                 chunk_size)
        if not stack_layers:
            self.kv = RegisteredKVCache(1000, "test-model", 1, self.kv.layers, self.kv.layout, stack_layers=False)

    def close(self) -> None:
        self.kv.close()
        self.cache.close()
        for seg in self.segments:
            seg.close()


@pytest.fixture
def make_kv() -> Iterator[Any]:
    made: list[KVFixture] = []

    def make(*args: Any, **kwargs: Any) -> KVFixture:
        fx = KVFixture(*args, **kwargs)
        made.append(fx)
        return fx

    yield make
    for fx in made:
        fx.close()


def expected_object(layers: Sequence[torch.Tensor], fmt: KVFormat, block_ids: Sequence[int]) -> torch.Tensor:
    """The §6.3 formula, per format, by plain indexing: [kv, NL, T, hidden] for one chunk."""
    idx = torch.tensor(block_ids)
    per_layer = []
    for layer in layers:
        if fmt is KVFormat.TWO_NB_BS_NH_HS:
            g = layer[:, idx]                                    # (2, n, BS, NH, HS)
        elif fmt is KVFormat.TWO_NB_NH_BS_HS:
            g = layer[:, idx].permute(0, 1, 3, 2, 4)             # (2, n, NH, BS, HS) → token-major
        elif fmt is KVFormat.NB_TWO_BS_NH_HS:
            g = layer[idx].permute(1, 0, 2, 3, 4)
        elif fmt is KVFormat.NB_TWO_NH_BS_HS:
            g = layer[idx].permute(1, 0, 3, 2, 4)
        else:                                                    # MLA (NB, BS, HS)
            g = layer[idx].unsqueeze(0)
        kv, n, bs = g.shape[0], g.shape[1], g.shape[2]
        per_layer.append(g.reshape(kv, n * bs, -1))
    return torch.stack(per_layer, dim=1).contiguous()


def _blocks(t: torch.Tensor, fmt: KVFormat, ids: Sequence[int]) -> torch.Tensor:
    """The listed blocks of a raw layer tensor (block axis per format)."""
    axis = 1 if fmt in (KVFormat.TWO_NB_BS_NH_HS, KVFormat.TWO_NB_NH_BS_HS) else 0
    return t.index_select(axis, torch.tensor(list(ids)))


# -- byte identity with LMCache --------------------------------------------------------------


def test_end_to_end_vector_is_byte_identical(make_kv: Any) -> None:
    """test_vectors.json end_to_end_store: the deterministic KV pattern gives the exact L2 file bytes."""
    e2e = VECTORS["end_to_end_store"]
    fx = make_kv([(2, 64, 16, 2, 8)] * e2e["layers"], torch.float16, hints={"kv_layout": "NHD"},
                 infos=[{"engine_group_id": 0, "layer_indices": [0, 1], "tokens_per_block": 16,
                         "sw_size_tokens": -1, "extra_object_group_tag": 0, "recurrent_state": False}],
                 chunk_size=e2e["chunk_size"])
    for layer_idx, t in enumerate(fx.client):
        i = torch.arange(t.numel(), dtype=torch.int64)
        t.copy_((((i * 31 + layer_idx * 7) % 2039 - 1019).to(torch.float32) / 64).to(torch.float16).reshape(t.shape))
    assert fx.kv.object_nbytes == 32768
    outs = [torch.full((fx.kv.object_nbytes,), 0xAB, dtype=torch.uint8) for _ in range(2)]
    assert fx.kv.gather_chunks([list(range(32))], outs) == [True, True]
    files = list(e2e["fs_l2_files"].values())  # in chunk order (hash of chunk 0, then chunk 1)
    for out, meta in zip(outs, files, strict=True):
        data = _bytes(out)
        assert len(data) == meta["size"]
        assert data[:16].hex() == meta["first_16_bytes_hex"]
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]


# -- object layout and round trips ------------------------------------------------------------

FORMAT_CASES = [
    pytest.param((2, 24, 16, 4, 8), {"kv_layout": "NHD"}, KVFormat.TWO_NB_BS_NH_HS, id="NHD"),
    pytest.param((2, 24, 4, 16, 8), {"kv_layout": "HND"}, KVFormat.TWO_NB_NH_BS_HS, id="HND"),
    pytest.param((24, 2, 16, 4, 8), {"kv_layout": "NHD"}, KVFormat.NB_TWO_BS_NH_HS, id="blocks-first-NHD"),
    pytest.param((24, 2, 4, 16, 8), {"kv_layout": "BLHNC"}, KVFormat.NB_TWO_NH_BS_HS, id="blocks-first-HND"),
    pytest.param((24, 16, 32), {"kv_layout": "NHD"}, KVFormat.MLA, id="MLA"),
    pytest.param((24, 16, 32), {}, KVFormat.MLA, id="MLA-no-hint"),
]


@pytest.mark.parametrize(("shape", "hints", "fmt"), FORMAT_CASES)
@pytest.mark.parametrize("shared_segment", [False, True], ids=["segment-per-layer", "one-segment"])
def test_gather_matches_the_formula_and_scatter_round_trips(make_kv: Any, shape: tuple[int, ...],
                                                            hints: dict[str, Any], fmt: KVFormat,
                                                            shared_segment: bool) -> None:
    fx = make_kv([shape] * 3, torch.float16, hints=hints, chunk_size=64, shared_segment=shared_segment)
    kv = fx.kv
    assert kv.layout.groups[0].fmt is fmt
    assert kv.stacked_groups() == [shared_segment]
    bpc = kv.layout.blocks_per_chunk
    assert bpc == 4
    src = [5, 1, 9, 2, 17, 3, 4, 23]            # 2 chunks, scattered blocks
    dst = [10, 11, 12, 13, 6, 7, 8, 20]         # other blocks
    outs = [torch.empty(kv.object_nbytes, dtype=torch.uint8) for _ in range(2)]
    assert kv.gather_chunks([src], outs) == [True, True]
    for c in range(2):
        want = expected_object(fx.client, fmt, src[c * bpc:(c + 1) * bpc])
        assert _bytes(outs[c]) == _bytes(want)
        assert list(want.shape) == [kv.layout.kv_size, 3, 64, kv.layout.hidden]
    before = [_bytes(t) for t in fx.client]
    kv.scatter_chunks([dst], outs)
    for t in fx.client:  # the client's pages now hold the same blocks at the new ids
        assert _bytes(_blocks(t, fmt, dst)) == _bytes(_blocks(t, fmt, src))
    untouched = sorted(set(range(24)) - set(dst))
    for t, old in zip(fx.client, before, strict=True):
        old_t = torch.frombuffer(bytearray(old), dtype=torch.float16).reshape(t.shape)
        assert _bytes(_blocks(t, fmt, untouched)) == _bytes(_blocks(old_t, fmt, untouched))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float8_e4m3fn, torch.uint8])
def test_every_kv_dtype_is_copied_bit_exactly(make_kv: Any, dtype: torch.dtype) -> None:
    fx = make_kv([(2, 8, 16, 2, 8)] * 2, dtype, chunk_size=32)
    out = torch.empty(fx.kv.object_nbytes, dtype=torch.uint8)
    assert fx.kv.gather([[3, 6]], out)
    want = expected_object([t.view(torch.uint8) if dtype.itemsize == 1 else t for t in fx.client],
                           KVFormat.TWO_NB_BS_NH_HS, [3, 6])
    assert _bytes(out) == _bytes(want)
    fx.kv.scatter(out, [[0, 1]])
    for t in fx.client:
        assert _bytes(t[:, [0, 1]]) == _bytes(t[:, [3, 6]])


def test_per_plane_and_stacked_paths_agree(make_kv: Any) -> None:
    stacked = make_kv([(2, 16, 16, 2, 8)] * 4, torch.float16, shared_segment=True, chunk_size=64, seed=3)
    planes = make_kv([(2, 16, 16, 2, 8)] * 4, torch.float16, shared_segment=True, chunk_size=64, seed=3,
                     stack_layers=False)
    assert stacked.kv.stacked_groups() == [True] and planes.kv.stacked_groups() == [False]
    ids = [[15, 0, 7, 3, 8, 9, 10, 1]]
    a = [torch.empty(stacked.kv.object_nbytes, dtype=torch.uint8) for _ in range(2)]
    b = [torch.empty(planes.kv.object_nbytes, dtype=torch.uint8) for _ in range(2)]
    stacked.kv.gather_chunks(ids, a)
    planes.kv.gather_chunks(ids, b)
    assert [_bytes(x) for x in a] == [_bytes(x) for x in b]


def test_objects_in_an_arena_like_buffer_with_an_offset(make_kv: Any) -> None:
    """L1 hands out uint8 views at aligned offsets of one big tensor."""
    fx = make_kv([(2, 8, 16, 2, 8)] * 2, torch.float16, chunk_size=32)
    n = fx.kv.object_nbytes
    arena = torch.zeros(4096 + 3 * n, dtype=torch.uint8)
    views = [arena[4096 + k * n: 4096 + (k + 1) * n] for k in range(3)]
    fx.kv.gather_chunks([[1, 2, 3, 4, 5, 6]], views)
    assert _bytes(views[1]) == _bytes(expected_object(fx.client, KVFormat.TWO_NB_BS_NH_HS, [3, 4]))
    assert int(arena[:4096].sum()) == 0


# -- STORE / RETRIEVE rules --------------------------------------------------------------------


@pytest.mark.parametrize(("skip", "first_written_block"), [(0, 0), (15, 0), (16, 1), (40, 2), (64, 4), (70, 4),
                                                           (96, 6), (128, 8), (1000, 8)])
def test_skip_first_n_tokens_leaves_whole_blocks_below_it_alone(make_kv: Any, skip: int,
                                                                 first_written_block: int) -> None:
    """LMCache floors skip to whole blocks: blocks j < skip // BS of the range are not written."""
    fx = make_kv([(2, 16, 16, 2, 8)] * 2, torch.float16, chunk_size=64)  # bpc 4, 2 chunks = 8 blocks
    kv = fx.kv
    src, dst = [0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15]
    objs = [torch.empty(kv.object_nbytes, dtype=torch.uint8) for _ in range(2)]
    kv.gather_chunks([src], objs)
    before = [t.clone() for t in fx.client]
    kv.scatter_chunks([dst], objs, skip_first_n_tokens=skip)
    for t, old in zip(fx.client, before, strict=True):
        for j, block in enumerate(dst):
            if j < first_written_block:
                assert torch.equal(t[:, block].view(torch.int16), old[:, block].view(torch.int16)), (skip, j)
            else:
                assert torch.equal(t[:, block].view(torch.int16), old[:, src[j]].view(torch.int16)), (skip, j)


def test_all_null_block_chunks_are_not_stored(make_kv: Any) -> None:
    fx = make_kv([(2, 16, 16, 2, 8)] * 2, torch.float16, chunk_size=64)
    kv = fx.kv
    ids = [[0, 0, 0, 0, 5, 0, 6, 7, 0, 0, 0, 0]]  # chunk 0 and 2 all null; chunk 1 partly null
    assert kv.null_chunk_mask(ids, 3) == [True, False, True]
    outs = [torch.full((kv.object_nbytes,), 0xEE, dtype=torch.uint8) for _ in range(3)]
    assert kv.gather_chunks(ids, outs) == [False, True, False]
    assert bool((outs[0] == 0xEE).all()) and bool((outs[2] == 0xEE).all())
    assert _bytes(outs[1]) == _bytes(expected_object(fx.client, KVFormat.TWO_NB_BS_NH_HS, [5, 0, 6, 7]))
    kv.null_block_id = 5  # --null-block-id
    assert kv.null_chunk_mask([[5] * 4], 1) == [True]


def test_none_outputs_are_skipped(make_kv: Any) -> None:
    fx = make_kv([(2, 16, 16, 2, 8)] * 2, torch.float16, chunk_size=64)
    out = torch.empty(fx.kv.object_nbytes, dtype=torch.uint8)
    assert fx.kv.gather_chunks([list(range(1, 9))], [None, out]) == [False, True]
    assert _bytes(out) == _bytes(expected_object(fx.client, KVFormat.TWO_NB_BS_NH_HS, [5, 6, 7, 8]))
    before = [t.clone() for t in fx.client]
    fx.kv.scatter_chunks([list(range(8, 16))], [None, out])
    assert torch.equal(fx.client[0][:, 8:12].view(torch.int16), before[0][:, 8:12].view(torch.int16))
    assert torch.equal(fx.client[0][:, 12:16].view(torch.int16), before[0][:, 5:9].view(torch.int16))


def test_short_block_ids_fail_before_anything_is_copied(make_kv: Any) -> None:
    fx = make_kv([(2, 16, 16, 2, 8)] * 2, torch.float16, chunk_size=64)
    kv = fx.kv
    outs = [torch.full((kv.object_nbytes,), 7, dtype=torch.uint8) for _ in range(2)]
    with pytest.raises(ShortBlockIdsError, match="need 8"):
        kv.gather_chunks([[1, 2, 3, 4, 5, 6, 7]], outs)
    assert all(bool((o == 7).all()) for o in outs)
    before = [t.clone() for t in fx.client]
    with pytest.raises(ShortBlockIdsError):
        kv.scatter_chunks([[1, 2, 3]], outs)
    assert all(torch.equal(t.view(torch.int16), b.view(torch.int16)) for t, b in zip(fx.client, before, strict=True))
    # Extra ids past the range are ignored, as LMCache slices them off.
    assert kv.gather_chunks([list(range(10))], outs) == [True, True]


@pytest.mark.parametrize(("block_ids", "error"), [
    ([], GroupCountError),
    ([[1, 2, 3, 4], [1, 2, 3, 4]], GroupCountError),
    ([[1, 2, 3, 16]], BlockIdRangeError),
    ([[-1, 2, 3, 4]], BlockIdRangeError),
])
def test_bad_block_ids(make_kv: Any, block_ids: list[list[int]], error: type[Exception]) -> None:
    fx = make_kv([(2, 16, 16, 2, 8)] * 2, torch.float16, chunk_size=64)
    out = torch.empty(fx.kv.object_nbytes, dtype=torch.uint8)
    with pytest.raises(error):
        fx.kv.gather_chunks(block_ids, [out])
    with pytest.raises(error):
        fx.kv.scatter_chunks(block_ids, [out])


def test_bad_object_buffers(make_kv: Any) -> None:
    fx = make_kv([(2, 16, 16, 2, 8)] * 2, torch.float16, chunk_size=64)
    n = fx.kv.object_nbytes
    ids = [[1, 2, 3, 4]]
    with pytest.raises(ObjectBufferError, match="bytes"):
        fx.kv.gather(ids, torch.empty(n - 1, dtype=torch.uint8))
    with pytest.raises(ObjectBufferError, match="contiguous"):
        fx.kv.gather(ids, torch.empty(2 * n, dtype=torch.uint8)[::2])
    with pytest.raises(ObjectBufferError, match="viewed"):
        fx.kv.gather(ids, torch.empty(n + 1, dtype=torch.uint8)[1:])  # odd offset for fp16
    typed = torch.empty(n // 2, dtype=torch.float16)  # any contiguous dtype is taken as bytes
    assert fx.kv.gather(ids, typed)


def test_unregistered_cache_refuses_copies_and_unmaps(make_kv: Any) -> None:
    fx = make_kv([(2, 16, 16, 2, 8)] * 2, torch.float16, chunk_size=64)
    assert len(fx.cache.segments()) == 2
    fx.kv.close()
    fx.kv.close()
    assert fx.cache.segments() == []
    with pytest.raises(KVCacheClosedError):
        fx.kv.gather([[1, 2, 3, 4]], torch.empty(fx.kv.object_nbytes, dtype=torch.uint8))
    with pytest.raises(KVCacheClosedError):
        _ = fx.kv.layers


def test_failed_registration_maps_nothing() -> None:
    cache = ShmSegmentCache()
    seg = SharedSegment(2 * 16 * 16 * 2 * 8 * 2)
    try:
        _, good = seg.tensor((2, 16, 16, 2, 8), torch.float16)
        missing = dict(good, shm_name="/lmcache_definitely_missing_segment")
        with pytest.raises(ShmMissingError):
            RegisteredKVCache.from_cpu_shm(cache, 1, "m", 1, [good, missing], {"kv_layout": "NHD"}, [], 256)
        assert cache.segments() == []
        bad_layout = dict(good, shape=[2, 16, 16, 16], stride=[4096, 256, 16, 1])  # rank 4
        with pytest.raises(LayoutError):
            RegisteredKVCache.from_cpu_shm(cache, 1, "m", 1, [good, bad_layout], {"kv_layout": "NHD"}, [], 256)
        assert cache.segments() == []
    finally:
        cache.close()
        seg.close()


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip_any_block_permutation(data: st.DataObject) -> None:
    """Any distinct src/dst ids, any skip: dst blocks at or past the skip get src's bytes, the rest keep theirs."""
    nb, chunks, bpc = 24, data.draw(st.integers(1, 3)), 2
    fmt_case = data.draw(st.sampled_from([((2, nb, 8, 2, 4), "NHD"), ((2, nb, 2, 8, 4), "HND"), ((nb, 8, 4), "NHD")]))
    perm = data.draw(st.permutations(range(nb)))
    src, dst = list(perm[:chunks * bpc]), list(perm[chunks * bpc: 2 * chunks * bpc])
    skip = data.draw(st.integers(0, chunks * 16 + 8))
    fx = KVFixture([fmt_case[0]] * 2, torch.float16, hints={"kv_layout": fmt_case[1]}, chunk_size=16,
                   shared_segment=data.draw(st.booleans()), seed=data.draw(st.integers(0, 99)))
    try:
        fmt = fx.kv.layout.groups[0].fmt
        objs = [torch.empty(fx.kv.object_nbytes, dtype=torch.uint8) for _ in range(chunks)]
        fx.kv.gather_chunks([src], objs)
        before = [t.clone() for t in fx.client]
        fx.kv.scatter_chunks([dst], objs, skip_first_n_tokens=skip)
        for t, old in zip(fx.client, before, strict=True):
            for j, (s, d) in enumerate(zip(src, dst, strict=True)):
                written = j >= skip // 8  # block size 8 in every case
                want = _blocks(old, fmt, [s]) if written else _blocks(old, fmt, [d])
                assert _bytes(_blocks(t, fmt, [d])) == _bytes(want)
    finally:
        fx.close()


# -- several kernel groups ----------------------------------------------------------------------


def test_two_kernel_groups_concatenate_in_group_order(make_kv: Any) -> None:
    """Layers 0,2 (NH 2) and 1 (NH 4) form two groups; the object is group 0's block, then group 1's."""
    shapes = [(2, 16, 16, 2, 8), (2, 16, 16, 4, 8), (2, 16, 16, 2, 8)]
    infos = [{"engine_group_id": 0, "layer_indices": [0, 2], "tokens_per_block": 16, "sw_size_tokens": -1},
             {"engine_group_id": 1, "layer_indices": [1], "tokens_per_block": 16, "sw_size_tokens": -1}]
    fx = make_kv(shapes, torch.float16, infos=infos, chunk_size=32)
    layout = fx.kv.layout
    assert layout.num_groups == 2 and layout.num_layers == 3
    assert [g.layer_indices for g in layout.groups] == [(0, 2), (1,)]
    assert layout.object_nbytes == (2 * 2 * 32 * 16 + 2 * 1 * 32 * 32) * 2
    with pytest.raises(LayoutError):
        _ = layout.object_shape
    out = torch.empty(layout.object_nbytes, dtype=torch.uint8)
    ids = [[3, 4], [7, 1]]
    assert fx.kv.gather(ids, out)
    want = _bytes(expected_object([fx.client[0], fx.client[2]], KVFormat.TWO_NB_BS_NH_HS, [3, 4])) + _bytes(
        expected_object([fx.client[1]], KVFormat.TWO_NB_BS_NH_HS, [7, 1]))
    assert _bytes(out) == want
    fx.kv.scatter(out, [[10, 11], [12, 13]])
    assert _bytes(fx.client[1][:, [12, 13]]) == _bytes(fx.client[1][:, [7, 1]])
    assert _bytes(fx.client[2][:, [10, 11]]) == _bytes(fx.client[2][:, [3, 4]])
    with pytest.raises(GroupCountError):
        fx.kv.gather([[3, 4]], out)


# -- layout resolution --------------------------------------------------------------------------


def _t(shape: Sequence[int], dtype: torch.dtype = torch.float16) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype)


def test_bench_default_layout() -> None:
    layout = resolve_kv_layout([_t((2, 64, 16, 8, 128))] * 32, {"kv_layout": "NHD"},
                               [{"engine_group_id": 0, "layer_indices": list(range(32)), "tokens_per_block": 16,
                                 "sw_size_tokens": -1, "extra_object_group_tag": 0, "recurrent_state": False}], 256)
    assert (layout.kv_size, layout.num_layers, layout.tokens_per_block, layout.num_heads, layout.head_size) == (
        2, 32, 16, 8, 128)
    assert layout.hidden == 1024 and layout.dtype == torch.float16 and layout.blocks_per_chunk == 16
    assert layout.object_shape == (2, 32, 256, 1024)
    assert layout.object_nbytes == 2 * 32 * 256 * 1024 * 2
    assert layout.block_axes == (1,) * 32
    assert layout.describe()["groups"][0]["object_shape"] == [2, 32, 256, 1024]


def test_mla_layout() -> None:
    layout = resolve_kv_layout([_t((64, 16, 576), torch.bfloat16)] * 2, {}, [], 256)
    assert (layout.kv_size, layout.num_heads, layout.head_size, layout.hidden) == (1, 1, 576, 576)
    assert layout.object_shape == (1, 2, 256, 576) and layout.block_axes == (0, 0)


def test_missing_hint_defaults_to_hnd_like_lmcache_on_cpu() -> None:
    layout = resolve_kv_layout([_t((2, 64, 16, 2, 8))], {}, [], 256)
    assert layout.kv_layout == "HND"
    assert (layout.tokens_per_block, layout.num_heads) == (2, 16)  # the shape read as (2, NB, NH, BS, HS)
    assert resolve_kv_layout([_t((2, 64, 16, 2, 8))], {}, [], 256, default_kv_layout="NHD").tokens_per_block == 16


def test_missing_hint_that_contradicts_the_group_info_is_refused() -> None:
    info = [{"engine_group_id": 0, "layer_indices": [0], "tokens_per_block": 16, "sw_size_tokens": -1}]
    with pytest.raises(LayoutError, match="kv_layout hint is missing"):
        resolve_kv_layout([_t((2, 64, 16, 2, 8))], {}, info, 256)
    assert resolve_kv_layout([_t((2, 64, 16, 2, 8))], {"kv_layout": "NHD"}, info, 256).tokens_per_block == 16


@pytest.mark.parametrize(("layers", "hints", "infos", "chunk", "match"), [
    ([_t((64, 16, 2, 16))], {"kv_layout": "NHD"}, [], 256, "rank-4"),
    ([_t((64, 16, 132), torch.uint8)], {}, [], 256, "indexer"),
    ([_t((64, 16))], {}, [], 256, "rank 2"),
    ([_t((3, 64, 16, 2, 8))], {"kv_layout": "NHD"}, [], 256, "K/V axis"),
    ([_t((2, 64, 16, 2, 8))], {"kv_layout": "XYZ"}, [], 256, "kv_layout"),
    ([_t((2, 64, 16, 2, 8))], {"kv_layout": "NHD"}, [], 200, "multiple of 16"),
    ([_t((2, 64, 16, 2, 8))], {"kv_layout": "NHD"}, [], 0, "positive"),
    ([], {}, [], 256, "no KV layer"),
    ([_t((2, 64, 16, 2, 8)), _t((2, 64, 16, 4, 8))], {"kv_layout": "NHD"},
     [{"engine_group_id": 0, "layer_indices": [0, 1], "tokens_per_block": 16}], 256, "engine group infos"),
    ([_t((2, 64, 16, 2, 8))] * 2, {"kv_layout": "NHD"},
     [{"engine_group_id": 0, "layer_indices": [0, 5]}], 256, "outside"),
    ([_t((2, 64, 16, 2, 8))], {"kv_layout": "NHD"},
     [{"engine_group_id": 0, "layer_indices": [0], "tokens_per_block": 16, "sw_size_tokens": 120}], 256,
     "sliding window of 120 tokens is not a multiple"),
    ([_t((2, 64, 16, 2, 8)), _t((2, 32, 16, 2, 8))], {"kv_layout": "NHD"}, [], 256, "block counts"),
    ([_t((2, 64, 16, 2, 8), torch.complex64)], {"kv_layout": "NHD"}, [], 256, "not a KV dtype"),
])
def test_unsupported_layouts_are_refused(layers: list[torch.Tensor], hints: dict[str, Any], infos: list[Any],
                                         chunk: int, match: str) -> None:
    with pytest.raises(LayoutError, match=match):
        resolve_kv_layout(layers, hints, infos, chunk)


def test_layers_no_group_lists_are_left_out_of_the_object() -> None:
    layers = [_t((2, 64, 16, 2, 8))] * 3
    layout = resolve_kv_layout(layers, {"kv_layout": "NHD"}, [{"engine_group_id": 0, "layer_indices": [0, 2]}], 256)
    assert layout.num_layers == 2 and layout.groups[0].layer_indices == (0, 2)
    assert len(layout.block_axes) == 3  # checksums still cover every registered tensor


def test_sliding_window_of_whole_chunks_is_accepted() -> None:
    info = [{"engine_group_id": 0, "layer_indices": [0], "tokens_per_block": 16, "sw_size_tokens": 1024}]
    assert resolve_kv_layout([_t((2, 64, 16, 2, 8))], {"kv_layout": "NHD"}, info, 256).groups[0].sw_size_tokens == 1024


def test_unregister_during_copies_on_other_threads_is_safe() -> None:
    """Copies racing close() either finish on still-mapped memory or raise KVCacheClosedError; nothing crashes."""
    import threading

    fx = KVFixture([(2, 64, 16, 4, 32)] * 8, torch.float16, chunk_size=256)
    kv = fx.kv
    outs = [torch.empty(kv.object_nbytes, dtype=torch.uint8) for _ in range(4)]
    ids = [list(range(64))]
    started = threading.Event()
    results: list[str] = []

    def worker() -> None:
        for n in range(200):  # bounded
            try:
                kv.gather_chunks(ids, outs)
                kv.scatter_chunks(ids, outs)
            except KVCacheClosedError:
                results.append("closed")
                return
            if n == 0:
                started.set()
        results.append("finished")

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert started.wait(timeout=60)
        kv.close()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert len(results) == 3 and set(results) <= {"closed", "finished"}
        assert fx.cache.segments() == []
    finally:
        fx.close()


def test_from_tensors_applies_lmcache_default_for_this_server() -> None:
    """No hint: HND on a CPU-only torch (what LMCache's CPU server assumes), NHD where CUDA works."""
    from lmcache_core.transfer.cuda_ipc import cuda_available

    layers = [torch.zeros(2, 8, 16, 2, 8, dtype=torch.float16)]
    kv = RegisteredKVCache.from_tensors(5, "m", 1, layers, {}, [], 64)
    assert kv.layout.kv_layout == ("NHD" if cuda_available() else "HND")
    assert RegisteredKVCache.from_tensors(5, "m", 1, layers, {"kv_layout": "NHD"}, [], 64).layout.tokens_per_block == 16
    kv.close()


SW_SHAPES = [(2, 32, 16, 2, 8), (2, 32, 16, 4, 8)]  # layer 0 full attention, layer 1 sliding window
SW_INFOS = [{"engine_group_id": 0, "layer_indices": [0], "tokens_per_block": 16, "sw_size_tokens": -1},
            {"engine_group_id": 1, "layer_indices": [1], "tokens_per_block": 16, "sw_size_tokens": 32}]


def test_sub_chunk_sliding_window_keeps_each_chunks_trailing_window(make_kv: Any) -> None:
    """Window 32 tokens, chunk 64, block 16: the window group's part holds the last 2 of each chunk's 4 blocks."""
    fx = make_kv(SW_SHAPES, torch.float16, infos=SW_INFOS, chunk_size=64)
    layout = fx.kv.layout
    full, sw = layout.groups
    assert (full.kept_blocks, full.object_shape) == (4, (2, 1, 64, 16))
    assert (sw.blocks_per_chunk, sw.kept_blocks, sw.object_shape) == (4, 2, (2, 1, 32, 32))
    assert layout.object_nbytes == (2 * 64 * 16 + 2 * 32 * 32) * 2
    ids = [[1, 2, 3, 4, 5, 6, 7, 8], [0, 0, 9, 10, 0, 0, 11, 12]]  # out-of-window blocks are null
    objs = [torch.empty(layout.object_nbytes, dtype=torch.uint8) for _ in range(2)]
    assert fx.kv.gather_chunks(ids, objs) == [True, True]
    for c, (full_ids, sw_ids) in enumerate((([1, 2, 3, 4], [9, 10]), ([5, 6, 7, 8], [11, 12]))):
        want = _bytes(expected_object([fx.client[0]], KVFormat.TWO_NB_BS_NH_HS, full_ids)) + _bytes(
            expected_object([fx.client[1]], KVFormat.TWO_NB_BS_NH_HS, sw_ids))
        assert _bytes(objs[c]) == want
    before = [t.clone() for t in fx.client]
    # Skip 48 tokens = 3 blocks: full group writes blocks from index 3 on; the window group skips
    # 3 - (4 - 2) = 1 of chunk 0's kept blocks. Chunk 1 is written whole.
    dst = [[13, 14, 15, 16, 17, 18, 19, 20], [0, 0, 21, 22, 0, 0, 23, 24]]
    fx.kv.scatter_chunks(dst, objs, skip_first_n_tokens=48)
    full_t, sw_t = fx.client
    old_full, old_sw = before
    assert _bytes(full_t[:, [13, 14, 15]]) == _bytes(old_full[:, [13, 14, 15]])  # skipped
    assert _bytes(full_t[:, [16, 17, 18, 19, 20]]) == _bytes(old_full[:, [4, 5, 6, 7, 8]])
    assert _bytes(sw_t[:, 21]) == _bytes(old_sw[:, 21])  # skipped
    assert _bytes(sw_t[:, [22, 23, 24]]) == _bytes(old_sw[:, [10, 11, 12]])
    assert _bytes(sw_t[:, 0]) == _bytes(old_sw[:, 0])  # the null block is never written
    assert fx.kv.null_chunk_mask([[0] * 8, [0] * 8], 2) == [True, True]


def test_full_sw_kv_stores_every_block() -> None:
    layers = [torch.zeros(s, dtype=torch.float16) for s in SW_SHAPES]
    layout = resolve_kv_layout(layers, {"kv_layout": "NHD"}, SW_INFOS, 64, full_sw_kv=True)
    assert layout.groups[1].kept_blocks == 4 and layout.groups[1].object_shape == (2, 1, 64, 32)


def test_transfer_benchmark_runs_small_and_verifies_its_copies() -> None:
    """A tiny run of ``python -m lmcache_core.bench.transfer``: rows are JSON-able and the copies checked."""
    from lmcache_core.bench.transfer import run

    rows = run(num_layers=2, num_blocks=64, block_size=16, num_heads=2, head_size=8, chunk_size=64, chunks=4,
               repeats=1)
    assert [(r["case"], r["segments"], r["block_pattern"]) for r in rows] == [
        ("store_gather", "per_layer", "random"), ("retrieve_scatter", "per_layer", "random"),
        ("store_gather", "per_layer", "contiguous"), ("retrieve_scatter", "per_layer", "contiguous"),
        ("store_gather", "one", "random"), ("retrieve_scatter", "one", "random")]
    assert all(r["verified"] and r["gbps"] > 0 and r["baseline_gbps"] > 0 for r in rows)
    assert [r["path"] for r in rows[::2]] == ["per_plane", "per_plane", "stacked"]
    json.dumps(rows)
