"""The L1 arena (lazy virtual memory, shm backing) and the slab allocator."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from itertools import pairwise

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from lmcache_core.storage.arena import (
    Allocation,
    Arena,
    ArenaError,
    DoubleFreeError,
    SlabAllocator,
    round_up,
)

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def unique_shm_name() -> str:
    return f"lmcache-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# -- Arena -------------------------------------------------------------------------------


def test_round_up() -> None:
    assert round_up(0, 4096) == 0
    assert round_up(1, 4096) == 4096
    assert round_up(4096, 4096) == 4096
    assert round_up(4097, 4096) == 8192


def test_views_alias_the_arena_without_copying() -> None:
    with Arena(16 * MiB) as arena:
        assert arena.tensor.dtype == torch.uint8 and arena.tensor.numel() == 16 * MiB
        v = arena.view(8192, 100)
        v.fill_(0xAB)
        assert arena.tensor[8192:8292].eq(0xAB).all()
        assert arena.tensor[8191] == 0 and arena.tensor[8292] == 0
        assert v.data_ptr() == arena.base_ptr + 8192
        assert arena.memory_desc()["size"] == 16 * MiB


def test_view_outside_arena_is_refused() -> None:
    with Arena(1 * MiB) as arena:
        with pytest.raises(ArenaError):
            arena.view(MiB - 10, 11)
        with pytest.raises(ArenaError):
            arena.view(-1, 1)


def test_invalid_sizes_are_refused() -> None:
    with pytest.raises(ArenaError):
        Arena(0)
    with pytest.raises(ArenaError):
        Arena(MiB, pin_chunk_bytes=0)


def test_pinning_is_skipped_cleanly_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: pinning is real here")
    with Arena(4 * MiB, pin=True) as arena:
        assert not arena.pinned
        arena.ensure_pinned(4 * MiB)  # a no-op, must not raise
        assert arena.pinned_bytes == 0


def test_close_with_a_live_view_releases_pages_and_does_not_crash() -> None:
    arena = Arena(8 * MiB)
    v = arena.view(0, 4096)
    v.fill_(7)
    arena.close()
    arena.close()  # idempotent
    assert arena.closed
    # The range stays mapped while the view lives; its pages were dropped, so it reads zeros.
    assert int(v.sum()) == 0
    with pytest.raises(ArenaError):
        arena.view(0, 1)
    with pytest.raises(ArenaError):
        _ = arena.tensor


def strict_overcommit() -> bool:
    """vm.overcommit_memory=2 ignores MAP_NORESERVE, so a huge lazy arena cannot be mapped there."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "2"
    except OSError:
        return False


@pytest.mark.skipif(strict_overcommit(), reason="strict overcommit accounting (vm.overcommit_memory=2)")
def test_large_arena_costs_no_memory_until_written() -> None:
    """A 64 GiB arena on a smaller machine: reserving and allocating touch nothing; writing does."""
    before = rss_bytes()
    arena = Arena(64 * GiB)
    try:
        alloc = SlabAllocator(arena.size, 4096)
        objs = alloc.allocate(1 * MiB, 4096)  # 4 GiB of objects, not yet written
        assert objs is not None
        after_alloc = rss_bytes()
        assert after_alloc - before < 64 * MiB, "reserving/allocating must not commit memory"
        for a in objs[:256]:  # write 256 MiB
            arena.view(a.offset, a.nbytes).fill_(1)
        grown = rss_bytes() - after_alloc
        assert 250 * MiB <= grown < 256 * MiB + 64 * MiB
    finally:
        arena.close()


def test_shm_arena_is_shared_with_an_attached_mapping_and_another_process() -> None:
    name = unique_shm_name()
    path = f"/dev/shm/{name}"
    arena = Arena(32 * MiB, shm_name=name)
    try:
        assert os.path.exists(path) and os.path.getsize(path) == 32 * MiB
        arena.view(4096, 5).copy_(torch.tensor(list(b"hello"), dtype=torch.uint8))
        other = Arena.attach(name)
        assert other.size == 32 * MiB
        assert bytes(other.view(4096, 5).tolist()) == b"hello"
        other.view(8192, 3).fill_(9)
        assert arena.view(8192, 3).eq(9).all()
        other.close()
        assert os.path.exists(path), "an attached (non-owner) arena must not unlink"
        code = (
            "import mmap,os,sys;"
            f"fd=os.open({path!r},os.O_RDWR);m=mmap.mmap(fd,0);"
            "sys.stdout.write(m[4096:4101].decode());m[0:2]=b'ok'"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout == "hello"
        assert bytes(arena.view(0, 2).tolist()) == b"ok"
    finally:
        arena.close()
    assert not os.path.exists(path), "the owner unlinks on close"


def test_shm_name_clash_and_bad_names_are_refused() -> None:
    name = unique_shm_name()
    with Arena(MiB, shm_name=name), pytest.raises(ArenaError, match="already exists"):
        Arena(MiB, shm_name=name)
    for bad in ("", "/", "a/b", ".."):
        with pytest.raises(ArenaError):
            Arena(MiB, shm_name=bad)
    with pytest.raises(ArenaError):
        Arena.attach(unique_shm_name())


def test_shm_arena_is_lazy_too() -> None:
    name = unique_shm_name()
    with Arena(8 * GiB, shm_name=name) as arena:
        st_ = os.stat(f"/dev/shm/{name}")
        assert st_.st_blocks * 512 < MiB, "ftruncate must leave the file sparse"
        arena.view(GiB, MiB).fill_(1)
        st_ = os.stat(f"/dev/shm/{name}")
        assert MiB <= st_.st_blocks * 512 < 8 * MiB


# -- SlabAllocator ----------------------------------------------------------------------


def test_allocations_are_aligned_and_disjoint() -> None:
    alloc = SlabAllocator(64 * MiB, 4096, slab_bytes=MiB)
    objs = alloc.allocate(5000, 10)
    assert objs is not None and len(objs) == 10
    assert all(a.offset % 4096 == 0 and a.nbytes == 5000 for a in objs)
    starts = sorted(a.offset for a in objs)
    assert all(b - a >= 8192 for a, b in pairwise(starts))
    assert alloc.usage() == (10 * 8192, 64 * MiB)
    assert alloc.check() == []


def test_bad_alignment_is_refused() -> None:
    with pytest.raises(ValueError):
        SlabAllocator(MiB, 3000)
    with pytest.raises(ValueError):
        SlabAllocator(1000, 4096)


def test_batch_is_all_or_nothing() -> None:
    alloc = SlabAllocator(1 * MiB, 4096, slab_bytes=64 * KiB)
    first = alloc.allocate(4096, 200)
    assert first is not None
    before = (alloc.usage(), alloc.stats()["carved_bytes"])
    assert alloc.allocate(4096, 57) is None  # 56 slots left
    assert (alloc.usage(), alloc.stats()["carved_bytes"]) == before
    assert alloc.failed_allocations == 1
    assert alloc.check() == []
    assert alloc.allocate(4096, 56) is not None
    assert alloc.usage()[0] == MiB


def test_allocate_prefix_returns_what_fits() -> None:
    alloc = SlabAllocator(1 * MiB, 4096, slab_bytes=64 * KiB)
    got = alloc.allocate_prefix(4096, 300)
    assert len(got) == 256
    assert alloc.allocate_prefix(4096, 1) == []
    assert alloc.allocate(4096, 0) == [] and alloc.allocate_prefix(4096, 0) == []
    assert alloc.check() == []


def test_allocate_offsets_is_the_primitive_behind_both() -> None:
    alloc = SlabAllocator(1 * MiB, 4096, slab_bytes=64 * KiB)
    offsets = alloc.allocate_offsets(5000, 10)
    assert offsets is not None and len(set(offsets)) == 10 and all(o % 8192 == 0 for o in offsets)
    assert alloc.allocate_offsets(4096, 1000) is None
    # The 10 objects of 8 KiB took two 64 KiB slabs (8 slots each): 896 KiB are left.
    assert len(alloc.allocate_offsets(4096, 1000, partial=True) or []) == 224
    alloc.free(Allocation(o, 5000) for o in offsets)
    assert alloc.usage()[0] == 224 * 4096
    assert alloc.check() == []


def test_double_free_and_foreign_offsets_raise() -> None:
    alloc = SlabAllocator(4 * MiB, 4096)
    (a,) = alloc.allocate(4096, 1) or []
    alloc.free([a])
    with pytest.raises(DoubleFreeError):
        alloc.free([a])
    (b,) = alloc.allocate(8192, 1) or []
    with pytest.raises(DoubleFreeError):
        alloc.free_offset(b.offset + 4096)  # inside an object, not its start
    with pytest.raises(DoubleFreeError):
        alloc.free_offset(3 * MiB + 4096)  # past every slab
    assert alloc.check() == []


def test_uniform_sizes_never_fragment() -> None:
    """Fill the arena with one size, free a random half, and the same count fits again, many rounds."""
    rng = random.Random(1)
    alloc = SlabAllocator(8 * MiB, 4096, slab_bytes=256 * KiB)
    live = alloc.allocate(12000, alloc.total // 12288)
    assert live is not None
    for _ in range(20):
        rng.shuffle(live)
        half = len(live) // 2
        alloc.free(live[:half])
        again = alloc.allocate(12000, half)
        assert again is not None, "freed slots of a uniform size must be reusable"
        live = live[half:] + again
    assert alloc.check() == []


def test_empty_slabs_are_returned_for_another_size_class() -> None:
    alloc = SlabAllocator(4 * MiB, 4096, slab_bytes=256 * KiB)
    small = alloc.allocate(4096, 1024)  # the whole arena in 4 KiB objects
    assert small is not None
    assert alloc.allocate(64 * KiB, 1) is None
    alloc.free(small)
    big = alloc.allocate(64 * KiB, 64)  # the whole arena again, in another class
    assert big is not None
    assert alloc.stats()["size_class_count"] == 2
    assert alloc.check() == []
    alloc.free(big)
    assert alloc.allocate(1 * MiB, 4) is not None  # and a third class: extents coalesced back
    assert alloc.check() == []


def test_a_partly_used_slab_is_kept() -> None:
    alloc = SlabAllocator(1 * MiB, 4096, slab_bytes=1 * MiB)
    objs = alloc.allocate(4096, 256)
    assert objs is not None
    alloc.free(objs[1:])
    # One live 4 KiB object pins the only slab: the 8 KiB class finds no room.
    assert alloc.allocate(8192, 1) is None
    alloc.free(objs[:1])
    assert alloc.allocate(8192, 128) is not None


def test_on_grow_follows_the_high_water_mark() -> None:
    seen: list[int] = []
    alloc = SlabAllocator(4 * MiB, 4096, slab_bytes=1 * MiB, on_grow=seen.append)
    a = alloc.allocate(4096, 256)
    b = alloc.allocate(4096, 1)
    assert seen == [1 * MiB, 2 * MiB]
    assert a is not None and b is not None
    alloc.free(a)
    assert alloc.allocate(4096, 256) is not None  # reuses carved memory: no growth
    assert seen == [1 * MiB, 2 * MiB]


class AllocatorMachine(RuleBasedStateMachine):
    """Random allocate / free / prefix-allocate over a few size classes keeps the allocator consistent."""

    SIZES = (4096, 5000, 12288, 65536)

    def __init__(self) -> None:
        super().__init__()
        self.alloc = SlabAllocator(2 * MiB, 4096, slab_bytes=128 * KiB)
        self.live: list[Allocation] = []

    @rule(size=st.sampled_from(SIZES), count=st.integers(1, 40))
    def allocate(self, size: int, count: int) -> None:
        used = self.alloc.used
        got = self.alloc.allocate(size, count)
        if got is None:
            assert self.alloc.used == used
        else:
            assert len(got) == count
            self.live.extend(got)

    @rule(size=st.sampled_from(SIZES), count=st.integers(1, 40))
    def allocate_prefix(self, size: int, count: int) -> None:
        got = self.alloc.allocate_prefix(size, count)
        assert len(got) <= count
        self.live.extend(got)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def free_some(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, len(self.live)))
        idx = data.draw(st.permutations(range(len(self.live))))[:n]
        victims = [self.live[i] for i in idx]
        keep = set(idx)
        self.live = [a for i, a in enumerate(self.live) if i not in keep]
        self.alloc.free(victims)

    @invariant()
    def consistent(self) -> None:
        spans = sorted((a.offset, a.offset + self.alloc.aligned_size(a.nbytes)) for a in self.live)
        assert all(e0 <= s1 for (_, e0), (s1, _) in pairwise(spans)), "live objects overlap"
        assert all(s % 4096 == 0 for s, _ in spans)
        assert self.alloc.used == sum(e - s for s, e in spans)
        assert self.alloc.check() == []

    def teardown(self) -> None:
        # With everything freed, the whole arena is usable by one class again.
        self.alloc.free(self.live)
        assert self.alloc.allocate(4096, self.alloc.total // 4096) is not None


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


@given(st.lists(st.integers(1, 300_000), min_size=1, max_size=30))
@settings(max_examples=60, deadline=None)
def test_aligned_size_covers_request(sizes: list[int]) -> None:
    alloc = SlabAllocator(64 * MiB, 4096)
    for s in sizes:
        a = alloc.aligned_size(s)
        assert a >= s and a % 4096 == 0 and a - s < 4096
