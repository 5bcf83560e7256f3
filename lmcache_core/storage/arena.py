"""The L1 arena (one lazily touched virtual-memory region) and its slab allocator.

:class:`Arena` reserves ``size_bytes`` of address space with ``mmap`` and
``MAP_NORESERVE``: no memory is committed up front, a page becomes resident the
first time it is written, so a server configured with 100 GB starts with a
small RSS. By default the mapping is anonymous and private; with ``shm_name`` it
is a sparse file under ``/dev/shm`` mapped ``MAP_SHARED``, so another process
(the engine-driven transfer path) can map the same bytes with
:meth:`Arena.attach`. When CUDA is available the arena is page-locked with
``cudaHostRegister``, but only as far as the allocator has carved it (in
``pin_chunk_bytes`` steps), because registering pins, and therefore touches,
every page of the range.

:class:`SlabAllocator` hands out aligned ``(offset, nbytes)`` pieces of the
arena. KV chunks of one model all have one size, so it uses size classes: each
aligned size owns slabs (contiguous extents holding ``k`` objects of that
size) and reuses their free slots, so a uniform workload never fragments. Slabs
are carved first-fit from a coalescing free-extent list (initially the whole
arena). A slab whose objects are all freed stays with its class (cheap reuse)
until another class finds no extent large enough; then every empty slab of
every class goes back to the extent list and the search is retried. A slab that
still holds one live object is never moved, so a workload that mixes many sizes
can strand memory in partly used slabs; ``slab_bytes`` bounds that waste per
class. By default a slab is at most 1/64 of the arena (and at most
:data:`DEFAULT_SLAB_BYTES`): with one 64 MiB slab size, a small L1 (the chaos
run's 30 MiB) was carved whole into the first size class's one slab, and every
other object size failed to allocate while L1 was two thirds empty (issue 18).
``SlabAllocator.failed_allocations`` is the pressure signal the eviction
controller reads (through ``L1Manager.allocation_failures``): after a failed
allocation it evicts even below the watermark.

Per-object bookkeeping lives with the caller (the L1 manager keeps offsets in
compact arrays); the allocator itself only keeps per-slab state, so its memory
does not grow with the number of live objects.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
import threading
from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable
from itertools import pairwise
from typing import NamedTuple

import torch

__all__ = [
    "Allocation",
    "Arena",
    "ArenaError",
    "DoubleFreeError",
    "SlabAllocator",
    "round_up",
]

log = logging.getLogger(__name__)

# Python's mmap module does not export MAP_NORESERVE; this is its Linux value.
MAP_NORESERVE: int = getattr(mmap, "MAP_NORESERVE", 0x4000)

DEFAULT_PIN_CHUNK_BYTES = 1 << 30
DEFAULT_SLAB_BYTES = 64 << 20
SLABS_PER_ARENA = 64  # default slab size: at most this fraction of the arena

_SHM_DIR = "/dev/shm"


class ArenaError(RuntimeError):
    """The arena could not be created, mapped or attached."""


class DoubleFreeError(ValueError):
    """An offset was freed that is not a live allocation (double free or foreign offset)."""


def round_up(value: int, align: int) -> int:
    """``value`` rounded up to a multiple of ``align`` (``align`` > 0)."""
    return (value + align - 1) // align * align


def _shm_path(shm_name: str) -> str:
    """The /dev/shm file of a POSIX shared-memory name (``"x"`` or ``"/x"``)."""
    name = shm_name.removeprefix("/")
    if not name or "/" in name or name in (".", ".."):
        raise ArenaError(f"invalid shared-memory name {shm_name!r}")
    return os.path.join(_SHM_DIR, name)


def _cuda_available() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken CUDA install must not stop a CPU server
        return False


class Arena:
    """One contiguous, lazily committed region of host memory, exposed as a uint8 tensor.

    ``view(offset, nbytes)`` returns a tensor that aliases the arena (no copy).
    Views stay valid until :meth:`close`; after it, a view that is still alive
    reads zeros (its pages were released) rather than crashing, and the address
    range itself is unmapped when the last view is dropped.
    """

    def __init__(
        self,
        size_bytes: int,
        *,
        shm_name: str | None = None,
        pin: bool | None = None,
        pin_chunk_bytes: int = DEFAULT_PIN_CHUNK_BYTES,
    ) -> None:
        """Reserve ``size_bytes`` of address space.

        ``shm_name``: back the arena with ``/dev/shm/<name>`` (created exclusively,
        unlinked on close) instead of anonymous memory. ``pin``: page-lock for
        CUDA; ``None`` means "when CUDA is available", ``True`` without CUDA is
        skipped with a log line.
        """
        if size_bytes <= 0:
            raise ArenaError(f"arena size must be positive, got {size_bytes}")
        if pin_chunk_bytes <= 0:
            raise ArenaError(f"pin_chunk_bytes must be positive, got {pin_chunk_bytes}")
        self.size: int = int(size_bytes)
        self.shm_name: str | None = shm_name
        self._owner = True
        self._closed = False
        self._shm_path: str | None = None
        if shm_name is None:
            mm = mmap.mmap(
                -1,
                self.size,
                flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        else:
            mm = self._create_shm(shm_name, self.size)
        self._init_mapping(mm)
        want_pin = _cuda_available() if pin is None else pin
        if want_pin and not _cuda_available():
            log.info("L1 arena: pinning requested but CUDA is not available; arena stays pageable")
            want_pin = False
        self._pin = want_pin
        self._pin_chunk = int(pin_chunk_bytes)
        self._pinned_end = 0
        self._pinned_ptrs: list[int] = []

    def _create_shm(self, shm_name: str, size: int) -> mmap.mmap:
        path = _shm_path(shm_name)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError as exc:
            raise ArenaError(f"shared memory {shm_name!r} already exists ({path})") from exc
        except OSError as exc:
            raise ArenaError(f"cannot create shared memory {path}: {exc}") from exc
        try:
            # A sparse file: ftruncate allocates nothing, pages appear as they are written.
            os.ftruncate(fd, size)
            self._warn_if_tmpfs_small(size)
            mm = mmap.mmap(
                fd,
                size,
                flags=mmap.MAP_SHARED | MAP_NORESERVE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)  # mmap keeps its own duplicate of the descriptor
        self._shm_path = path
        return mm

    @staticmethod
    def _warn_if_tmpfs_small(size: int) -> None:
        # Writing past a full tmpfs raises SIGBUS in whoever touches the page;
        # say so at start rather than crash later.
        try:
            st = os.statvfs(_SHM_DIR)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < size:
            log.warning(
                "L1 arena of %d bytes is larger than the free space of %s (%d bytes); "
                "filling it will fail (SIGBUS)",
                size,
                _SHM_DIR,
                free,
            )

    def _init_mapping(self, mm: mmap.mmap) -> None:
        self._mmap: mmap.mmap | None = mm
        # frombuffer aliases the mapping (no copy) and keeps `mm` alive while any view exists.
        self._tensor: torch.Tensor | None = torch.frombuffer(mm, dtype=torch.uint8)
        self.base_ptr: int = self._tensor.data_ptr()

    @classmethod
    def attach(cls, shm_name: str, *, pin: bool = False) -> Arena:
        """Map an existing shared-memory arena created by another :class:`Arena` (not owned: never unlinked)."""
        path = _shm_path(shm_name)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise ArenaError(f"cannot open shared memory {path}: {exc}") from exc
        try:
            size = os.fstat(fd).st_size
            if size <= 0:
                raise ArenaError(f"shared memory {path} is empty")
            mm = mmap.mmap(
                fd,
                size,
                flags=mmap.MAP_SHARED | MAP_NORESERVE,
                prot=mmap.PROT_READ | mmap.PROT_WRITE,
            )
        finally:
            os.close(fd)
        arena = cls.__new__(cls)
        arena.size = size
        arena.shm_name = shm_name
        arena._owner = False
        arena._closed = False
        arena._shm_path = path
        arena._init_mapping(mm)
        arena._pin = pin and _cuda_available()
        arena._pin_chunk = DEFAULT_PIN_CHUNK_BYTES
        arena._pinned_end = 0
        arena._pinned_ptrs = []
        if arena._pin:
            arena.ensure_pinned(size)
        return arena

    # -- access -------------------------------------------------------------------------

    @property
    def mapping(self) -> mmap.mmap | None:
        """The arena's ``mmap`` (None once closed), for ``madvise`` by the pre-faulter."""
        return self._mmap

    @property
    def tensor(self) -> torch.Tensor:
        """The whole arena as a flat uint8 tensor."""
        if self._tensor is None:
            raise ArenaError("arena is closed")
        return self._tensor

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    @property
    def pinned(self) -> bool:
        """Whether carved memory is page-locked for CUDA."""
        return self._pin

    @property
    def pinned_bytes(self) -> int:
        """How many bytes from the start of the arena are currently registered with CUDA."""
        return self._pinned_end if self._pin else 0

    def view(self, offset: int, nbytes: int) -> torch.Tensor:
        """A uint8 tensor aliasing ``[offset, offset + nbytes)`` of the arena."""
        t = self._tensor
        if t is None:
            raise ArenaError("arena is closed")
        if offset < 0 or nbytes < 0 or offset + nbytes > self.size:
            raise ArenaError(f"view [{offset}, {offset + nbytes}) outside arena of {self.size} bytes")
        return t[offset : offset + nbytes]

    def memory_desc(self) -> dict[str, object]:
        """``{ptr, size, shm_name, pinned}``: what RDMA / shared-memory peers need to map the arena."""
        return {"ptr": self.base_ptr, "size": self.size, "shm_name": self.shm_name, "pinned": self.pinned}

    # -- pinning ------------------------------------------------------------------------

    def ensure_pinned(self, end: int) -> None:
        """Page-lock the arena up to at least ``end`` (rounded up to the pin chunk); no-op without CUDA.

        Registration is done in chunks, never for the whole arena at once, so
        the untouched tail stays uncommitted. A failed registration is logged
        and turns pinning off (the server keeps working with pageable memory).
        """
        if not self._pin or end <= self._pinned_end or self._closed:
            return
        new_end = min(self.size, round_up(end, self._pin_chunk))
        start = self._pinned_end
        ptr = self.base_ptr + start
        try:
            rc = torch.cuda.cudart().cudaHostRegister(ptr, new_end - start, 0)
            ok = int(rc) == 0
        except Exception as exc:  # noqa: BLE001 - any CUDA failure means "stay pageable"
            log.warning("L1 arena: cudaHostRegister raised %r; continuing unpinned", exc)
            ok = False
        if not ok:
            log.warning("L1 arena: cudaHostRegister failed for [%d, %d); continuing unpinned", start, new_end)
            self._pin = False
            return
        self._pinned_ptrs.append(ptr)
        self._pinned_end = new_end

    def _unpin(self) -> None:
        if not self._pinned_ptrs:
            return
        cudart = torch.cuda.cudart()
        for ptr in self._pinned_ptrs:
            try:
                cudart.cudaHostUnregister(ptr)
            except Exception as exc:  # noqa: BLE001 - keep unregistering the rest
                log.warning("L1 arena: cudaHostUnregister failed: %r", exc)
        self._pinned_ptrs = []
        self._pinned_end = 0

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Release the arena: unpin, free its pages, unlink the shm file (owner only). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._unpin()
        self._tensor = None
        mm = self._mmap
        self._mmap = None
        if mm is not None:
            # Views hold a reference to `mm` through their storage. With none left
            # (our local + getrefcount's argument) we can unmap now; otherwise an
            # unmap would turn every surviving view into a segfault, so only the
            # pages are released and the range goes away with the last view.
            if sys.getrefcount(mm) <= 2:
                mm.close()
            elif self._owner:
                advice = mmap.MADV_REMOVE if self._shm_path is not None else mmap.MADV_DONTNEED
                try:
                    mm.madvise(advice)
                except OSError as exc:
                    log.warning("L1 arena: releasing pages failed: %r", exc)
        if self._owner and self._shm_path is not None:
            try:
                os.unlink(self._shm_path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Arena:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # The shm file outlives the process unless unlinked: make a forgotten close() not leak it.
        try:
            if not self._closed:
                self.close()
        except Exception:  # noqa: BLE001, S110 - never raise from a finalizer (may run at shutdown)
            pass


class Allocation(NamedTuple):
    """A piece of the arena: ``nbytes`` requested bytes at ``offset`` (the slot itself is the aligned size)."""

    offset: int
    nbytes: int


class _Slab:
    """``capacity`` objects of ``obj_size`` bytes starting at ``base``."""

    __slots__ = ("base", "capacity", "free", "live", "next_fresh", "obj_size", "used")

    def __init__(self, base: int, obj_size: int, capacity: int) -> None:
        self.base = base
        self.obj_size = obj_size
        self.capacity = capacity
        self.next_fresh = 0  # slots >= next_fresh were never handed out
        self.free = array("i")  # freed slots below next_fresh, reused LIFO (warm pages first)
        self.live = 0
        self.used = bytearray(capacity)  # 1 per live slot: catches double frees

    @property
    def room(self) -> int:
        return self.capacity - self.live


class _SizeClass:
    """All slabs of one aligned object size."""

    __slots__ = ("empty", "free_slots", "obj_size", "slab_count", "with_room")

    def __init__(self, obj_size: int) -> None:
        self.obj_size = obj_size
        self.with_room: dict[_Slab, None] = {}  # insertion-ordered set of slabs with a free slot
        self.empty: dict[_Slab, None] = {}  # slabs with no live object (reclaimable)
        self.free_slots = 0
        self.slab_count = 0


class SlabAllocator:
    """Size-class slab allocator over ``[0, size_bytes)``; thread-safe.

    Objects are aligned to ``align_bytes``; a request of ``nbytes`` occupies
    ``round_up(nbytes, align_bytes)``. ``on_grow(end)`` is called (under the
    allocator lock) whenever a slab is carved past the previous high-water
    mark, which is how the arena pins memory lazily.
    """

    def __init__(
        self,
        size_bytes: int,
        align_bytes: int = 4096,
        *,
        slab_bytes: int | None = None,
        on_grow: Callable[[int], None] | None = None,
    ) -> None:
        """An allocator for an arena of ``size_bytes`` whose offsets start at 0.

        ``slab_bytes`` None: ``min(DEFAULT_SLAB_BYTES, size_bytes / 64)`` (see the module docstring)."""
        if align_bytes <= 0 or align_bytes & (align_bytes - 1):
            raise ValueError(f"align_bytes must be a positive power of two, got {align_bytes}")
        if size_bytes < align_bytes:
            raise ValueError(f"arena of {size_bytes} bytes is smaller than one {align_bytes}-byte slot")
        self.total = size_bytes // align_bytes * align_bytes
        self.align = align_bytes
        if slab_bytes is None:
            slab_bytes = min(DEFAULT_SLAB_BYTES, self.total // SLABS_PER_ARENA // align_bytes * align_bytes)
        self.slab_bytes = max(slab_bytes, align_bytes)
        self._on_grow = on_grow
        self._lock = threading.Lock()
        self._classes: dict[int, _SizeClass] = {}
        # Free extents, sorted by start; coalesced on insert.
        self._ext_starts: list[int] = [0]
        self._ext_len: dict[int, int] = {0: self.total}
        # Carved slabs sorted by base, to find the slab of a freed offset by bisection.
        self._slab_bases: list[int] = []
        self._slab_at: dict[int, _Slab] = {}
        self._used = 0
        self._carved = 0
        self._high_water = 0
        self.failed_allocations = 0

    # -- public ------------------------------------------------------------------------

    def aligned_size(self, nbytes: int) -> int:
        """The bytes one object of ``nbytes`` occupies."""
        return round_up(max(nbytes, 1), self.align)

    def allocate(self, nbytes: int, count: int = 1) -> list[Allocation] | None:
        """``count`` objects of ``nbytes`` each, or ``None`` with nothing reserved."""
        offsets = self.allocate_offsets(nbytes, count)
        return None if offsets is None else [Allocation(o, nbytes) for o in offsets]

    def allocate_prefix(self, nbytes: int, count: int) -> list[Allocation]:
        """As many of ``count`` objects as fit (possibly none); every returned one is fully reserved."""
        offsets = self.allocate_offsets(nbytes, count, partial=True) or []
        return [Allocation(o, nbytes) for o in offsets]

    def allocate_offsets(self, nbytes: int, count: int, *, partial: bool = False) -> list[int] | None:
        """Offsets of ``count`` new objects of ``nbytes``: the allocation primitive.

        All or nothing (``None``) by default; with ``partial`` as many as fit
        (maybe an empty list). Plain ints because building a tuple per object
        costs more than the allocation itself on the STORE path.
        """
        if count <= 0:
            return []
        with self._lock:
            cls = self._class(self.aligned_size(nbytes))
            if cls.free_slots < count:
                got = self._grow(cls, count - cls.free_slots, all_or_nothing=not partial)
                if not got:
                    self.failed_allocations += 1
                    if not partial:
                        return None
            n = min(count, cls.free_slots)
            return self._take(cls, n) if n else []

    def free(self, allocations: Iterable[Allocation]) -> None:
        """Return allocations; raises :class:`DoubleFreeError` for one that is not live."""
        with self._lock:
            for a in allocations:
                self._free_one(a.offset)

    def free_offset(self, offset: int) -> None:
        """Return the live object starting at ``offset``."""
        with self._lock:
            self._free_one(offset)

    def usage(self) -> tuple[int, int]:
        """``(used, total)`` bytes; used counts live objects at their aligned size."""
        return self._used, self.total

    @property
    def used(self) -> int:
        """Bytes held by live objects (aligned sizes)."""
        return self._used

    @property
    def high_water(self) -> int:
        """The end of the highest slab ever carved: bytes past it have never been handed out."""
        return self._high_water

    def stats(self) -> dict[str, int]:
        """Slab-level counters for status pages."""
        with self._lock:
            return {
                "used_bytes": self._used,
                "carved_bytes": self._carved,
                "high_water_bytes": self._high_water,
                "free_extent_count": len(self._ext_starts),
                "slab_count": len(self._slab_bases),
                "size_class_count": len(self._classes),
                "failed_allocations": self.failed_allocations,
            }

    def check(self) -> list[str]:
        """Verify the allocator's invariants; returns a list of problems (empty when consistent).

        Slabs and free extents must tile disjoint parts of the arena, per-slab
        live counts must match their slot maps, and ``used`` must equal the sum
        of live slots. O(slots); for tests and diagnostics.
        """
        problems: list[str] = []
        with self._lock:
            spans = [(b, b + s.capacity * s.obj_size, "slab") for b, s in self._slab_at.items()]
            spans += [(s, s + self._ext_len[s], "extent") for s in self._ext_starts]
            spans.sort()
            for (s0, e0, k0), (s1, _e1, k1) in pairwise(spans):
                if s1 < e0:
                    problems.append(f"{k0} [{s0},{e0}) overlaps {k1} at {s1}")
            if spans and spans[-1][1] > self.total:
                problems.append("span past end of arena")
            used = 0
            for b, s in self._slab_at.items():
                live = sum(s.used)
                if live != s.live:
                    problems.append(f"slab {b}: live={s.live} but {live} slots marked")
                used += live * s.obj_size
            if used != self._used:
                problems.append(f"used={self._used} but live slots hold {used}")
            for size, cls in self._classes.items():
                room = sum(s.room for s in cls.with_room)
                if room != cls.free_slots:
                    problems.append(f"class {size}: free_slots={cls.free_slots} but slabs have {room}")
        return problems

    # -- internals (lock held) ---------------------------------------------------------

    def _class(self, size: int) -> _SizeClass:
        cls = self._classes.get(size)
        if cls is None:
            cls = self._classes[size] = _SizeClass(size)
        return cls

    def _take(self, cls: _SizeClass, count: int) -> list[int]:
        out: list[int] = []
        size = cls.obj_size
        full: list[_Slab] = []
        for slab in cls.with_room:
            if slab.live == 0:
                cls.empty.pop(slab, None)
            used = slab.used
            base = slab.base
            free = slab.free
            while free and len(out) < count:
                idx = free.pop()
                used[idx] = 1
                slab.live += 1
                out.append(base + idx * size)
            # Never-used slots in one step (the common case while the arena fills).
            k = min(slab.capacity - slab.next_fresh, count - len(out))
            if k > 0:
                first = slab.next_fresh
                used[first : first + k] = b"\x01" * k
                slab.next_fresh = first + k
                slab.live += k
                out.extend(range(base + first * size, base + (first + k) * size, size))
            if slab.live == slab.capacity:
                full.append(slab)
            if len(out) == count:
                break
        for slab in full:
            del cls.with_room[slab]
        cls.free_slots -= count
        self._used += count * size
        return out

    def _free_one(self, offset: int) -> None:
        i = bisect_right(self._slab_bases, offset) - 1
        slab = self._slab_at.get(self._slab_bases[i]) if i >= 0 else None
        if slab is None:
            raise DoubleFreeError(f"offset {offset} is not inside any slab")
        rel = offset - slab.base
        idx, rem = divmod(rel, slab.obj_size)
        if rem or idx >= slab.capacity or not slab.used[idx]:
            raise DoubleFreeError(f"offset {offset} is not a live allocation")
        slab.used[idx] = 0
        slab.free.append(idx)
        cls = self._classes[slab.obj_size]
        if slab.live == slab.capacity:
            cls.with_room[slab] = None
        slab.live -= 1
        cls.free_slots += 1
        self._used -= slab.obj_size
        if slab.live == 0:
            cls.empty[slab] = None

    def _grow(self, cls: _SizeClass, need: int, *, all_or_nothing: bool) -> bool:
        """Carve slabs for ``need`` more slots of ``cls``; True if all of them fit.

        With ``all_or_nothing`` a shortfall returns the freshly carved slabs, so
        the arena is exactly as before (apart from reclaimed empty slabs of
        other classes, which held no objects).
        """
        carved: list[_Slab] = []
        got = self._carve_until(cls, need, carved)
        if got < need and self._reclaim_empty_slabs(exclude=cls):
            got += self._carve_until(cls, need - got, carved)
        if got >= need:
            return True
        if all_or_nothing:
            for slab in carved:
                self._drop_slab(cls, slab)
        return False

    def _carve_until(self, cls: _SizeClass, need: int, carved: list[_Slab]) -> int:
        size = cls.obj_size
        per_slab = max(1, self.slab_bytes // size)
        got = 0
        while got < need:
            start = self._first_fit(size)
            if start is None:
                break
            length = self._ext_len[start]
            n = min(per_slab, length // size)
            slab = self._carve(cls, start, n)
            carved.append(slab)
            got += n
        return got

    def _first_fit(self, size: int) -> int | None:
        ext_len = self._ext_len
        for start in self._ext_starts:
            if ext_len[start] >= size:
                return start
        return None

    def _carve(self, cls: _SizeClass, start: int, n: int) -> _Slab:
        size = cls.obj_size
        nbytes = n * size
        length = self._ext_len.pop(start)
        i = bisect_left(self._ext_starts, start)
        if length > nbytes:
            # Carve from the front: the remainder keeps the extent's place in the sorted list.
            self._ext_starts[i] = start + nbytes
            self._ext_len[start + nbytes] = length - nbytes
        else:
            del self._ext_starts[i]
        slab = _Slab(start, size, n)
        insort(self._slab_bases, start)
        self._slab_at[start] = slab
        cls.with_room[slab] = None
        cls.empty[slab] = None
        cls.free_slots += n
        cls.slab_count += 1
        self._carved += nbytes
        end = start + nbytes
        if end > self._high_water:
            self._high_water = end
            if self._on_grow is not None:
                self._on_grow(end)
        return slab

    def _drop_slab(self, cls: _SizeClass, slab: _Slab) -> None:
        """Give an empty slab's extent back to the free list."""
        del cls.with_room[slab]
        cls.empty.pop(slab, None)
        cls.free_slots -= slab.capacity
        cls.slab_count -= 1
        del self._slab_at[slab.base]
        del self._slab_bases[bisect_left(self._slab_bases, slab.base)]
        nbytes = slab.capacity * slab.obj_size
        self._carved -= nbytes
        self._add_extent(slab.base, nbytes)

    def _reclaim_empty_slabs(self, exclude: _SizeClass) -> bool:
        reclaimed = False
        for cls in self._classes.values():
            if cls is exclude or not cls.empty:
                continue
            for slab in list(cls.empty):
                self._drop_slab(cls, slab)
                reclaimed = True
        return reclaimed

    def _add_extent(self, start: int, length: int) -> None:
        starts = self._ext_starts
        ext_len = self._ext_len
        i = bisect_left(starts, start)
        # Merge with the following extent if adjacent.
        if i < len(starts) and starts[i] == start + length:
            length += ext_len.pop(starts[i])
            del starts[i]
        # Merge with the preceding extent if adjacent.
        if i > 0 and starts[i - 1] + ext_len[starts[i - 1]] == start:
            ext_len[starts[i - 1]] += length
            return
        starts.insert(i, start)
        ext_len[start] = length
